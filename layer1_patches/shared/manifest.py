"""The manifest a SLURM array reads: slide i (and its annotation) for array task i.

It is JSON, read by Python in the task, so slide names with spaces, quotes or `$(...)` never pass
through a shell.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from layer1_patches.shared.atomic import write_json_atomic
from layer1_patches.shared.errors import CamnetError

MANIFEST_VERSION = 1


def largest_first(pairs: list[tuple[Path, Path | None]]) -> list[tuple[Path, Path | None]]:
    """Array order: the biggest slide files first, ties by path.

    SLURM starts an array's tasks in index order, so a large slide listed last would run on alone while the
    other slots idle (longest-processing-time-first scheduling). File size stands in for the work; for
    formats that keep pixels beside a small index file (MIRAX) it only affects the order.
    """
    return sorted(pairs, key=lambda pair: (-pair[0].stat().st_size, str(pair[0])))


@dataclass(frozen=True)
class ManifestEntry:
    slide: str
    annotation: str | None = None


@dataclass(frozen=True)
class Manifest:
    config: str  # absolute path of the Layer 1 YAML
    out: str  # absolute output folder
    entries: tuple[ManifestEntry, ...]
    overrides: tuple[str, ...] = ()
    shards: int = 1  # dense subtasks per slide
    unpaired: tuple[str, ...] = field(default_factory=tuple)  # slides without annotation (normal only)

    @classmethod
    def for_slides(cls, config: str, out: str, pairs: list[tuple[Path, Path | None]], overrides: tuple[str, ...],
                   shards: int = 1) -> Manifest:
        """The manifest of an array over `pairs`, in array order (`largest_first`), paths made absolute."""
        ordered = largest_first(pairs)
        entries = tuple(ManifestEntry(str(s.resolve()), str(a.resolve()) if a else None) for s, a in ordered)
        return cls(config, out, entries, overrides, shards, tuple(str(s) for s, a in ordered if a is None))

    def entry(self, index: int, path: Path) -> ManifestEntry:
        if not 0 <= index < len(self.entries):
            raise CamnetError(f"manifest {path}: task index {index} is past the end "
                              f"({len(self.entries)} slides, indices 0-{len(self.entries) - 1})")
        return self.entries[index]

    def save(self, path: Path) -> Path:
        data = {"manifest_version": MANIFEST_VERSION, **asdict(self)}
        return write_json_atomic(path, data)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        path = Path(path)
        if not path.is_file():
            raise CamnetError(f"manifest {path}: no such file")
        try:
            data = json.loads(path.read_text())
            if data.pop("manifest_version", None) != MANIFEST_VERSION:
                raise CamnetError(f"manifest {path}: not a CamNet manifest (version {MANIFEST_VERSION})")
            entries = tuple(ManifestEntry(**e) for e in data.pop("entries"))
            manifest = cls(entries=entries, overrides=tuple(data.pop("overrides", ())),
                           unpaired=tuple(data.pop("unpaired", ())), **data)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise CamnetError(f"manifest {path}: malformed ({err})") from None
        if not manifest.entries:
            raise CamnetError(f"manifest {path}: lists no slides")
        return manifest
