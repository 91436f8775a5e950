"""The dataset index: one JSON file listing finished patch stores, their counts and their split.

Layer 2 reads patches only through this index. Splits are by patient or by centre, so no
patient's slides are in two splits (slides of one patient share tissue, stain and scanner).

Every `*.h5` store found is checked before it is listed: opened by `PatchStore` (checksums of coords and labels,
no external links), and its lengths, shapes and types; `verify` also reads every patch chunk, which for a cohort
of terabytes is a long pass, so it is opt-in. A bad store fails the index, or with `skip_bad` is left out and
recorded under `skipped`: never silently dropped.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from layer1_patches.shared.atomic import write_json_atomic
from layer1_patches.shared.errors import CamnetError
from layer1_patches.shared.typedconfig import load_contract, required
from layer1_patches.store import PatchStore

log = logging.getLogger(__name__)
INDEX_VERSION = 1
MPP_TOLERANCE = 0.1  # relative, as resolution.mpp_tolerance
DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


@dataclass(frozen=True)
class IndexEntry:
    """One finished patch store as Layer 2 sees it (`entries[i]` of `index.json`)."""

    path: str = required("the store; relative to the index file's folder when below it")
    slide_name: str = required("slide file stem")
    patient: str = required("patient id from the slide name (metadata.name_regex); '' when it has none")
    node: str = required("lymph node id from the slide name; '' when it has none")
    centre: str = required("centre id from the slide name; '' when it has none")
    split: str = required("train, val, test (or the split names configured)")
    n_patches: int = required("patches in the store", min=0)
    n_tumour: int = required("patches labelled 1 (tumour)", min=0)
    n_normal: int = required("patches labelled 0 (normal)", min=0)
    patch_size: int = required("patch side in pixels at the working resolution", min=1)
    level: int = required("pyramid level the patches were read from", min=0)
    working_mpp: float = required("micrometres per pixel of the patches (0: slide without mpp)", min=0)
    config_hash: str = required("hash of the resolved Layer 1 config that wrote the store")


@dataclass(frozen=True)
class SkippedStore:
    """A bad store `index --skip-bad` left out (`skipped[i]` of `index.json`)."""

    path: str
    error: str  # the error line it raised


@dataclass(frozen=True)
class IndexChecks:
    """Beyond the structural check of every store: `verify` reads every patch chunk (checking its checksum);
    `skip_bad` records a bad store in `skipped` and goes on, instead of failing."""

    verify: bool = False
    skip_bad: bool = False


@dataclass(frozen=True)
class StoreScan:
    entries: list[IndexEntry]
    skipped: list[SkippedStore]


@dataclass(frozen=True)
class DatasetIndex:
    root: Path  # folder of the index file; relative entry paths resolve against it
    split_by: str
    entries: tuple[IndexEntry, ...]
    skipped: tuple[SkippedStore, ...] = ()

    def resolve(self, entry: IndexEntry) -> Path:
        path = Path(entry.path)
        return path if path.is_absolute() else self.root / path

    def split(self, name: str) -> list[IndexEntry]:
        return [e for e in self.entries if e.split == name]

    def splits(self) -> dict[str, dict[str, int]]:
        """Per split: slides, patients, tumour and normal patch counts."""
        out: dict[str, dict[str, int]] = {}
        for name in sorted({e.split for e in self.entries}):
            members = self.split(name)
            out[name] = {"slides": len(members), "patients": len({e.patient or e.slide_name for e in members}),
                         "tumour": sum(e.n_tumour for e in members), "normal": sum(e.n_normal for e in members)}
        return out

    def save(self, path: Path) -> Path:
        data = {"index_version": INDEX_VERSION, "split_by": self.split_by, "summary": self.splits(),
                "entries": [asdict(e) for e in self.entries], "skipped": [asdict(s) for s in self.skipped]}
        return write_json_atomic(path, data)

    @classmethod
    def load(cls, path: Path) -> DatasetIndex:
        path = Path(path)
        if not path.is_file():
            raise CamnetError(f"dataset index {path}: no such file")
        try:
            data = json.loads(path.read_text())
            if data.get("index_version") != INDEX_VERSION:
                raise CamnetError(f"dataset index {path}: version {data.get('index_version')!r}, "
                                  f"expected {INDEX_VERSION}")
            entries = tuple(load_contract(IndexEntry, e, f"dataset index {path}: entries[{i}]")
                            for i, e in enumerate(data["entries"]))
            # indexes written before `skipped` existed have none
            skipped = tuple(SkippedStore(str(s["path"]), str(s["error"])) for s in data.get("skipped", []))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise CamnetError(f"dataset index {path}: malformed ({err})") from None
        if not entries:
            raise CamnetError(f"dataset index {path}: lists no patch stores")
        return cls(path.parent.resolve(), str(data.get("split_by", "")), entries, skipped)


def check_structure(store: PatchStore) -> None:
    """Lengths, shapes and types as the writer makes them: anything else is damage or another program's file.

    Metadata only (opening the store has read the per-patch arrays but patches), so every index can afford it.
    """
    n, size, jpeg = store.attrs.get("n_patches"), store.patch_size, store.codec == "jpeg"
    if not isinstance(n, int):
        raise CamnetError(f"patch store {store.path}: no 'n_patches' attribute; re-extract this slide")
    wanted = {"patches": ((n,) if jpeg else (n, size, size, 3), "O" if jpeg else "u"), "coords": ((n, 2), "iu"),
              "labels": ((n,), "iu"), "tumour_fraction": ((n,), "f"), "tissue_fraction": ((n,), "f")}
    kind_names = {"O": "variable-length bytes", "u": "uint8", "iu": "integer", "f": "float"}
    for name, (shape, dtype) in store.layout.items():
        want, kinds = wanted[name]
        if shape != want:
            problem = f"'{name}' has shape {shape}, expected {want} (n_patches {n})"
        elif dtype.kind not in kinds or (kinds == "u" and dtype != np.uint8):
            problem = f"'{name}' has type {dtype}, expected {kind_names[kinds]}"
        else:
            continue
        raise CamnetError(f"patch store {store.path}: {problem}; re-extract this slide")


def read_entry(path: Path, root: Path, verify: bool = False) -> IndexEntry:
    with PatchStore(path) as store:
        check_structure(store)
        if verify:
            store.verify()
        attrs = store.attrs
        labels = store.labels
    resolved = path.resolve()
    try:
        shown = str(resolved.relative_to(root.resolve()))
    except ValueError:
        shown = str(resolved)
    n_tumour = int((labels == 1).sum())
    return IndexEntry(shown, str(attrs["slide_name"]), str(attrs.get("patient", "")), str(attrs.get("node", "")),
                      str(attrs.get("centre", "")), "", len(labels), n_tumour, len(labels) - n_tumour,
                      int(attrs["patch_size"]), int(attrs["level"]), float(attrs["working_mpp"]),
                      str(attrs["config_hash"]))


def patient_splits(patients: list[str], fractions: dict[str, float], seed: int) -> dict[str, str]:
    """Patient -> split: shuffle the sorted patients with `seed`, then cut the list by the split fractions (largest
    remainder). Pure, so `pipeline check` plans the split the index will make, before any store exists."""
    if not fractions or any(f < 0 for f in fractions.values()) or sum(fractions.values()) <= 0:
        raise CamnetError(f"split fractions {fractions}: need non-negative values with a positive sum")
    ordered = sorted(set(patients))
    order = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    total = sum(fractions.values())
    exact = {k: v / total * len(order) for k, v in fractions.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)[:len(order) - sum(counts.values())]:
        counts[k] += 1
    split_of: dict[str, str] = {}
    start = 0
    for name, n in counts.items():
        for patient in order[start:start + n]:
            split_of[patient] = name
        start += n
    return split_of


def assign_by_patient(entries: list[IndexEntry], fractions: dict[str, float], seed: int) -> list[IndexEntry]:
    """Shuffle patients with `seed`, then cut the list by the split fractions (largest remainder)."""
    split_of = patient_splits([e.patient or e.slide_name for e in entries], fractions, seed)
    return [_with_split(e, split_of[e.patient or e.slide_name]) for e in entries]


def assign_by_centre(entries: list[IndexEntry], centres: dict[str, list[str]]) -> list[IndexEntry]:
    split_of: dict[str, str] = {}
    for name, members in centres.items():
        for centre in members:
            if centre in split_of:
                raise CamnetError(f"centre {centre} is given to two splits: {split_of[centre]} and {name}")
            split_of[centre] = name
    out = []
    for e in entries:
        if e.centre not in split_of:
            raise CamnetError(f"patch store {e.path}: centre {e.centre!r} is in no split "
                              f"(splits: {centres})")
        out.append(_with_split(e, split_of[e.centre]))
    return out


Classes = dict[str, tuple[bool, bool]]  # patient (or centre) -> (has tumour patches, has normal patches)
SEEDS_TRIED = range(100)


def split_gaps(classes: Classes, split_of: dict[str, str], names: list[str]) -> dict[str, str]:
    """Split -> what it lacks ('patients', 'tumour' or 'normal'), for the splits in `names`; Layer 2 trains and
    scores only with both classes in a split."""
    gaps: dict[str, str] = {}
    for name in names:
        members = [u for u, s in split_of.items() if s == name]
        if not members:
            gaps[name] = "patients"
        elif not any(classes[u][0] for u in members):
            gaps[name] = "tumour"
        elif not any(classes[u][1] for u in members):
            gaps[name] = "normal"
    return gaps


def working_seed(classes: Classes, fractions: dict[str, float]) -> int | None:
    """The first shuffle seed in SEEDS_TRIED whose patient split gives every split both classes, if any."""
    names = [k for k, v in fractions.items() if v > 0]
    for seed in SEEDS_TRIED:
        if not split_gaps(classes, patient_splits(list(classes), fractions, seed), names):
            return seed
    return None


def _listed(units: list[str], limit: int = 6) -> str:
    return ", ".join(units[:limit]) + (f" and {len(units) - limit} more" if len(units) > limit else "")


@dataclass(frozen=True)
class SplitPlan:
    """A split of patients (or centres) and what each holds; `seed_key` names the seed for the advice
    (`--seed` on the index command line, `index.seed` in an experiment)."""

    classes: Classes
    split_of: dict[str, str]
    fractions: dict[str, float] | None  # None: split by centre (no seed to suggest)
    seed_key: str = "--seed"


def split_advice(plan: SplitPlan) -> list[str]:
    """One message per split without both classes, saying which patients it holds and how to fix it: fewer
    splits, other patients in it, or a seed that works."""
    names = [k for k, v in plan.fractions.items() if v > 0] if plan.fractions is not None else \
        sorted(set(plan.split_of.values()))
    gaps = split_gaps(plan.classes, plan.split_of, names)
    if not gaps:
        return []
    unit = "patients" if plan.fractions is not None else "centres"
    tumour = sorted(u for u, (t, _) in plan.classes.items() if t)
    fixes = [f"fewer splits ({len(plan.classes)} {unit}, {len(tumour)} with tumour, for {len(names)} splits)"]
    if plan.fractions is not None:
        seed = working_seed(plan.classes, plan.fractions)
        fixes.append(f"{plan.seed_key} {seed} (the first of 0-{SEEDS_TRIED[-1]} that gives every split both "
                     "classes)" if seed is not None else f"more {unit} (no {plan.seed_key} in 0-{SEEDS_TRIED[-1]} "
                     "gives every split both classes)")
    where = _listed([f"{u} in {plan.split_of[u]}" for u in tumour]) or "none"
    out = []
    for name, lack in gaps.items():
        members = sorted(u for u, s in plan.split_of.items() if s == name)
        held = f"no {unit}" if not members else f"only {unit} {_listed(members)}, without {lack} patches"
        move = [] if lack == "patients" else [f"{unit} with {lack} into it ({unit} with tumour: {where})"]
        out.append(f"split '{name}' has {held}; fix: {'; or '.join([*fixes, *move])}")
    return out


def index_plan(entries: list[IndexEntry], split_by: str, fractions: dict[str, float] | None) -> SplitPlan:
    """The split of indexed stores as a plan: a patient's classes are those of its stores' patches."""
    classes: dict[str, tuple[bool, bool]] = {}
    split_of: dict[str, str] = {}
    for e in entries:
        unit = (e.patient or e.slide_name) if split_by == "patient" else e.centre
        t, n = classes.get(unit, (False, False))
        classes[unit] = (t or e.n_tumour > 0, n or e.n_normal > 0)
        split_of[unit] = e.split
    return SplitPlan(classes, split_of, fractions if split_by == "patient" else None)


def _with_split(entry: IndexEntry, split: str) -> IndexEntry:
    return IndexEntry(**{**asdict(entry), "split": split})


def find_stores(inputs: Iterable[Path]) -> list[Path]:
    """The `*.h5` files in the input folders, and the files named. Shard files are not slides, and a dot-file in a
    folder is a writer's partial output (`.<name>.<writer>.partial`), never a store, whatever its suffix."""
    found: list[Path] = []
    for item in map(Path, inputs):
        paths = [p for p in sorted(item.glob("*.h5")) if not p.name.startswith(".")] if item.is_dir() else [item]
        found += [p for p in paths if ".shard-" not in p.name]
    return found


def scan_stores(inputs: list[Path], root: Path, checks: IndexChecks = IndexChecks()) -> StoreScan:
    """An entry per store under `inputs` (paths relative to `root` when below it); a bad store fails the scan,
    or with `checks.skip_bad` is logged and recorded."""
    scan = StoreScan([], [])
    for path in find_stores(inputs):
        try:
            scan.entries.append(read_entry(path, root, checks.verify))
        except CamnetError as err:
            if not checks.skip_bad:
                raise
            log.warning("skipped (--skip-bad): %s", err)
            scan.skipped.append(SkippedStore(str(path), str(err)))
    if not scan.entries:
        bad = f"; {len(scan.skipped)} skipped as bad" if scan.skipped else ""
        raise CamnetError(f"no finished patch stores (*.h5) in {', '.join(map(str, inputs))}{bad}")
    return scan


def check_compatible(entries: list[IndexEntry]) -> None:
    """One model input: equal patch sizes, and working mpp within MPP_TOLERANCE of each other.

    Scanners report 0.499 or 0.5021 for the same 20x objective; that is one resolution, but 0.25
    against 0.5 is not.
    """
    sizes = defaultdict(list)
    for e in entries:
        sizes[e.patch_size].append(e.slide_name)
    if len(sizes) > 1:
        raise CamnetError(f"patch stores differ in patch size: {dict(sizes)}; index them separately")
    lo = min(entries, key=lambda e: e.working_mpp)
    hi = max(entries, key=lambda e: e.working_mpp)
    if hi.working_mpp > lo.working_mpp * (1 + MPP_TOLERANCE):
        raise CamnetError(f"patch stores differ in resolution: {lo.slide_name} at {lo.working_mpp:g} um/px, "
                          f"{hi.slide_name} at {hi.working_mpp:g} um/px; index them separately")


def build_index(inputs: list[Path], out: Path, split_by: str, fractions: dict[str, float] | None = None,
                centres: dict[str, list[str]] | None = None, seed: int = 0) -> DatasetIndex:
    """The index of the stores under `inputs`, each checked structurally; a bad store is an error."""
    return make_index(scan_stores(inputs, out.parent), out, split_by, fractions, centres, seed)


def assign_splits(entries: list[IndexEntry], split_by: str, fractions: dict[str, float] | None = None,
                  centres: dict[str, list[str]] | None = None, seed: int = 0) -> list[IndexEntry]:
    """The entries with their split, by patient (shuffled with `seed`, cut by `fractions`) or by centre."""
    if split_by == "patient":
        return assign_by_patient(entries, fractions or DEFAULT_FRACTIONS, seed)
    if split_by == "centre":
        if not centres:
            raise CamnetError("split by centre needs --centres, e.g. train=0,1,2 val=3 test=4")
        return assign_by_centre(entries, centres)
    raise CamnetError(f"--split-by {split_by!r}: expected 'patient' or 'centre'")


def make_index(scan: StoreScan, out: Path, split_by: str, fractions: dict[str, float] | None = None,
               centres: dict[str, list[str]] | None = None, seed: int = 0) -> DatasetIndex:
    """Split the scanned stores and write the index to `out` (its folder is the index's root)."""
    check_compatible(scan.entries)
    entries = assign_splits(scan.entries, split_by, fractions, centres, seed)
    for problem in split_advice(index_plan(entries, split_by, fractions or DEFAULT_FRACTIONS)):
        log.warning("index: %s", problem)
    index = DatasetIndex(out.parent.resolve(), split_by, tuple(entries), tuple(scan.skipped))
    index.save(out)
    return index
