from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.path import Path as MplPath

from layer1_patches.annotations import load_annotations
from layer1_patches.config import MetadataConfig
from layer1_patches.extract import ExtractRequest, extract_slide, parse_shard, slide_identity
from layer1_patches.reading import ordered_map
from layer1_patches.shared.errors import CamnetError
from layer1_patches.store import PatchStore

from .conftest import CMU, DATA, make_config


def true_tumour_fraction(annotation: Path, coords: np.ndarray, footprint: int, samples: int = 24) -> np.ndarray:
    """Tumour share of each patch by point sampling the polygons at level 0 (independent of the rasteriser)."""
    polygons = load_annotations(annotation)
    offsets = (np.arange(samples) + 0.5) * footprint / samples
    ox, oy = np.meshgrid(offsets, offsets)
    out = []
    for x, y in coords:
        points = np.stack([x + ox.ravel(), y + oy.ravel()], axis=1)
        inside = np.zeros(len(points), bool)
        for p in polygons:
            if p.group in ("Tumor", "_0", "_1"):
                inside |= MplPath(p.points).contains_points(points)
        for p in polygons:
            if p.group == "_2":
                inside &= ~MplPath(p.points).contains_points(points)
        out.append(inside.mean())
    return np.array(out)


def test_labels_match_annotation_geometry_with_holes(tmp_path: Path, cmu_xml: Path) -> None:
    cfg = make_config(patch_size=64, sampling={"mode": "dense"}, labels={"drop_ambiguous": False},
                      annotation={"downsample": 4})
    result = extract_slide(ExtractRequest(CMU, tmp_path, cfg, cmu_xml))
    with PatchStore(Path(result.output)) as store:
        truth = true_tumour_fraction(cmu_xml, store.coords, 64)
        np.testing.assert_allclose(store.tumour_fraction, truth, atol=0.08)
        # exact (issue 14): the square T0 less the `_2` square H0, both axis-aligned
        exact = rectangle_share(store.coords, 64, [(1000, 1200, 1800, 2200)]) - rectangle_share(
            store.coords, 64, [(1200, 1400, 1500, 1700)])
        np.testing.assert_allclose(store.tumour_fraction, exact, atol=1e-6)
        # the thumbnail, rasterised near its own size: (800 x 1000 - 300 x 300) / (2220 x 2967) = 0.1078 tumour
        thumb = store.mask("tumour") > 0
        assert max(thumb.shape) == 512 and thumb.mean() == pytest.approx(0.1078, abs=0.005)
        assert np.array_equal(store.labels, (store.tumour_fraction >= 0.5).astype(np.uint8))
        in_hole = ((store.coords >= [1200, 1400]) & (store.coords + 64 <= [1500, 1700])).all(axis=1)
        assert in_hole.any() and (store.labels[in_hole] == 0).all()
        assert result.counts["tumour"] == int(store.labels.sum()) > 50


def test_random_extraction_reports_reached_counts(tmp_path: Path, cmu_xml: Path) -> None:
    cfg = make_config(patch_size=64, sampling={"random": {"per_class": 100000, "max_attempts_factor": 1}})
    result = extract_slide(ExtractRequest(CMU, tmp_path, cfg, cmu_xml))
    assert result.requested == {"tumour": 100000, "normal": 100000}
    assert 0 < result.counts["tumour"] < 100000 and 0 < result.counts["normal"] < 100000
    with PatchStore(Path(result.output)) as store:
        assert store.attrs["counts"] == result.counts and store.attrs["requested"] == result.requested


def test_random_is_reproducible_and_task_seed_changes_it(tmp_path: Path, cmu_xml: Path) -> None:
    cfg = make_config(patch_size=64, sampling={"random": {"per_class": 20}})
    coords = []
    for name, task in (("a", 0), ("b", 0), ("c", 1)):
        r = extract_slide(ExtractRequest(CMU, tmp_path / name, cfg, cmu_xml, task_seed=task))
        with PatchStore(Path(r.output)) as store:
            coords.append(store.coords)
    assert np.array_equal(coords[0], coords[1]) and not np.array_equal(coords[0], coords[2])


def test_store_metadata(tmp_path: Path) -> None:
    cfg = make_config(patch_size=64, resolution={"magnification": 10}, sampling={"random": {"per_class": 5}})
    result = extract_slide(ExtractRequest(CMU, tmp_path, cfg))
    with PatchStore(Path(result.output)) as store:
        attrs = store.attrs
        assert attrs["slide_name"] == "CMU-1-Small-Region" and attrs["vendor"] == "aperio"
        assert attrs["mpp"] == pytest.approx(0.499) and attrs["working_mpp"] == pytest.approx(0.998)
        assert attrs["magnification"] == pytest.approx(10) and attrs["downsample"] == pytest.approx(2.0)
        assert attrs["sampling_mode"] == "random" and attrs["package_version"]
        assert len(attrs["config_hash"]) == 16 and attrs["config"]["patch_size"] == 64
        # /coords' patch_size is what peers read at patch_level (level 0 here): 64 working px are 128 level-0 px
        assert store.coords_attrs["patch_size"] == 128 and store.coords_attrs["downsample"] == pytest.approx(2.0)
        assert store.read([0]).shape == (1, 64, 64, 3)
        assert store.mask("tissue").max() == 255 and max(store.mask("tissue").shape) <= 512
        assert result.counts == {"tumour": 0, "normal": 5}


def test_rerun_skips_finished_and_refuses_a_changed_config(tmp_path: Path) -> None:
    cfg = make_config(patch_size=64, sampling={"random": {"per_class": 5}})
    first = extract_slide(ExtractRequest(CMU, tmp_path, cfg))
    mtime = Path(first.output).stat().st_mtime_ns
    assert extract_slide(ExtractRequest(CMU, tmp_path, cfg)).status == "skipped"
    assert Path(first.output).stat().st_mtime_ns == mtime
    other = make_config(patch_size=64, sampling={"random": {"per_class": 6}})
    with pytest.raises(CamnetError, match="finished with a different config; pass --overwrite"):
        extract_slide(ExtractRequest(CMU, tmp_path, other))
    assert extract_slide(ExtractRequest(CMU, tmp_path, other, overwrite=True)).counts["normal"] == 6


def test_shard_needs_dense(tmp_path: Path) -> None:
    with pytest.raises(CamnetError, match="--shard needs sampling.mode: dense"):
        extract_slide(ExtractRequest(CMU, tmp_path, make_config(), shard=(0, 2)))


@pytest.mark.parametrize("text", ["2/2", "a/b", "1", "0/0"])
def test_bad_shard_spec(text: str) -> None:
    with pytest.raises(CamnetError, match="expected i/K"):
        parse_shard(text)


def test_dense_shards_union_equals_unsharded_run(tmp_path: Path) -> None:
    cfg = make_config(patch_size=64, sampling={"mode": "dense"})
    whole = extract_slide(ExtractRequest(CMU, tmp_path / "whole", cfg))
    parts = [extract_slide(ExtractRequest(CMU, tmp_path / "parts", cfg, shard=(i, 3))) for i in range(3)]
    with PatchStore(Path(whole.output)) as w:
        coords = []
        patches = []
        for part in parts:
            with PatchStore(Path(part.output)) as s:
                coords.append(s.coords)
                patches.append(s.read(np.arange(len(s))))
        assert np.array_equal(np.concatenate(coords), w.coords)
        assert np.array_equal(np.concatenate(patches), w.read(np.arange(len(w))))
    assert {Path(p.output).name for p in parts} == {f"CMU-1-Small-Region.shard-{i:03d}-of-003.h5" for i in range(3)}


@pytest.mark.parametrize(
    ("stem", "expected"),
    [("patient_012_node_3", {"patient": "012", "node": "3", "centre": "0"}),
     ("patient_045_node_0", {"patient": "045", "node": "0", "centre": "2"}),
     ("CMU-1", {"patient": "", "node": "", "centre": ""})],
)
def test_identity_from_file_name(stem: str, expected: dict[str, str]) -> None:
    assert slide_identity(stem, MetadataConfig()) == expected


def test_synthetic_slide_mask_and_labels_match_ground_truth(tmp_path: Path, synth_slide) -> None:  # type: ignore[no-untyped-def]
    slide, xml, truth = synth_slide
    assert truth.hole_polygons, "the fixture slide should exercise _2 holes"
    cfg = make_config(patch_size=128, resolution={"mpp": 0.5}, sampling={"mode": "dense"},
                      labels={"drop_ambiguous": False}, filters={"min_tissue_fraction": 0.0, "white": None})
    result = extract_slide(ExtractRequest(slide, tmp_path, cfg, xml))
    with PatchStore(Path(result.output)) as store:
        coords, labels = store.coords, store.labels
        tissue = store.tissue_fraction
        tissue_thumb = store.mask("tissue") > 0
    # Tissue mask against the generator's truth: every 128 px block's tissue share.
    true_tissue = truth.tissue_mask(8)
    share = np.array([true_tissue[y // 8:(y + 128) // 8, x // 8:(x + 128) // 8].mean() for x, y in coords])
    assert np.abs(share - tissue).mean() < 0.05
    assert tissue_thumb.mean() == pytest.approx(true_tissue.mean(), abs=0.05)
    # Labels against the generator's tumour truth (holes excluded by construction).
    true_tumour = truth.tumour_mask(8)
    tumour_share = np.array([true_tumour[y // 8:(y + 128) // 8, x // 8:(x + 128) // 8].mean() for x, y in coords])
    clear = (tumour_share > 0.6) | (tumour_share < 0.4)  # away from the 0.5 threshold
    assert clear.sum() > 100 and labels.sum() > 10
    assert np.array_equal(labels[clear], (tumour_share[clear] >= 0.5).astype(np.uint8))


@pytest.mark.parametrize(("threads", "n", "chunk"), [(1, 37, 16), (2, 37, 16), (3, 100, 7), (2, 5, 16), (2, 0, 4)])
def test_ordered_map_yields_every_item_in_input_order(threads: int, n: int, chunk: int) -> None:
    items = np.arange(n).reshape(-1, 1) if n else np.empty((0, 1), np.int64)
    out = list(ordered_map(lambda v: (v * 2, None), items, threads, ahead=10, chunk=chunk))
    assert [int(p[0]) for p, _ in out] == [2 * i for i in range(n)]


class _Recorder:
    """An `ordered_map` function that records which items it was called on."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, v: np.ndarray) -> tuple[np.ndarray, str | None]:
        self.calls.append(int(v[0]))
        return v, None


def test_ordered_map_stops_reading_when_the_consumer_stops() -> None:
    fn = _Recorder()
    gen = ordered_map(fn, np.arange(10_000).reshape(-1, 1), 2, ahead=64, chunk=16)
    first = [int(next(gen)[0][0]) for _ in range(20)]
    gen.close()
    assert first == list(range(20))
    assert len(fn.calls) < 200  # bounded read-ahead, not the whole slide


def test_ordered_map_read_ahead_stays_near_ahead_with_many_threads() -> None:
    """Regression: chunks of 16 per thread let 8 threads read 128 patches ahead when `ahead` asked for 8."""
    import time

    fn = _Recorder()
    gen = ordered_map(fn, np.arange(1000).reshape(-1, 1), 8, ahead=8, chunk=16)
    next(gen)
    time.sleep(0.2)
    assert len(fn.calls) <= 9
    gen.close()


def test_reader_settings_do_not_change_a_stores_identity(tmp_path: Path) -> None:
    """Regression: reader.threads / reader.batch_size were part of the store's config hash, so a rerun with more
    threads (or a renamed reader key) refused finished stores as "finished with a different config"."""
    slow = make_config(patch_size=32, reader={"threads": 1, "batch_size": 8},
                       sampling={"mode": "random", "random": {"per_class": 20}})
    fast = make_config(patch_size=32, reader={"threads": 2, "batch_size": 64},
                       sampling={"mode": "random", "random": {"per_class": 20}})
    first = extract_slide(ExtractRequest(CMU, tmp_path / "a", slow))
    again = extract_slide(ExtractRequest(CMU, tmp_path / "a", fast))
    assert first.status == "done" and again.status == "skipped"
    other = extract_slide(ExtractRequest(CMU, tmp_path / "b", fast))
    with PatchStore(Path(first.output)) as a, PatchStore(Path(other.output)) as b:
        assert a.attrs["config_hash"] == b.attrs["config_hash"]
        assert np.array_equal(a.coords, b.coords)
        assert np.array_equal(a.read(np.arange(len(a))), b.read(np.arange(len(b))))


def test_stores_finished_by_the_previous_version_are_still_skipped(tmp_path: Path) -> None:
    """Regression: renaming reader.batch and taking reader out of the store hash changed every store's hash, so a
    rerun refused every store finished before ("finished with a different config")."""
    import h5py

    from layer1_patches.config import load_layer1_config
    from layer1_patches.extract import legacy_store_hash

    from .conftest import REPO

    # known answer: the config_hash CamNet 0.1.0 (commit 1120fb9) computed for this config
    old = load_layer1_config(REPO / "configs" / "layer1" / "random.yaml", ["reader.threads=3"])
    assert legacy_store_hash(old) == "5b7887be88f296f7"
    cfg = make_config(patch_size=32, sampling={"mode": "random", "random": {"per_class": 5}})
    first = extract_slide(ExtractRequest(CMU, tmp_path, cfg))
    with h5py.File(first.output, "r+") as f:
        f.attrs["config_hash"] = legacy_store_hash(cfg)  # as the previous version wrote it
    assert extract_slide(ExtractRequest(CMU, tmp_path, cfg)).status == "skipped"
    with h5py.File(first.output, "r+") as f:
        f.attrs["config_hash"] = "0123456789abcdef"  # any other config is still refused
    with pytest.raises(CamnetError, match="finished with a different config"):
        extract_slide(ExtractRequest(CMU, tmp_path, cfg))


# --- exact tumour fractions (issue 14, item 4) ------------------------------------------------------------

KEEP_ALL = {"min_tissue_fraction": 0.0, "white": None, "black": None}  # every grid position becomes a patch


def rectangles_xml(path: Path, rects: list[tuple[float, float, float, float]], group: str = "Tumor") -> Path:
    """An ASAP file of axis-aligned rectangles (x0, y0, x1, y1) in level-0 pixels."""
    body = "".join(
        f'<Annotation Name="r{i}" PartOfGroup="{group}"><Coordinates>'
        + "".join(f'<Coordinate Order="{k}" X="{x}" Y="{y}"/>'
                  for k, (x, y) in enumerate([(x0, y0), (x1, y0), (x1, y1), (x0, y1)]))
        + "</Coordinates></Annotation>" for i, (x0, y0, x1, y1) in enumerate(rects))
    path.write_text(f"<ASAP_Annotations><Annotations>{body}</Annotations></ASAP_Annotations>")
    return path


def rectangle_share(coords: np.ndarray, footprint: int, rects: list[tuple[float, float, float, float]]) -> np.ndarray:
    """By hand: the share of each square inside disjoint rectangles is the sum of overlap width x height / side^2."""
    r = np.array(rects, dtype=np.float64)
    x, y = coords[:, :1].astype(np.float64), coords[:, 1:].astype(np.float64)
    w = np.clip(np.minimum(x + footprint, r[:, 2]) - np.maximum(x, r[:, 0]), 0, None)
    h = np.clip(np.minimum(y + footprint, r[:, 3]) - np.maximum(y, r[:, 1]), 0, None)
    return (w * h).sum(axis=1) / footprint**2


def test_tumour_patches_have_tumour_fraction_at_least_the_threshold(
        tmp_path: Path, synth_slide: tuple[Path, Path, Any]) -> None:
    """Regression (issue 14): the tumour mask was rasterised at 16x, a pixel inside when its centre is. On this
    4096 px slide the pixels are exactly 16 px, so an edge 28-31.4 px into a 64 px patch (a true share of 0.44-0.49)
    filled the column [16, 32) and read as 32 / 64 = 0.5: stored and labelled tumour. Each rectangle covers two whole
    patches and cuts the third at 0.44-0.49."""
    slide = synth_slide[0]
    cuts = [0.44, 0.45, 0.46, 0.47, 0.48, 0.49] * 2
    left = [256.0 + 192 * (i % 6) + 64 * (i // 6) for i in range(len(cuts))]
    rects = [(x, 1024.0 + 256 * (i // 6), x + 128 + 64 * c, 1088.0 + 256 * (i // 6))
             for i, (x, c) in enumerate(zip(left, cuts, strict=True))]
    xml = rectangles_xml(tmp_path / "edges.xml", rects)
    cfg = make_config(patch_size=64, sampling={"mode": "dense"}, labels={"drop_ambiguous": False}, filters=KEEP_ALL)
    result = extract_slide(ExtractRequest(slide, tmp_path / "out", cfg, xml))
    with PatchStore(Path(result.output)) as store:
        coords, labels, stored = store.coords, store.labels, store.tumour_fraction
    truth = rectangle_share(coords, 64, rects)
    cut = (truth > 0.4) & (truth < 0.5)
    assert cut.sum() == len(cuts)  # every cut patch was extracted
    assert (truth[labels == 1] >= 0.5).all() and (labels[cut] == 0).all()
    assert labels.sum() == 2 * len(cuts)
    np.testing.assert_allclose(stored, truth, atol=1e-6)


def test_fractions_use_the_level0_footprint_of_a_pyramid_level(tmp_path: Path) -> None:
    """At pyramid level 1 (downsample 2.0005) a 32 px patch covers round(32 x 2.0005) = 64 level-0 pixels and the
    grid steps 64.016 level-0 pixels, so coordinates drift off multiples of 64: shares come from those squares."""
    slide = DATA / "tcga-cr-7395-01a-01-ts1.svs"
    rects = [(1000.5, 700.0, 1230.25, 900.75), (2500.0, 2000.25, 2620.0, 2031.0)]
    xml = rectangles_xml(tmp_path / "tcga.xml", rects)
    cfg = make_config(patch_size=32, resolution={"level": 1, "assume_mpp": 0.25}, sampling={"mode": "dense"},
                      labels={"drop_ambiguous": False}, filters=KEEP_ALL)
    result = extract_slide(ExtractRequest(slide, tmp_path / "out", cfg, xml))
    with PatchStore(Path(result.output)) as store:
        coords, stored, labels = store.coords, store.tumour_fraction, store.labels
        assert store.coords_attrs["patch_level"] == 1
    truth = rectangle_share(coords, 64, rects)
    assert coords[:, 0].max() % 64 != 0 and ((truth > 0) & (truth < 1)).sum() > 10
    np.testing.assert_allclose(stored, truth, atol=1e-6)
    assert np.array_equal(labels, (truth >= 0.5).astype(np.uint8))


def test_stores_with_raster_tumour_fractions_are_redone_not_skipped(tmp_path: Path, cmu_xml: Path) -> None:
    """Regression (issue 14): stores of annotated slides whose tumour fractions came from the 16x raster have wrong
    labels near annotation edges. They carry the hash of their config alone (or CamNet 0.1.0's); a rerun that
    skipped them would keep those labels, so it refuses them, saying why."""
    import h5py

    from layer1_patches.extract import legacy_store_hash, store_hash

    cfg = make_config(patch_size=32, sampling={"random": {"per_class": 5}})
    first = extract_slide(ExtractRequest(CMU, tmp_path, cfg, cmu_xml))
    # the store hash before issue 14 (commit 23e2999): the config's alone, as `store_hash` of an unannotated store
    # still is (pinned by test_stores_without_an_annotation_keep_their_hash)
    raster_era = store_hash(cfg, annotated=False)
    for written in (raster_era, legacy_store_hash(cfg)):
        with h5py.File(first.output, "r+") as f:
            f.attrs["config_hash"] = written
        with pytest.raises(CamnetError, match=r"tumour fractions came from the annotation rasterised at 16x, so labels "
                                              r"near annotation edges can be wrong; pass --overwrite to redo it"):
            extract_slide(ExtractRequest(CMU, tmp_path, cfg, cmu_xml))
    assert extract_slide(ExtractRequest(CMU, tmp_path, cfg, cmu_xml, overwrite=True)).status == "done"
    assert extract_slide(ExtractRequest(CMU, tmp_path, cfg, cmu_xml)).status == "skipped"


def test_stores_without_an_annotation_keep_their_hash() -> None:
    """Without an annotation every tumour fraction is 0 under either method: such stores are still skipped."""
    from layer1_patches.config import load_layer1_config
    from layer1_patches.extract import store_hash

    from .conftest import REPO

    cfg = load_layer1_config(REPO / "configs" / "layer1" / "random.yaml", ["reader.threads=3"])
    assert store_hash(cfg, annotated=False) == "d34e0ae9c4dbcd5f"  # known answer: what commit 23e2999 computed
    assert store_hash(cfg, annotated=True) != "d34e0ae9c4dbcd5f"


def test_a_store_made_without_the_annotation_is_not_skipped_by_a_run_with_it(tmp_path: Path, cmu_xml: Path) -> None:
    """Regression: the store hash did not say whether an annotation was given, so a store of all-normal labels made
    without one was skipped by a rerun with it (and the other way round)."""
    cfg = make_config(patch_size=32, sampling={"random": {"per_class": 5}})
    extract_slide(ExtractRequest(CMU, tmp_path / "a", cfg))
    with pytest.raises(CamnetError, match=r"finished without an annotation, this run has .*\.xml; pass --overwrite"):
        extract_slide(ExtractRequest(CMU, tmp_path / "a", cfg, cmu_xml))
    extract_slide(ExtractRequest(CMU, tmp_path / "b", cfg, cmu_xml))
    with pytest.raises(CamnetError, match=r"finished with annotation .*\.xml, this run has none; pass --overwrite"):
        extract_slide(ExtractRequest(CMU, tmp_path / "b", cfg))
