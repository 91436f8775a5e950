"""`layer1_patches/shared/cohort.py`: which files are slides, and which annotation or mask pairs with each."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from layer1_patches.shared.cohort import (
    discover_slides,
    find_annotation,
    find_mask,
    output_stem,
    pair_annotations,
    require_slides,
)
from layer1_patches.shared.errors import CamnetError


def _touch(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / n for n in names]
    for p in paths:
        p.write_bytes(b"x")
    return paths


# --- discover_slides --------------------------------------------------------------------------------------


def test_folder_gives_known_slide_suffixes_sorted(tmp_path: Path) -> None:
    _touch(tmp_path, "c.svs", "a.ndpi", "B.TIFF", "b.tif", "m.mrxs", "notes.txt", "a.xml", "thumb.png", "README")
    (tmp_path / "m").mkdir()  # an MRXS slide's data folder
    _touch(tmp_path / "m", "Data0000.dat")
    names = [p.name for p in discover_slides([str(tmp_path)])]
    assert names == ["B.TIFF", "a.ndpi", "b.tif", "c.svs", "m.mrxs"]


def test_folder_glob_and_paths_mean_the_same_cohort_without_repeats(tmp_path: Path) -> None:
    a, b, c = _touch(tmp_path / "slides", "a.svs", "b.svs", "c.ndpi")
    by_folder = discover_slides([str(tmp_path / "slides")])
    by_glob = discover_slides([str(tmp_path / "slides" / "*")])
    by_paths = discover_slides([str(c), str(a), str(b)])
    assert by_folder == by_glob == [a, b, c]
    assert sorted(by_paths) == [a, b, c]
    # the same slide named by a folder, a glob and a path is kept once, at its first place
    assert discover_slides([str(b), str(tmp_path / "slides"), str(tmp_path / "slides" / "*.svs"), str(b)]) == [b, a, c]


def test_glob_is_sorted(tmp_path: Path) -> None:
    _touch(tmp_path, "z.svs", "m.svs", "a.svs", "x.ndpi")
    assert [p.name for p in discover_slides([str(tmp_path / "*.svs")])] == ["a.svs", "m.svs", "z.svs"]
    assert [p.name for p in discover_slides([str(tmp_path / "[am].svs")])] == ["a.svs", "m.svs"]


def test_plain_path_is_kept_even_when_missing(tmp_path: Path) -> None:
    missing = tmp_path / "gone.svs"
    assert discover_slides([str(missing)]) == [missing]  # fails later, per slide, with the file named


def test_glob_matching_nothing_and_empty_folder_give_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert discover_slides([str(tmp_path / "empty"), str(tmp_path / "*.svs")]) == []


# --- require_slides ---------------------------------------------------------------------------------------


def test_require_slides_returns_the_discovered_slides(tmp_path: Path) -> None:
    a, b = _touch(tmp_path, "a.svs", "b.svs")
    assert require_slides([str(tmp_path)]) == [a, b]


def test_require_slides_refuses_an_empty_cohort(tmp_path: Path) -> None:
    pattern = str(tmp_path / "*.svs")
    with pytest.raises(CamnetError) as err:
        require_slides([pattern], context="layer1 submit: ")
    assert str(err.value) == f"layer1 submit: no slides found in {pattern}"


def test_require_slides_names_the_first_missing_file(tmp_path: Path) -> None:
    (a,) = _touch(tmp_path, "a.svs")
    with pytest.raises(CamnetError) as err:
        require_slides([str(a), str(tmp_path / "gone.svs"), str(tmp_path / "also_gone.svs")])
    assert str(err.value) == f"slide {tmp_path / 'gone.svs'}: no such file"


# --- pairing by stem --------------------------------------------------------------------------------------


def test_find_annotation_by_stem_in_suffix_order(tmp_path: Path) -> None:
    slide = Path("/data/slides/tumour_001.svs")
    assert find_annotation(slide, tmp_path) is None
    _touch(tmp_path, "tumour_001.json")
    assert find_annotation(slide, tmp_path) == tmp_path / "tumour_001.json"
    _touch(tmp_path, "tumour_001.geojson")
    assert find_annotation(slide, tmp_path) == tmp_path / "tumour_001.geojson"
    _touch(tmp_path, "tumour_001.xml", "tumour_0011.xml", "tumour_001.svs.xml")
    assert find_annotation(slide, tmp_path) == tmp_path / "tumour_001.xml"


def test_find_annotation_ignores_folders_and_other_stems(tmp_path: Path) -> None:
    (tmp_path / "tumour_001.xml").mkdir()
    _touch(tmp_path, "tumour_002.xml", "tumour_001.txt")
    assert find_annotation(Path("tumour_001.svs"), tmp_path) is None


def test_find_mask_by_stem_in_suffix_order(tmp_path: Path) -> None:
    assert find_mask("s1", tmp_path) is None
    _touch(tmp_path, "s1.jpg")
    assert find_mask("s1", tmp_path) == tmp_path / "s1.jpg"
    _touch(tmp_path, "s1.tiff")
    assert find_mask("s1", tmp_path) == tmp_path / "s1.tiff"
    _touch(tmp_path, "s1.tif")
    assert find_mask("s1", tmp_path) == tmp_path / "s1.tif"
    _touch(tmp_path, "s1.png")
    assert find_mask("s1", tmp_path) == tmp_path / "s1.png"


def test_pair_annotations(tmp_path: Path) -> None:
    slides = [Path("/d/a.svs"), Path("/d/b.svs")]
    (ann,) = _touch(tmp_path / "ann", "a.xml")
    assert pair_annotations(slides, tmp_path / "ann") == [(slides[0], ann), (slides[1], None)]
    assert pair_annotations(slides, None) == [(slides[0], None), (slides[1], None)]


def test_pair_annotations_with_a_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CamnetError) as err:
        pair_annotations([Path("/d/a.svs")], tmp_path / "nope")
    assert str(err.value) == f"annotation folder {tmp_path / 'nope'}: no such folder"
    (tmp_path / "file").write_text("")
    with pytest.raises(CamnetError, match="no such folder"):
        pair_annotations([Path("/d/a.svs")], tmp_path / "file")


# --- output names (issue 13) ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..tif", "...tif", ".tif", ".hidden.svs"])
def test_slide_named_dot_dot_tif_is_refused_naming_the_file(tmp_path: Path, name: str) -> None:
    # Regression: `heatmap` on `..tif` (stem '.') rmtree'd OUT itself, on `...tif` (stem '..') OUT's parent.
    (slide,) = _touch(tmp_path, name)
    with pytest.raises(CamnetError, match=rf"slide {re.escape(str(slide))}: the name .* cannot name an output"):
        output_stem(slide)
    with pytest.raises(CamnetError, match="cannot name an output"):
        discover_slides([str(slide)])


def test_folder_listing_leaves_out_hidden_slides_like_dot_dot_tif(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    # Regression: `--slides DIR` picked up `..tif` and `...tif` from the listing.
    _touch(tmp_path, "..tif", "...tif", "._a.svs", "a.svs")
    assert discover_slides([str(tmp_path)]) == [tmp_path / "a.svs"]
    assert "hidden files left out: ...tif, ..tif, ._a.svs" in caplog.text


def test_two_slides_with_one_stem_are_refused_naming_both(tmp_path: Path) -> None:
    # Regression: `extract --slides a/ b/` with a/slide1.tif and b/slide1.tif wrote one slide1.h5 and called the
    # other "skipped"; `submit` would have run two array tasks on one file.
    a = _touch(tmp_path / "a", "slide1.tif")[0]
    b = _touch(tmp_path / "b", "slide1.svs")[0]
    with pytest.raises(CamnetError, match=f"slides {re.escape(str(a))} and {re.escape(str(b))} have the same name"):
        discover_slides([str(tmp_path / "a"), str(tmp_path / "b")])
    with pytest.raises(CamnetError, match="config key 'slides': slides .* have the same name 'slide1'"):
        require_slides([str(tmp_path / "a"), str(tmp_path / "b")], "config key 'slides': ")


def test_one_slide_named_twice_is_one_slide(tmp_path: Path) -> None:
    a = _touch(tmp_path / "a", "slide1.tif")[0]
    # Review of issue 13: two spellings gave two manifest entries, two array tasks for one output.
    assert discover_slides([str(a), str(tmp_path / "a" / ".." / "a" / "slide1.tif")]) == [a]
    assert discover_slides([str(tmp_path / "a"), str(a)]) == [a]


def _dicom_series(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(b"")  # discovery goes by names: the files' content is test_dicom's business
    return [folder / n for n in names]


def test_a_dicom_folder_is_one_slide_named_after_the_folder(tmp_path: Path) -> None:
    """Regression (issue 15): `--slides` on a DICOM WSI folder took each level's file for a slide of its own, so one
    slide became three stores (`level0.h5`, `level1.h5`, `level2.h5`) that an index could put in different splits."""
    cohort = tmp_path / "cohort"
    a = _dicom_series(cohort / "patient_001", "1.2.3.9.dcm", "1.2.3.10.dcm", "1.2.3.11.dcm")
    b = _dicom_series(cohort / "patient_002", "level0.dcm", "level1.dcm")
    (cohort / "other.svs").write_bytes(b"")
    (cohort / "notes").mkdir()
    assert discover_slides([str(cohort)]) == [cohort / "other.svs", a[1], b[0]]  # first file of each series
    assert [output_stem(p) for p in discover_slides([str(cohort)])] == ["other", "patient_001", "patient_002"]
    assert discover_slides([str(cohort / "patient_001")]) == [a[1]]  # the series' own folder: the same slide
    # files lying in the listed folder are the slide of that folder, also when named explicitly
    flat = _dicom_series(tmp_path / "patient_003", "x.dcm", "y.dcm")
    assert discover_slides([str(tmp_path / "patient_003")]) == [flat[0]]
    assert output_stem(flat[1]) == "patient_003"
    (tmp_path / "patient_003.xml").write_text("<ASAP_Annotations/>")
    assert find_annotation(flat[0], tmp_path) == tmp_path / "patient_003.xml"  # pairs by the slide's name


def test_one_dicom_series_named_by_two_files_is_refused_as_one_name(tmp_path: Path) -> None:
    files = _dicom_series(tmp_path / "s", "a.dcm", "b.dcm")
    with pytest.raises(CamnetError, match="have the same name 's'"):
        discover_slides([str(f) for f in files])
