"""Where a slide's level-0 mpp comes from when OpenSlide's metadata is not the whole story.

In order: a row of the cohort's mpp table (`resolution.mpp_table`, the user's word for one slide, so it wins over
the file), OpenSlide's `openslide.mpp-x`, the OME-XML `PhysicalSizeX` of an OME-TIFF (OpenSlide reads OME-TIFFs
as generic TIFFs and looks only at the TIFF resolution tags, which OME writers often leave out), then
`resolution.assume_mpp`. The source used is recorded in each store (`mpp_source`).

An OME-TIFF keeps its pyramid either as further pages (OpenSlide sees the levels) or in SubIFDs of the first page
(OpenSlide sees level 0 only, so the tissue mask reads the full-resolution image). The latter is reported, since it
costs minutes per slide, not patches: the pixels read are the same.
"""

from __future__ import annotations

import csv
import logging
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from layer1_patches.shared.cohort import slide_label
from layer1_patches.shared.errors import CamnetError

log = logging.getLogger(__name__)

# OME's UnitsLength values that are lengths, in micrometres (ome.xsd); "pixel" and "reference frame" are not.
OME_UNITS_UM = {"m": 1e6, "dm": 1e5, "cm": 1e4, "mm": 1e3, "µm": 1.0, "um": 1.0, "nm": 1e-3, "pm": 1e-6,
                "Å": 1e-4, "in": 25_400.0, "thou": 25.4, "mil": 25.4}
# OpenSlide's vendor for TIFFs it reads without a vendor format: the only ones whose metadata may hide elsewhere.
GENERIC_TIFF = "generic-tiff"


@dataclass(frozen=True)
class MppTable:
    """A cohort's `slide,mpp` table: rows by slide file name and by stem, so either column spelling matches."""

    path: Path
    rows: dict[str, float]

    def lookup(self, slide: Path) -> float | None:
        """The row of the slide's file name, its stem, or its output name (a DICOM slide's folder)."""
        for key in (Path(slide).name, Path(slide).stem, slide_label(Path(slide))):
            if key in self.rows:
                return self.rows[key]
        return None


@dataclass(frozen=True)
class TiffFacts:
    """What tifffile sees in a generic TIFF that OpenSlide does not report."""

    ome_mpp: float | None
    pyramid_levels: int  # levels of the first image's pyramid, SubIFDs included


def read_mpp_table(path: Path) -> MppTable:
    """Parse `slide,mpp` (a header row, then one row per slide); every bad row is an error naming file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CamnetError(f"mpp table {path}: no such file (config key resolution.mpp_table)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CamnetError(f"mpp table {path}: cannot read ({err})") from None
    rows = list(csv.reader(text.splitlines()))
    header = [c.strip().lower() for c in rows[0]] if rows else []
    if header[:2] != ["slide", "mpp"]:
        raise CamnetError(f"mpp table {path}: line 1 must be the header 'slide,mpp', got {','.join(header)!r}")
    table: dict[str, float] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) < 2:
            raise CamnetError(f"mpp table {path}: line {line}: expected 'slide,mpp', got {','.join(row)!r}")
        slide, value = row[0].strip(), row[1].strip()
        mpp = _positive(value)
        if mpp is None:
            raise CamnetError(f"mpp table {path}: line {line}: mpp {value!r} for {slide!r} is not a positive number")
        if not slide:
            raise CamnetError(f"mpp table {path}: line {line}: empty slide name")
        if slide in table and table[slide] != mpp:
            raise CamnetError(f"mpp table {path}: line {line}: {slide!r} is listed twice with different mpp "
                              f"({table[slide]:g} and {mpp:g})")
        table[slide] = mpp
    return MppTable(Path(path), table)


def _positive(text: str) -> float | None:
    """The finite positive number `text` spells, else None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def ome_physical_size_um(ome_xml: str, source: Path) -> float | None:
    """The first image's `PhysicalSizeX` in micrometres, or None when the OME-XML gives no physical size."""
    try:
        root = SafeET.fromstring(ome_xml)
    except (ET.ParseError, DefusedXmlException) as err:
        log.warning("slide %s: its OME-XML cannot be parsed (%s); ignoring it", source, err)
        return None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or pixels.get("PhysicalSizeX") is None:
        return None
    value, unit = pixels.get("PhysicalSizeX", ""), pixels.get("PhysicalSizeXUnit", "µm")
    size = _positive(value)
    if size is None:
        raise CamnetError(f"slide {source}: OME-XML PhysicalSizeX {value!r} is not a positive number")
    if unit not in OME_UNITS_UM:
        raise CamnetError(f"slide {source}: OME-XML PhysicalSizeXUnit {unit!r} is not a length CamNet knows "
                          f"({', '.join(OME_UNITS_UM)}); set resolution.assume_mpp or resolution.mpp_table")
    return size * OME_UNITS_UM[unit]


def tiff_facts(path: Path) -> TiffFacts | None:
    """OME mpp and pyramid depth of a TIFF, or None when tifffile cannot read it (OpenSlide could: not our error)."""
    import tifffile  # lazy: only generic TIFFs need it

    try:
        with tifffile.TiffFile(path) as tif:
            ome = tif.ome_metadata if tif.is_ome else None
            levels = len(tif.series[0].levels) if tif.series else 1
    except Exception as err:  # noqa: BLE001 - tifffile raises many types; OpenSlide opened the file already
        log.warning("slide %s: tifffile cannot read it (%s); using OpenSlide's metadata only", path, err)
        return None
    return TiffFacts(ome_physical_size_um(ome, path) if ome else None, levels)
