"""The synthetic slide generator: readable pyramid, exact annotations, morphology-only tumour signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
from defusedxml import ElementTree
from scipy import ndimage
from skimage import filters, measure
from skimage.color import rgb2hed

from layer1_patches.shared.errors import CamnetError
from layer1_patches.synth.slides import (
    SynthSpec,
    SynthTruth,
    slide_name,
    write_cohort,
    write_synthetic_slide,
)

from ..conftest import run_cli

SIZE = 4096


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, SynthTruth]:
    out = tmp_path_factory.mktemp("synth_slide")
    tif, xml = out / "s.tif", out / "s.xml"
    return tif, xml, write_synthetic_slide(tif, xml, SynthSpec(size=SIZE, seed=11, tumour_fraction=0.15))


@pytest.fixture(scope="module")
def pixels(slide: tuple[Path, Path, SynthTruth]) -> np.ndarray:
    with openslide.OpenSlide(slide[0]) as osr:
        return np.asarray(osr.read_region((0, 0), 0, (SIZE, SIZE)).convert("RGB"))


def test_openslide_reads_pyramid_mpp_and_dimensions(slide: tuple[Path, Path, SynthTruth]) -> None:
    with openslide.OpenSlide(slide[0]) as osr:
        assert osr.properties["openslide.vendor"] == "generic-tiff"
        assert osr.level_dimensions == ((4096, 4096), (2048, 2048), (1024, 1024))
        assert osr.level_downsamples == pytest.approx((1, 2, 4))
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert float(osr.properties["openslide.mpp-y"]) == pytest.approx(0.5)


def test_reduced_levels_are_box_downsamples_of_level_0(slide: tuple[Path, Path, SynthTruth],
                                                       pixels: np.ndarray) -> None:
    with openslide.OpenSlide(slide[0]) as osr:
        level1 = np.asarray(osr.read_region((0, 0), 1, (2048, 2048)).convert("RGB")).astype(float)
    expected = pixels.reshape(2048, 2, 2048, 2, 3).mean(axis=(1, 3))
    assert np.abs(level1 - expected).mean() < 4  # JPEG noise only: no shift, swap or missing strip


def test_background_is_near_white_and_stroma_pink(slide: tuple[Path, Path, SynthTruth],
                                                  pixels: np.ndarray) -> None:
    tissue = slide[2].tissue_mask(1)
    background = pixels[~ndimage.binary_dilation(tissue, iterations=4)].astype(float)
    assert np.all(np.abs(background.mean(axis=0) - 240) < 3) and np.all(background.std(axis=0) < 4)
    red, green, blue = np.median(pixels[tissue], axis=0)
    assert red > blue > green  # pink: a BGR swap or YCbCr mix-up would break this order


def test_tumour_nuclei_differ_in_morphology_not_stroma_colour(slide: tuple[Path, Path, SynthTruth],
                                                             pixels: np.ndarray) -> None:
    truth = slide[2]
    tissue, tumour = truth.tissue_mask(1), truth.tumour_mask(1)
    haem = rgb2hed(pixels)[..., 0]
    nuclei = (haem > filters.threshold_otsu(haem[tissue])) & tissue
    regions = measure.regionprops(measure.label(nuclei), intensity_image=haem)
    # cores keep away from the tumour border, where nuclei are clipped by the annotation
    cores = {"tumour": ndimage.binary_erosion(tumour, iterations=20),
             "normal": ndimage.binary_erosion(tissue & ~tumour, iterations=20)}
    stats = {}
    for name, core in cores.items():
        inside = [r for r in regions if core[int(r.centroid[0]), int(r.centroid[1])] and r.area >= 10]
        assert len(inside) > 50, name
        stroma = core & tissue & ~ndimage.binary_dilation(nuclei, iterations=3)
        stats[name] = {"area": np.median([r.area for r in inside]),
                       "haem": np.mean([r.intensity_mean for r in inside]),
                       "eccentricity": np.mean([r.eccentricity for r in inside]),
                       "solidity": np.mean([r.solidity for r in inside]),
                       "stroma": pixels[stroma].mean(axis=0)}
    tum, nor = stats["tumour"], stats["normal"]
    assert tum["area"] >= 1.5 * nor["area"]
    assert tum["haem"] > 1.2 * nor["haem"]
    assert tum["eccentricity"] > nor["eccentricity"] + 0.15
    assert tum["solidity"] < nor["solidity"] - 0.03
    assert np.abs(tum["stroma"] - nor["stroma"]).max() < 4


def _read_xml(path: Path) -> dict[str, list[np.ndarray]]:
    groups: dict[str, list[np.ndarray]] = {}
    for ann in ElementTree.parse(path).getroot().iter("Annotation"):
        assert ann.get("Type") == "Polygon"
        coords = sorted(ann.iter("Coordinate"), key=lambda c: int(c.get("Order")))
        groups.setdefault(ann.get("PartOfGroup"), []).append(
            np.array([[float(c.get("X")), float(c.get("Y"))] for c in coords]))
    return groups


def test_xml_holds_exactly_the_truth_polygons(slide: tuple[Path, Path, SynthTruth]) -> None:
    truth = slide[2]
    groups = _read_xml(slide[1])
    assert set(groups) == {"Tumor", "_2"}
    assert len(truth.tumour_polygons) >= 1 and len(truth.hole_polygons) >= 1
    for parsed, expected in ((groups["Tumor"], truth.tumour_polygons), (groups["_2"], truth.hole_polygons)):
        assert len(parsed) == len(expected)
        assert all(np.array_equal(a, b) for a, b in zip(parsed, expected, strict=True))


def test_tumour_is_polygons_minus_holes_inside_tissue(slide: tuple[Path, Path, SynthTruth]) -> None:
    truth = slide[2]
    tissue, tumour = truth.tissue_mask(4), truth.tumour_mask(4)
    assert not (tumour & ~tissue).any()
    assert 0.3 < tissue.mean() < 0.6
    assert 0.075 < tumour.sum() / tissue.sum() < 0.225  # asked for 0.15
    for hole in truth.hole_polygons:
        assert any(measure.points_in_poly(hole, t).all() for t in truth.tumour_polygons)
        x, y = (hole.mean(axis=0) / 4).astype(int)
        assert tissue[y, x] and not tumour[y, x]


def test_same_spec_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    def write(name: str, seed: int) -> tuple[bytes, bytes]:
        spec = SynthSpec(size=2048, seed=seed)
        write_synthetic_slide(tmp_path / f"{name}.tif", tmp_path / f"{name}.xml", spec)
        return (tmp_path / f"{name}.tif").read_bytes(), (tmp_path / f"{name}.xml").read_bytes()

    first, again, other = write("a", 5), write("b", 5), write("c", 6)
    assert first == again
    assert first[0] != other[0] and first[1] != other[1]


def test_zero_tumour_fraction_gives_tumour_free_slide(tmp_path: Path) -> None:
    spec = SynthSpec(512, seed=1, tumour_fraction=0)
    truth = write_synthetic_slide(tmp_path / "n.tif", tmp_path / "n.xml", spec)
    assert truth.tumour_polygons == [] and not truth.tumour_mask(1).any() and truth.tissue_mask(1).any()
    assert _read_xml(tmp_path / "n.xml") == {}


def test_cohort_names_patients_and_skips_complete_slides(tmp_path: Path) -> None:
    assert len({slide_name(i).split("_node_")[0] for i in range(6)}) >= 3
    paths = write_cohort(tmp_path, 3, 512, seed=2, tumour_fraction=0.2)
    assert [p.name for p in paths] == ["patient_000_node_0.tif", "patient_000_node_1.tif",
                                       "patient_001_node_0.tif"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [p.name for p in paths] + [p.with_suffix(".xml").name for p in paths])
    stamps = [p.stat().st_mtime_ns for p in paths]
    paths[1].with_suffix(".xml").unlink()
    write_cohort(tmp_path, 3, 512, seed=2, tumour_fraction=0.2)
    assert [p.stat().st_mtime_ns for p in paths][::2] == stamps[::2]
    assert paths[1].with_suffix(".xml").is_file()
    with openslide.OpenSlide(paths[0]) as osr:
        assert osr.level_count == 2


@pytest.mark.parametrize(("kwargs", "culprit"), [
    ({"n_slides": 1, "size": 100}, "100"),
    ({"n_slides": 0, "size": 512}, "0"),
])
def test_bad_cohort_arguments_name_the_value(tmp_path: Path, kwargs: dict[str, int], culprit: str) -> None:
    with pytest.raises(CamnetError, match=culprit):
        write_cohort(tmp_path / "out", seed=1, **kwargs)


def test_unwritable_output_directory_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CamnetError, match=str(blocker / "out")):
        write_cohort(blocker / "out", 1, 512, seed=1)


def test_cli_writes_cohort_and_rejects_bad_size(tmp_path: Path) -> None:
    done = run_cli("synth", "--out", str(tmp_path), "--n-slides", "1", "--size", "512", "--seed", "3")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "patient_000_node_0.tif").is_file() and (tmp_path / "patient_000_node_0.xml").is_file()
    bad = run_cli("synth", "--out", str(tmp_path / "bad"), "--n-slides", "1", "--size", "100", "--seed", "3")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: ") and "100" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_slides_per_patient_numbers_patients(tmp_path: Path) -> None:
    assert [slide_name(i) for i in range(3)] == ["patient_000_node_0", "patient_000_node_1", "patient_001_node_0"]
    assert [slide_name(i, 3) for i in (2, 3)] == ["patient_000_node_2", "patient_001_node_0"]
    done = run_cli("synth", "--out", str(tmp_path), "--n-slides", "2", "--size", "512", "--slides-per-patient", "1")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.glob("*.tif")) == ["patient_000_node_0.tif", "patient_001_node_0.tif"]
    shown = " ".join(run_cli("synth", "--help").stdout.split())
    assert "Slide i is patient i // P, node i % P" in shown and "--slides-per-patient" in shown
    bad = run_cli("synth", "--out", str(tmp_path / "bad"), "--n-slides", "2", "--size", "512",
                  "--slides-per-patient", "0")
    assert bad.returncode == 2 and "slides per patient 0 must be at least 1" in bad.stderr
