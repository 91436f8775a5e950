"""Cohort discovery: which files are slides, and which annotation or tissue-mask file belongs to each.

Every command and the pipeline find their slides here, so a folder, a glob and a list of paths mean the same
cohort everywhere. Files pair by stem: `<dir>/<slide stem><suffix>`.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

from layer1_patches.shared.errors import CamnetError

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm")
ANNOTATION_SUFFIXES = (".xml", ".geojson", ".json")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".jpg")


def discover_slides(patterns: Iterable[str]) -> list[Path]:
    """Slides from folders (by known suffix), globs or plain paths, sorted and without repeats."""
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found += [p for p in sorted(path.iterdir()) if p.suffix.lower() in SLIDE_SUFFIXES]
        elif any(ch in pattern for ch in "*?["):
            found += [Path(p) for p in sorted(glob.glob(pattern))]
        else:
            found.append(path)  # missing files fail per slide, with the file named
    return list(dict.fromkeys(found))


def require_slides(patterns: list[str], context: str = "") -> list[Path]:
    """`discover_slides` for a cohort fixed up front (a SLURM array): at least one slide, every one a file."""
    slides = discover_slides(patterns)
    if not slides:
        raise CamnetError(f"{context}no slides found in {' '.join(patterns)}")
    missing = [str(s) for s in slides if not s.is_file()]
    if missing:
        raise CamnetError(f"{context}slide {missing[0]}: no such file")
    return slides


def _by_stem(stem: str, directory: Path, suffixes: tuple[str, ...]) -> Path | None:
    for suffix in suffixes:
        candidate = directory / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def find_annotation(slide: Path, directory: Path) -> Path | None:
    """The annotation paired with a slide by file stem, if any."""
    return _by_stem(slide.stem, directory, ANNOTATION_SUFFIXES)


def find_mask(stem: str, directory: Path) -> Path | None:
    """The tissue-mask image made elsewhere (e.g. HistoQC) for the slide with this stem, if any."""
    return _by_stem(stem, directory, MASK_SUFFIXES)


def pair_annotations(slides: list[Path], directory: Path | None) -> list[tuple[Path, Path | None]]:
    if directory is not None and not directory.is_dir():
        raise CamnetError(f"annotation folder {directory}: no such folder")
    return [(s, find_annotation(s, directory) if directory else None) for s in slides]
