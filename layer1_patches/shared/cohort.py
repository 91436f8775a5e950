"""Cohort discovery: which files are slides, and which annotation or tissue-mask file belongs to each.

Every command and the pipeline find their slides here, so a folder, a glob and a list of paths mean the same
cohort everywhere. Files pair by stem: `<dir>/<slide stem><suffix>`.

A DICOM WSI is a folder of `.dcm` files (one per pyramid level, plus label and overview images, named by UID), and
OpenSlide opens the whole series from any one of them. So a folder is one DICOM slide, named after the folder:
listing `cohort/` takes each subfolder holding `.dcm` files as one slide (and `.dcm` files lying in `cohort/` itself
as the slide `cohort`), never each file as a slide of its own.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterable
from pathlib import Path

from layer1_patches.shared.errors import CamnetError

log = logging.getLogger(__name__)

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm")
ANNOTATION_SUFFIXES = (".xml", ".geojson", ".json")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".jpg")
DICOM = ".dcm"


def output_stem(slide: Path) -> str:
    """The slide's file stem, the one name every layer's outputs derive from, once it is safe as a file name.

    `OUT/<stem>` must name a new entry inside OUT: stem `.` (slide `..tif`) is OUT itself and `..` its parent,
    which a writer replacing its output folder would delete; a leading dot would hide the output and collide with
    the writers' own `.<name>.<host>-<pid>.partial` and `.<name>.lock` files.
    """
    stem = Path(slide).stem if Path(slide).suffix.lower() != DICOM else Path(slide).absolute().parent.name
    if not stem or stem.startswith(".") or any(ch in stem for ch in "/\\\0"):
        raise CamnetError(f"slide {slide}: the name {stem!r} cannot name an output (empty, starts with '.', or "
                          "contains a path separator); rename the file")
    return stem


def slide_label(slide: Path) -> str:
    """The slide's name for messages: `output_stem`, or the file name when that name cannot name an output."""
    try:
        return output_stem(slide)
    except CamnetError:
        return Path(slide).name


def _dicom_slides(folder: Path) -> list[Path]:
    """One `.dcm` file per DICOM slide under `folder`: its own (if any), then each subfolder's."""
    out = []
    for where in (folder, *sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))):
        files = sorted(p for p in where.iterdir() if p.suffix.lower() == DICOM and not p.name.startswith("."))
        if files:
            out.append(files[0])
    return out


def discover_slides(patterns: Iterable[str]) -> list[Path]:
    """Slides from folders (by known suffix), globs or plain paths, sorted and without repeats.

    Hidden files in a folder are left out, as `ls` and shell globs do (`._slide.svs` from macOS copies, `..tif`);
    a path named explicitly must have a usable stem, and two slides may not share a stem (they would share one
    output).
    """
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            listed = [p for p in sorted(path.iterdir()) if p.suffix.lower() in SLIDE_SUFFIXES and
                      p.suffix.lower() != DICOM]
            hidden = [p.name for p in listed if p.name.startswith(".")]
            if hidden:
                log.warning("%s: hidden files left out: %s", path, ", ".join(hidden))
            found += [p for p in listed if not p.name.startswith(".")] + _dicom_slides(path)
        elif any(ch in pattern for ch in "*?["):
            found += [Path(p) for p in sorted(glob.glob(pattern))]
        else:
            found.append(path)  # missing files fail per slide, with the file named
    first: dict[Path, Path] = {}
    for p in found:
        # One entry however often and however it is spelled; the name itself is kept: two links of other names
        # to one file (a cohort folder of symlinks) are two slides with two outputs.
        first.setdefault(p.absolute().parent.resolve() / p.name, p)
    slides = list(first.values())
    check_stems(slides)
    return slides


def check_stems(slides: list[Path]) -> None:
    """Every slide's stem is usable and names one slide only (`a/s1.tif` and `b/s1.svs` would share `s1.h5`)."""
    seen: dict[str, Path] = {}
    for slide in slides:
        stem = output_stem(slide)
        if stem in seen:
            raise CamnetError(f"slides {seen[stem]} and {slide} have the same name {stem!r}, so they would write "
                              "one output; rename one or process them into separate output folders")
        seen.setdefault(stem, slide)


def check_same_slide(output: Path, recorded: str, slide: Path) -> None:
    """A finished output is only this slide's if it was made from this file; another slide of the same name (or a
    moved cohort) is an error, never a skip."""
    if recorded and Path(recorded) != Path(slide).resolve():
        raise CamnetError(f"{output}: finished from slide {recorded}, not {Path(slide).resolve()} (two slides of "
                          "one name, or a moved cohort); pass --overwrite to redo it from this slide")


def require_slides(patterns: list[str], context: str = "") -> list[Path]:
    """`discover_slides` for a cohort fixed up front (a SLURM array): at least one slide, every one a file."""
    try:
        slides = discover_slides(patterns)
    except CamnetError as err:
        raise CamnetError(f"{context}{err}") from None
    if not slides:
        raise CamnetError(f"{context}no slides found in {' '.join(patterns)}")
    for slide in slides:
        if slide.is_dir():
            raise CamnetError(f"{context}slide {slide}: is a directory, not a slide file")
        if not slide.is_file():
            raise CamnetError(f"{context}slide {slide}: no such file")
    return slides


def _by_stem(stem: str, directory: Path, suffixes: tuple[str, ...]) -> Path | None:
    for suffix in suffixes:
        candidate = directory / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def find_annotation(slide: Path, directory: Path) -> Path | None:
    """The annotation paired with a slide by file stem, if any."""
    return _by_stem(output_stem(slide), directory, ANNOTATION_SUFFIXES)


def find_mask(stem: str, directory: Path) -> Path | None:
    """The tissue-mask image made elsewhere (e.g. HistoQC) for the slide with this stem, if any."""
    return _by_stem(stem, directory, MASK_SUFFIXES)


def pair_annotations(slides: list[Path], directory: Path | None) -> list[tuple[Path, Path | None]]:
    if directory is not None and not directory.is_dir():
        raise CamnetError(f"annotation folder {directory}: no such folder")
    return [(s, find_annotation(s, directory) if directory else None) for s in slides]
