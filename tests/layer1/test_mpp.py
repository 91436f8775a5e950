"""Level-0 mpp from OME-XML, the cohort's mpp table, and the SubIFD-pyramid warning (issue 15, part 4)."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from layer1_patches.config import ResolutionConfig
from layer1_patches.extract import ExtractRequest, extract_slide
from layer1_patches.mpp import ome_physical_size_um, read_mpp_table
from layer1_patches.shared.errors import CamnetError
from layer1_patches.slide import Slide, resolve_resolution

from .conftest import CMU, REPO, make_config, run_cli

RNG = np.random.default_rng(3)
IMAGE = RNG.integers(0, 255, (1024, 1024, 3), dtype=np.uint8)


def _ome_tiff(path: Path, subifds: bool, **physical: object) -> Path:
    """An OME-TIFF as tifffile writes one: the pixel size only in the OME-XML, no TIFF resolution tags."""
    meta = {"axes": "YXS", **physical}
    options = {"tile": (256, 256), "photometric": "rgb", "compression": "jpeg"}
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(IMAGE, subifds=2 if subifds else 0, metadata=meta, **options)
        tw.write(IMAGE[::2, ::2], subfiletype=1, **options)
        tw.write(IMAGE[::4, ::4], subfiletype=1, **options)
    return path


def _table(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_ome_tiff_pixel_size_only_in_the_ome_xml_is_read(tmp_path: Path) -> None:
    """Regression: an OME-TIFF whose pixel size is only in `PhysicalSizeX` failed with "no mpp"."""
    path = _ome_tiff(tmp_path / "ome.ome.tif", subifds=False, PhysicalSizeX=0.25, PhysicalSizeY=0.25)
    with Slide(path) as slide:
        assert slide.vendor == "generic-tiff" and slide.level_count == 3  # pages: OpenSlide sees the pyramid
        assert slide.mpp == pytest.approx(0.25) and slide.mpp_source == "ome-xml" and slide.mpp_from_metadata
        res = resolve_resolution(slide, ResolutionConfig(mpp=0.5))
        assert (res.level, res.downsample) == (1, 2.0)  # 0.5 um/px is level 1 as is


@pytest.mark.parametrize(("value", "unit", "um"), [
    ("500", "nm", 0.5),  # 500 nm = 0.5 um
    ("0.00025", "mm", 0.25),
    ("0.5", None, 0.5),  # OME's default unit is the micrometre
    ("0.5", "µm", 0.5),
    ("2.5", "Å", 0.00025),  # 1 angstrom = 1e-4 um
])
def test_ome_units_are_converted_to_micrometres(value: str, unit: str | None, um: float) -> None:
    unit_attr = f' PhysicalSizeXUnit="{unit}"' if unit else ""
    xml = (f'<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0"><Pixels '
           f'ID="Pixels:0" PhysicalSizeX="{value}"{unit_attr} SizeX="4" SizeY="4"/></Image></OME>')
    assert ome_physical_size_um(xml, Path("x.ome.tif")) == pytest.approx(um)


def test_ome_pixel_size_in_pixels_is_an_error_naming_the_slide() -> None:
    xml = '<OME><Image><Pixels PhysicalSizeX="1" PhysicalSizeXUnit="pixel"/></Image></OME>'
    with pytest.raises(CamnetError, match=r"slide a.ome.tif: OME-XML PhysicalSizeXUnit 'pixel'"):
        ome_physical_size_um(xml, Path("a.ome.tif"))
    assert ome_physical_size_um("<OME><Image><Pixels/></Image></OME>", Path("a")) is None


def test_subifd_pyramid_is_reported_not_silently_read_at_level_0(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Regression: an OME-TIFF with its pyramid in SubIFDs opened with one level and no word about it."""
    sub = _ome_tiff(tmp_path / "sub.ome.tif", subifds=True, PhysicalSizeX=0.5)
    with caplog.at_level(logging.WARNING), Slide(sub) as slide:
        assert slide.level_count == 1 and slide.mpp == pytest.approx(0.5)
    assert "3-level pyramid is in SubIFDs" in caplog.text and str(sub) in caplog.text
    caplog.clear()
    pages = _ome_tiff(tmp_path / "pages.ome.tif", subifds=False, PhysicalSizeX=0.5)
    with caplog.at_level(logging.WARNING), Slide(pages):
        pass
    assert "SubIFDs" not in caplog.text


def test_mpp_table_rows_by_name_or_stem(tmp_path: Path) -> None:
    table = read_mpp_table(_table(tmp_path / "mpp.csv", "slide,mpp\na.svs,0.25\nb,0.5\n\n"))
    assert table.lookup(Path("/x/a.svs")) == 0.25 and table.lookup(Path("/y/b.tif")) == 0.5
    assert table.lookup(Path("c.svs")) is None


@pytest.mark.parametrize(("text", "message"), [
    ("name,mpp\na,1\n", "line 1 must be the header 'slide,mpp'"),
    ("slide,mpp\na,0.25\nb,fast\n", "line 3: mpp 'fast' for 'b' is not a positive number"),
    ("slide,mpp\na,-1\n", "line 2: mpp '-1'"),
    ("slide,mpp\na,nan\n", "line 2: mpp 'nan'"),
    ("slide,mpp\na\n", "line 2: expected 'slide,mpp'"),
    ("slide,mpp\na,0.25\na,0.5\n", "line 3: 'a' is listed twice with different mpp"),
])
def test_bad_mpp_table_rows_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = _table(tmp_path / "mpp.csv", text)
    with pytest.raises(CamnetError, match=f"mpp table {path}: {message}"):
        read_mpp_table(path)


def test_mpp_table_row_wins_over_metadata_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    table = read_mpp_table(_table(tmp_path / "mpp.csv", "slide,mpp\nCMU-1-Small-Region,0.25\n"))
    with caplog.at_level(logging.WARNING), Slide(CMU, mpp_table=table) as slide:
        assert slide.mpp == 0.25 and slide.mpp_source == "mpp_table" and not slide.mpp_from_metadata
    assert "says 0.25 um/px, its metadata says 0.499" in caplog.text
    caplog.clear()
    close = read_mpp_table(_table(tmp_path / "close.csv", "slide,mpp\nCMU-1-Small-Region,0.5\n"))
    with caplog.at_level(logging.WARNING), Slide(CMU, mpp_table=close) as slide:  # 0.2 % off: a rounding
        assert slide.mpp == 0.5
    assert caplog.text == ""
    other = read_mpp_table(_table(tmp_path / "other.csv", "slide,mpp\nsomething-else.svs,0.5\n"))
    with Slide(CMU, assume_mpp=9.0, mpp_table=other) as slide:  # not listed: metadata, never the fallback
        assert slide.mpp == pytest.approx(0.499) and slide.mpp_source == "metadata"


def _no_mpp_tiff(path: Path) -> Path:
    """White glass with a pink disc of tissue, and no resolution tags."""
    yy, xx = np.mgrid[:1024, :1024]
    image = np.full((1024, 1024, 3), 245, np.uint8)
    image[(yy - 512) ** 2 + (xx - 512) ** 2 < 300 ** 2] = (200, 110, 160)
    tifffile.imwrite(path, image, tile=(256, 256), photometric="rgb", compression="jpeg")
    return path


def test_extract_reads_level0_mpp_from_the_mpp_table(tmp_path: Path) -> None:
    """Regression: a scanner that writes no mpp needed one cohort-wide `assume_mpp`; now one row per slide."""
    slide = _no_mpp_tiff(tmp_path / "scan.tif")
    table = _table(tmp_path / "mpp.csv", "slide,mpp\nscan.tif,0.25\n")
    cfg = make_config(patch_size=64, resolution={"mpp": 0.5, "mpp_table": str(table)}, sampling={"mode": "dense"},
                      tissue={"method": "otsu"}, filters={"min_tissue_fraction": 0.0})
    result = extract_slide(ExtractRequest(slide, tmp_path / "out", cfg))
    with h5py.File(result.output) as f:
        assert f.attrs["mpp"] == 0.25 and f.attrs["working_mpp"] == 0.5 and f.attrs["level"] == 0
        assert f.attrs["mpp_source"] == "mpp_table"
        assert f["coords"].attrs["patch_size_level0"] == 128  # 64 px at 0.5 um/px from 0.25 um/px
    # an edited row is another store: refused, not silently skipped
    _table(table, "slide,mpp\nscan.tif,0.5\n")
    with pytest.raises(CamnetError, match="finished with a different config; pass --overwrite"):
        extract_slide(ExtractRequest(slide, tmp_path / "out", cfg))


def test_a_table_that_does_not_list_the_slide_keeps_its_store(tmp_path: Path) -> None:
    """The hash holds the slide's row, not the table's path: adding a table that does not list a finished slide
    does not redo it (nor does a config without the key, pinned in test_extract's known hash)."""
    cfg = make_config(patch_size=64, sampling={"random": {"per_class": 5}}, filters={"min_tissue_fraction": 0.0})
    first = extract_slide(ExtractRequest(CMU, tmp_path, cfg))
    table = _table(tmp_path / "mpp.csv", "slide,mpp\nanother.svs,0.25\n")
    listed = make_config(patch_size=64, sampling={"random": {"per_class": 5}}, filters={"min_tissue_fraction": 0.0},
                         resolution={"level": 0, "mpp_table": str(table)})
    assert first.status == "done" and extract_slide(ExtractRequest(CMU, tmp_path, listed)).status == "skipped"


def test_missing_mpp_table_is_one_error_line(tmp_path: Path) -> None:
    slide = _no_mpp_tiff(tmp_path / "scan.tif")
    proc = run_cli("extract", "--config", str(REPO / "configs" / "layer1" / "random.yaml"), "--slide", str(slide),
                   "--out", str(tmp_path / "out"),
                   "--set", f"resolution.mpp_table={tmp_path / 'nope.csv'}")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: mpp table {tmp_path / 'nope.csv'}: no such file (config key resolution.mpp_table)"]
    assert not (tmp_path / "out" / "scan.h5").exists()
