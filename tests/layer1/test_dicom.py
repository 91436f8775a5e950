"""DICOM WSI (issue 15): Layer 1 reads a VL Whole Slide Microscopy series through OpenSlide's `dicom` vendor.

The slide is made in the test (tests/layer1/dicom_wsi.py): three uncompressed levels, 256 px TILED_FULL frames, so
every pixel OpenSlide returns can be compared exactly with the pixels written.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from layer1_patches.slide import Slide
from layer1_patches.store import PatchStore
from tests.helpers import assert_one_error

from .conftest import REPO, run_cli

pytest.importorskip("pydicom", reason="pydicom (setup.cfg's dev extra) writes the DICOM WSI these tests read")

from .dicom_wsi import DicomWsiSpec, pyramid, write_dicom_wsi  # noqa: E402

RANDOM = str(REPO / "configs" / "layer1" / "random.yaml")
W, H = 1024, 768
SPEC = DicomWsiSpec(levels=3, tile=256, mpp=0.25, objective_power=40.0)


def tissue_image(seed: int = 0) -> np.ndarray:
    """Near-white glass with a noisy pink disc: Otsu finds the disc, and the noise makes any shift or swap show."""
    rng = np.random.default_rng(seed)
    image = rng.integers(236, 246, (H, W, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:H, :W]
    disc = (xx - 512) ** 2 + (yy - 384) ** 2 < 300**2
    pink = np.array([200, 110, 170]) + rng.integers(-40, 41, (H, W, 3))
    image[disc] = pink[disc].astype(np.uint8)
    return image


@pytest.fixture(scope="module")
def dicom_slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    image = tissue_image()
    return write_dicom_wsi(image, tmp_path_factory.mktemp("dicom") / "slide", SPEC), image


def test_slide_opens_dicom_with_levels_and_mpp_from_pixel_spacing(dicom_slide: tuple[Path, np.ndarray]) -> None:
    with Slide(dicom_slide[0]) as slide:
        assert slide.vendor == "dicom"
        assert slide.level_count == 3
        # each level halves the 1024 x 768 total pixel matrix
        assert slide.dimensions == (1024, 768)
        assert slide.level_dimensions == ((1024, 768), (512, 384), (256, 192))
        assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        # PixelSpacing 0.00025 mm in the shared Pixel Measures = 0.25 um/px; ObjectiveLensPower 40
        assert slide.mpp == pytest.approx(0.25) and slide.mpp_from_metadata
        assert slide.objective_power == pytest.approx(40.0)


def test_any_file_of_the_series_opens_the_whole_pyramid(dicom_slide: tuple[Path, np.ndarray]) -> None:
    with Slide(dicom_slide[0].with_name("level2.dcm")) as slide:
        assert slide.level_count == 3 and slide.dimensions == (1024, 768)


@pytest.mark.parametrize(("level", "box"), [(0, (0, 0, W, H)), (0, (200, 230, 300, 100)), (1, (0, 0, 512, 384)),
                                            (2, (0, 0, 256, 192)), (1, (100, 300, 200, 84))],
                         ids=["level0-all", "level0-across-tiles", "level1-all", "level2-all", "level1-edge-tile"])
def test_read_rgb_returns_the_written_pixels(dicom_slide: tuple[Path, np.ndarray], level: int,
                                             box: tuple[int, int, int, int]) -> None:
    """Uncompressed frames: exact equality, including the padded edge tiles of levels 1 and 2 (384, 192 rows)."""
    path, image = dicom_slide
    x, y, w, h = box  # in level pixels
    expected = pyramid(image, 3)[level][y:y + h, x:x + w]
    with Slide(path) as slide:
        ds = int(slide.level_downsamples[level])
        got = slide.read_rgb(x * ds, y * ds, level, w, h)
    assert got.shape == expected.shape and np.array_equal(got, expected)


@pytest.mark.parametrize(("mpp", "level"), [(0.25, 0), (0.5, 1)], ids=["level0", "level1"])
def test_extract_from_dicom_stores_the_source_pixels(tmp_path: Path, dicom_slide: tuple[Path, np.ndarray],
                                                     mpp: float, level: int) -> None:
    """0.25 um/px is level 0 and 0.5 um/px is level 1 read as is: each stored patch is the written level's pixels
    at its level-0 coordinates divided by the level's downsample 2**level."""
    path, image = dicom_slide
    out = tmp_path / "out"
    proc = run_cli("extract", "--config", RANDOM, "--slide", str(path), "--out", str(out),
                   "--set", "patch_size=32", "--set", f"resolution.mpp={mpp}",
                   "--set", "sampling.random.per_class=12", "--set", "sampling.random.grid_step=16")
    assert proc.returncode == 0, proc.stderr
    source = pyramid(image, 3)[level]
    with PatchStore(out / "slide.h5") as store:  # named after the series' folder, not the file given
        assert store.attrs["vendor"] == "dicom" and store.attrs["mpp"] == pytest.approx(0.25)
        assert store.attrs["working_mpp"] == pytest.approx(mpp)
        assert len(store) == 12
        patches = store.read(np.arange(len(store)))
        for (x0, y0), patch in zip(store.coords, patches, strict=True):
            assert x0 % 2**level == 0 and y0 % 2**level == 0  # on the level's own pixel grid
            x, y = int(x0) >> level, int(y0) >> level
            assert np.array_equal(patch, source[y:y + 32, x:x + 32]), (x0, y0)


def test_dicom_without_pixel_spacing_is_a_no_mpp_error_naming_the_file(tmp_path: Path) -> None:
    """No Pixel Measures: OpenSlide gives no mpp, so extract stops with one error line and writes nothing."""
    path = write_dicom_wsi(tissue_image(), tmp_path / "slide", replace(SPEC, mpp=None))
    with Slide(path) as slide:
        assert slide.mpp is None and not slide.mpp_from_metadata
    out = tmp_path / "out"
    proc = run_cli("extract", "--config", RANDOM, "--slide", str(path), "--out", str(out))
    assert_one_error(proc, str(path), "no mpp", "assume_mpp")
    assert not list(out.glob("*.h5")) if out.exists() else True


def test_extract_slides_on_a_dicom_cohort_writes_one_store_per_series(tmp_path: Path) -> None:
    """Regression (issue 15): `--slides` on a DICOM folder wrote one store per level file, all copies of one slide."""
    cohort = tmp_path / "cohort"
    for n, name in enumerate(("patient_001", "patient_002")):
        write_dicom_wsi(tissue_image(seed=n), cohort / name, SPEC)
    out = tmp_path / "out"
    proc = run_cli("extract", "--config", RANDOM, "--slides", str(cohort), "--out", str(out),
                   "--set", "patch_size=32", "--set", "sampling.random.per_class=4")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.glob("*.h5")) == ["patient_001.h5", "patient_002.h5"]
    with PatchStore(out / "patient_002.h5") as store:
        assert store.attrs["slide_name"] == "patient_002" and store.attrs["vendor"] == "dicom"
