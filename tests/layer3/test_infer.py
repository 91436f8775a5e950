"""Batched inference with background readers, and one slide end to end in-process (one rank)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from PIL import Image

from layer1_patches.reading import OpenSlideSource, PatchReader
from layer1_patches.shared.errors import CamnetError
from layer1_patches.slide import Slide, WorkingResolution
from layer3_inference.config import ReaderConfig, load_heatmap_config
from layer3_inference.infer import HeatmapRequest, ModelFn, Ranks, compile_model, heatmap_slide, predict
from layer3_inference.model import ModelSpec, load_model, read_spec

from .conftest import DATA, darkness_probability, heatmap_config


@pytest.fixture(scope="module")
def model_fn(tiny_run: Path):  # type: ignore[no-untyped-def]
    return compile_model(load_model(read_spec(tiny_run)), 32)


@pytest.mark.parametrize(("threads", "batch"), [(1, 7), (3, 16)])
def test_predict_matches_the_model_on_direct_reads(model_fn, synth_slides: list[Path], threads: int,  # type: ignore[no-untyped-def]
                                                   batch: int) -> None:
    coords = np.array([[x, y] for y in range(512, 1536, 96) for x in range(512, 1536, 96)])
    res = WorkingResolution(0, 1.0, 1.0, 0.5, 20.0)
    with Slide(synth_slides[0]) as slide:
        reader = OpenSlideSource(PatchReader(slide, res, 32, []))
        stats: dict[str, float] = {}
        probs = predict(model_fn, reader, coords, ReaderConfig(threads, batch, prefetch=2), stats)
        direct = np.stack([slide.read_rgb(int(x), int(y), 0, 32, 32) for x, y in coords])
    assert probs.shape == (len(coords),)
    assert np.allclose(probs, darkness_probability(direct), atol=1e-5)
    assert stats["model_s"] > 0 and "wait_s" in stats


@pytest.mark.parametrize("threads", [1, 2])
def test_predict_from_tiles_cut_in_place_and_its_colour_are_those_of_direct_reads(  # type: ignore[no-untyped-def]
        model_fn, synth_slides: list[Path], threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17: the tile source cuts each patch into its row of the batch (checked by a spy), and the colour
    statistics are taken on the reading thread. OpenSlide's direct reads are the truth: the same probabilities, and
    the colour counts of exactly the patches the model saw (batch 7: the last batch's padding rows not counted)."""
    from layer1_patches import reading
    from layer1_patches.colour import ColourAccumulator
    from layer1_patches.reading import TileSource, open_source

    in_batch: list[bool] = []
    real_cut = reading.cut_into

    def cut(*args: Any) -> np.ndarray:
        in_batch.append(args[-1].base is not None and args[-1].base.shape[0] == 7)
        return real_cut(*args)

    monkeypatch.setattr(reading, "cut_into", cut)

    coords = np.array([[x, y] for y in range(512, 1536, 96) for x in range(512, 1536, 96)])[:-3]  # 118 patches
    res = WorkingResolution(0, 1.0, 1.0, 0.5, 20.0)
    with Slide(synth_slides[0]) as slide:
        source = open_source(slide, res, 32, [])
        assert isinstance(source, TileSource)
        colour = ColourAccumulator()
        probs = predict(model_fn, source, coords, ReaderConfig(threads, 7, prefetch=2), {}, colour)
        direct = np.stack([slide.read_rgb(int(x), int(y), 0, 32, 32) for x, y in coords])
    expected = ColourAccumulator()
    expected.add(direct)  # 32 px patches: every pixel is counted (COLOUR_SIDE)
    assert len(in_batch) == len(coords) and all(in_batch)
    assert colour.patches == len(coords) and expected.pixels > 0
    np.testing.assert_array_equal(colour.counts, expected.counts)
    np.testing.assert_allclose(probs, darkness_probability(direct), atol=1e-5)


def test_reader_errors_surface_in_the_caller(model_fn) -> None:  # type: ignore[no-untyped-def]
    with Slide(DATA / "unreadable.svs") as slide:
        reader = OpenSlideSource(PatchReader(slide, WorkingResolution(0, 1.0, 1.0, 0.5, 20.0), 32, []))
        with pytest.raises(CamnetError, match="unreadable.svs: cannot read region"):
            predict(model_fn, reader, np.zeros((40, 2), np.int64), ReaderConfig(2, 8, prefetch=2), {})


@pytest.fixture(scope="module")
def one_slide(tiny_run: Path, synth_slides: list[Path], model_fn, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("heatmap_out")
    cfg = load_heatmap_config(heatmap_config(out / "cfg.yaml", **{"grid.stride": 24}))
    req = HeatmapRequest(synth_slides[0], out, cfg)
    result = heatmap_slide(req, read_spec(tiny_run), model_fn, Ranks())
    return req, result, out / synth_slides[0].stem


def test_outputs_are_complete_and_atomic(one_slide) -> None:  # type: ignore[no-untyped-def]
    req, result, final = one_slide
    assert result.status == "done" and result.patches > 100
    names = {p.name for p in final.iterdir()}
    assert {"probabilities.h5", "grid.npy", "heatmap.png", "overlay.png", "summary.json",
            f"{final.name}.geojson"} <= names
    assert not list(final.parent.glob(".*.partial"))
    summary = json.loads((final / "summary.json").read_text())
    assert summary["patches"] == result.patches and summary["tissue_area_mm2"] > 0
    assert 0 <= summary["slide_score"] <= 1 and set(summary["times"]) >= {"infer_s", "model_s", "wait_s"}


def test_background_is_never_scored(one_slide) -> None:  # type: ignore[no-untyped-def]
    _, _, final = one_slide
    with h5py.File(final / "probabilities.h5") as f:
        grid, tissue, prob_map = f["grid"][()], f["tissue"][()], f["map"][()]
        assert f.attrs["footprint"] == 32 and f.attrs["step"] == 24.0
    assert np.isnan(grid).sum() > 0
    assert np.array_equal(np.load(final / "grid.npy"), grid, equal_nan=True)
    # map pixels outside the detected tissue carry no value at all, in the arrays and in the PNG overlay
    inside = np.kron(tissue, np.ones((2, 2), bool))[:prob_map.shape[0], :prob_map.shape[1]]
    assert np.isnan(prob_map[~inside]).all()
    overlay = np.asarray(Image.open(final / "overlay.png"))
    assert overlay.shape[2] == 4 and overlay[0, 0, 3] == 0 and overlay[..., 3].max() > 0
    # and the slide's empty corners (glass) have no prediction
    assert np.isnan(grid[0, 0]) and np.isnan(grid[-1, -1])


def test_geojson_is_valid_and_in_level0_pixels(one_slide) -> None:  # type: ignore[no-untyped-def]
    _, result, final = one_slide
    data = json.loads((final / f"{final.name}.geojson").read_text())
    assert data["type"] == "FeatureCollection"
    with h5py.File(final / "probabilities.h5") as f:
        coords, prob = f["coords"][()], f["prob"][()]
    tiles = [ft for ft in data["features"] if ft["properties"]["objectType"] == "detection"]
    regions = [ft for ft in data["features"] if ft["properties"]["objectType"] == "annotation"]
    assert len(tiles) == result.patches and regions
    for ft in data["features"]:
        assert ft["type"] == "Feature" and ft["geometry"]["type"] == "Polygon"
        for ring in ft["geometry"]["coordinates"]:
            assert len(ring) >= 4 and ring[0] == ring[-1]
            xy = np.asarray(ring)
            assert (xy >= 0).all() and (xy <= 2048).all()
    first = tiles[0]
    x, y = coords[0]
    assert first["geometry"]["coordinates"][0][:3] == [[x, y], [x + 32, y], [x + 32, y + 32]]
    assert first["properties"]["measurements"]["tumor_probability"] == pytest.approx(prob[0], abs=1e-6)


def test_finished_slides_are_skipped_and_config_changes_refused(one_slide, tiny_run: Path,  # type: ignore[no-untyped-def]
                                                                model_fn, tmp_path: Path) -> None:
    req, _, final = one_slide
    before = (final / "summary.json").stat().st_mtime_ns
    again = heatmap_slide(req, read_spec(tiny_run), model_fn, Ranks())
    assert again.status == "skipped" and (final / "summary.json").stat().st_mtime_ns == before
    other = load_heatmap_config(heatmap_config(tmp_path / "c.yaml", **{"grid.stride": 32}))
    with pytest.raises(CamnetError, match="different config"):
        heatmap_slide(HeatmapRequest(req.slide, req.out_dir, other), read_spec(tiny_run), model_fn, Ranks())


def test_finished_folder_missing_a_listed_file_is_redone_not_skipped(tiny_run: Path, synth_slides: list[Path],  # type: ignore[no-untyped-def]
                                                                     model_fn, tmp_path: Path) -> None:
    # Regression (issue 13): a folder whose summary.json existed was "finished" even when heatmap.png was missing
    # (two writers had interleaved); the summary now lists every file, and all must exist.
    cfg = load_heatmap_config(heatmap_config(tmp_path / "cfg.yaml"))
    req = HeatmapRequest(synth_slides[1], tmp_path / "out", cfg)
    assert heatmap_slide(req, read_spec(tiny_run), model_fn, Ranks()).status == "done"
    final = tmp_path / "out" / synth_slides[1].stem
    listed = json.loads((final / "summary.json").read_text())["files"]
    assert sorted(listed) == sorted(p.name for p in final.iterdir()) and "heatmap.png" in listed
    (final / "heatmap.png").unlink()
    again = heatmap_slide(req, read_spec(tiny_run), model_fn, Ranks())
    assert again.status == "done" and (final / "heatmap.png").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [final.name]  # no lock, no partial left


def test_model_path_spelled_relative_or_absolute_is_one_model(tiny_run: Path, synth_slides: list[Path],  # type: ignore[no-untyped-def]
                                                               model_fn, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression (issue 13): resuming with `--model run` after `--model /abs/run` was refused as "finished with a
    # different config or model"; identity is the resolved path and the model file's content hash.
    cfg = load_heatmap_config(heatmap_config(tmp_path / "cfg.yaml"))
    req = HeatmapRequest(synth_slides[1], tmp_path / "out", cfg)
    assert heatmap_slide(req, read_spec(tiny_run), model_fn, Ranks()).status == "done"
    monkeypatch.chdir(tiny_run.parent)
    relative = read_spec(Path(tiny_run.name))
    assert not relative.model_file.is_absolute()
    assert heatmap_slide(req, relative, model_fn, Ranks()).status == "skipped"
    assert json.loads((tmp_path / "out" / synth_slides[1].stem / "summary.json").read_text())["model"][
        "model_sha256"] == relative.model_sha256


def test_model_re_exported_into_the_same_run_dir_is_another_model(tiny_run: Path, synth_slides: list[Path],  # type: ignore[no-untyped-def]
                                                                   model_fn, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = load_heatmap_config(heatmap_config(tmp_path / "cfg.yaml"))
    req = HeatmapRequest(synth_slides[1], tmp_path / "out", cfg)
    assert heatmap_slide(req, read_spec(run), model_fn, Ranks()).status == "done"
    with open(run / "export" / "model.keras", "ab") as f:
        f.write(b"\0")  # same path, same sidecar, other bytes
    with pytest.raises(CamnetError, match="different config or model"):
        heatmap_slide(req, read_spec(run), model_fn, Ranks())


def test_finished_heatmap_of_another_slide_with_the_same_name_is_an_error_not_a_skip(  # type: ignore[no-untyped-def]
        tiny_run: Path, synth_slides: list[Path], model_fn, tmp_path: Path) -> None:
    import shutil

    cfg = load_heatmap_config(heatmap_config(tmp_path / "cfg.yaml"))
    assert heatmap_slide(HeatmapRequest(synth_slides[1], tmp_path / "out", cfg), read_spec(tiny_run), model_fn,
                         Ranks()).status == "done"
    twin = tmp_path / "b" / synth_slides[1].name
    twin.parent.mkdir()
    shutil.copy(synth_slides[1], twin)
    with pytest.raises(CamnetError, match=f"finished from slide .*, not {twin}"):
        heatmap_slide(HeatmapRequest(twin, tmp_path / "out", cfg), read_spec(tiny_run), model_fn, Ranks())


def test_second_writer_of_a_heatmap_is_told_who_holds_it(tiny_run: Path, synth_slides: list[Path],  # type: ignore[no-untyped-def]
                                                         model_fn, tmp_path: Path) -> None:
    import os
    import socket

    from layer1_patches.shared.locks import OutputBusy

    out = tmp_path / "out"
    out.mkdir()
    lock = out / f".{synth_slides[1].stem}.lock"
    holder = {"host": socket.gethostname().split(".")[0], "pid": os.getppid(), "job": "77", "time": 0}
    lock.write_text(json.dumps(holder))  # a live process on this host (our parent) holds it
    cfg = load_heatmap_config(heatmap_config(tmp_path / "cfg.yaml"))
    with pytest.raises(OutputBusy, match=f"being written by .*/pid {os.getppid()}, SLURM job 77"):
        heatmap_slide(HeatmapRequest(synth_slides[1], out, cfg), read_spec(tiny_run), model_fn, Ranks())
    assert sorted(p.name for p in out.iterdir()) == [lock.name]  # nothing written, the holder's lock kept


def test_heatmaps_finished_by_the_previous_version_are_still_skipped(tiny_run: Path, synth_slides: list[Path],  # type: ignore[no-untyped-def]
                                                                     model_fn, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # Regression (review of issue 13): adding the model's content hash to its identity changed every run hash,
    # so each slide finished by CamNet 0.1.0 was refused as "finished with a different config or model".
    import hashlib

    from layer1_patches.shared.typedconfig import data_hash, to_dict

    cfg = load_heatmap_config(heatmap_config(tmp_path / "cfg.yaml"))
    spec = read_spec(tiny_run)
    req = HeatmapRequest(synth_slides[1], tmp_path / "out", cfg)
    assert heatmap_slide(req, spec, model_fn, Ranks()).status == "done"
    path = tmp_path / "out" / synth_slides[1].stem / "summary.json"
    summary = json.loads(path.read_text())
    old_model = {"run_dir": str(spec.run_dir.resolve()), "model_file": str(spec.model_file), "backbone": spec.backbone,
                 "patch_size": spec.patch_size, "working_mpp": spec.working_mpp, "level": spec.level,
                 "threshold": spec.threshold, "config_hash": spec.config_hash}  # 0.1.0's ModelSpec.identity
    old_config = {k: v for k, v in to_dict(cfg).items() if k != "warnings"}  # 0.1.0's config had no warnings
    del old_config["match"]["mpp_table"]  # nor an mpp table (issue 15)
    canonical = json.dumps({"config": data_hash(old_config), "model": old_model}, sort_keys=True)
    summary.update(model=old_model, run_hash=hashlib.sha256(canonical.encode()).hexdigest()[:16])
    for key in ("files", "colour", "colour_shift", "tumour_share", "warnings"):  # keys 0.1.0 did not write
        del summary[key]
    path.write_text(json.dumps(summary))
    capsys.readouterr()
    assert heatmap_slide(req, spec, model_fn, Ranks()).status == "skipped"
    # skipped, but not silently: its colour and tumour share were never checked
    assert "without the colour and tumour-share checks" in capsys.readouterr().err
    other = load_heatmap_config(heatmap_config(tmp_path / "c2.yaml", **{"grid.stride": 24}))
    with pytest.raises(CamnetError, match="different config or model"):
        heatmap_slide(HeatmapRequest(req.slide, req.out_dir, other), spec, model_fn, Ranks())


# --- issue 14, item 5: warnings when the model meets tissue unlike its training data ---

TCGA = DATA / "tcga-cr-7395-01a-01-ts1.svs"  # real H&E, another scanner and stain; no mpp in its metadata


@pytest.fixture(scope="module")
def colour_model(synthetic_colour_run: Path) -> tuple[ModelSpec, ModelFn]:
    spec = read_spec(synthetic_colour_run)
    return spec, compile_model(load_model(spec), spec.patch_size)


def _summary(out: Path, slide: Path) -> dict[str, Any]:
    return json.loads((out / slide.stem / "summary.json").read_text())


def test_real_he_slide_unlike_synthetic_training_is_warned(colour_model: tuple[ModelSpec, ModelFn], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 14: on a real H&E slide a model trained on synthetic slides called 98.7 % of patches tumour, with no
    # remark. The TCGA slide's tissue is bluer and less red than the synthetic stain (measured shift 1.08 training
    # standard deviations, default limit 0.7); the darkness model calls its dark tissue tumour (share 0.69 > 0.5).
    spec, fn = colour_model
    cfg = load_heatmap_config(heatmap_config(tmp_path / "c.yaml", **{"match.assume_mpp": 0.25}))
    result = heatmap_slide(HeatmapRequest(TCGA, tmp_path / "out", cfg), spec, fn, Ranks())
    assert result.status == "done" and result.warnings == ["colour_shift", "tumour_share"]
    summary = _summary(tmp_path / "out", TCGA)
    assert [w["code"] for w in summary["warnings"]] == ["colour_shift", "tumour_share"]
    assert all(w["split"] is None and w["message"] for w in summary["warnings"])
    assert summary["colour_shift"] > 0.7 and summary["tumour_share"] > 0.5
    assert summary["colour"]["patches"] == summary["patches"] and summary["colour"]["pixels"] > 0
    err = capsys.readouterr().err.splitlines()
    lines = [line for line in err if line.startswith("warning: ")]
    assert lines == [f"warning: {TCGA.stem}: {w['message']}" for w in summary["warnings"]]


def test_synthetic_slide_like_the_training_slides_is_not_warned(colour_model: tuple[ModelSpec, ModelFn],
                                                                synth_slides: list[Path],
                                                                tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    # training colour from synthetic slide 0; slide 1 is another seed of the same generator (measured shift 0.02)
    spec, fn = colour_model
    cfg = load_heatmap_config(heatmap_config(tmp_path / "c.yaml"))
    result = heatmap_slide(HeatmapRequest(synth_slides[1], tmp_path / "out", cfg), spec, fn, Ranks())
    summary = _summary(tmp_path / "out", synth_slides[1])
    assert result.status == "done" and summary["warnings"] == [] and result.warnings == []
    assert 0 <= summary["colour_shift"] < 0.7 and summary["tumour_share"] < 0.5
    assert "warning:" not in capsys.readouterr().err


def test_model_without_training_colour_warns_once_and_still_finishes(tiny_run: Path, model_fn: ModelFn,
                                                                      synth_slides: list[Path], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_heatmap_config(heatmap_config(tmp_path / "c.yaml", **{"grid.stride": 24}))
    result = heatmap_slide(HeatmapRequest(synth_slides[0], tmp_path / "out", cfg), read_spec(tiny_run), model_fn,
                           Ranks())
    summary = _summary(tmp_path / "out", synth_slides[0])
    assert result.status == "done" and [w["code"] for w in summary["warnings"]] == ["no_training_colour"]
    assert summary["colour_shift"] is None and summary["colour"]["pixels"] > 0
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")] == [
        f"warning: {synth_slides[0].stem}: {summary['warnings'][0]['message']}"]
    # a rerun skips the finished slide and says the same again
    again = heatmap_slide(HeatmapRequest(synth_slides[0], tmp_path / "out", cfg), read_spec(tiny_run), model_fn,
                          Ranks())
    assert again.status == "skipped" and again.warnings == ["no_training_colour"]
    assert f"warning: {synth_slides[0].stem}: " in capsys.readouterr().err


def test_warning_limits_are_config_keys_and_null_switches_a_check_off(colour_model: tuple[ModelSpec, ModelFn],
                                                                      tmp_path: Path) -> None:
    spec, fn = colour_model
    cfg = load_heatmap_config(heatmap_config(tmp_path / "c.yaml", **{
        "match.assume_mpp": 0.25, "warnings.max_colour_shift": None, "warnings.max_tumour_share": 1.0}))
    assert heatmap_slide(HeatmapRequest(TCGA, tmp_path / "out", cfg), spec, fn, Ranks()).warnings == []
    summary = _summary(tmp_path / "out", TCGA)
    assert summary["warnings"] == [] and summary["colour_shift"] > 0.7  # still measured, not judged


def test_colour_of_two_ranks_is_the_colour_of_one(colour_model: tuple[ModelSpec, ModelFn], synth_slides: list[Path],
                                                  tmp_path: Path) -> None:
    # each rank accumulates its own share of the grid; rank 0's summary must hold both shares, merged
    import threading

    spec, fn = colour_model
    cfg = load_heatmap_config(heatmap_config(tmp_path / "c.yaml", **{"reader.batch_size": 8}))
    one = HeatmapRequest(synth_slides[1], tmp_path / "one", cfg)
    assert heatmap_slide(one, spec, fn, Ranks()).status == "done"
    barrier, slots = threading.Barrier(2), list[Any]([None, None])

    def gather(rank: int) -> Callable[[Any], list[Any]]:
        def run(obj: Any) -> list[Any]:
            slots[rank] = obj
            barrier.wait()
            out = list(slots)
            barrier.wait()  # nobody overwrites a slot before both have read
            return out
        return run

    two = HeatmapRequest(synth_slides[1], tmp_path / "two", cfg)
    threads = [threading.Thread(target=heatmap_slide, args=(two, spec, fn, Ranks(r, 2, gather(r)))) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    a, b = _summary(tmp_path / "one", synth_slides[1]), _summary(tmp_path / "two", synth_slides[1])
    assert b["ranks"] == 2 and a["colour"] == b["colour"] and a["tumour_share"] == b["tumour_share"]


def test_configs_from_before_the_warnings_section_keep_their_run_hash(tiny_run: Path, tmp_path: Path) -> None:
    # A finished heatmap is skipped only when its run hash matches: had the new `warnings` section entered the
    # hash, every heatmap finished before it would be refused as "finished with a different config".
    from layer1_patches.shared.typedconfig import data_hash, to_dict
    from layer3_inference.infer import run_hash

    spec = read_spec(tiny_run)
    cfg = load_heatmap_config(heatmap_config(tmp_path / "c.yaml"))
    before = {k: v for k, v in to_dict(cfg).items() if k != "warnings"}  # the config as the previous version saw it
    del before["match"]["mpp_table"]  # newer still (issue 15)
    canonical = json.dumps({"config": data_hash(before), "model": spec.identity()}, sort_keys=True)
    assert run_hash(cfg, spec) == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    stricter = load_heatmap_config(heatmap_config(tmp_path / "s.yaml", **{"warnings.max_tumour_share": 0.2}))
    assert run_hash(stricter, spec) != run_hash(cfg, spec)  # other limits: another summary, not a skip


def test_mpp_table_row_serves_a_slide_without_mpp(colour_model: tuple[ModelSpec, ModelFn], tmp_path: Path) -> None:
    """Issue 15: a scanner that records no mpp needed one cohort-wide `assume_mpp`; a per-slide row does the same
    job, and the heatmap equals the one made with that value assumed."""
    spec, fn = colour_model
    table = tmp_path / "mpp.csv"
    table.write_text(f"slide,mpp\n{TCGA.name},0.25\n")
    by_table = load_heatmap_config(heatmap_config(tmp_path / "t.yaml", **{"match.mpp_table": str(table)}))
    assumed = load_heatmap_config(heatmap_config(tmp_path / "a.yaml", **{"match.assume_mpp": 0.25}))
    for name, cfg in (("table", by_table), ("assumed", assumed)):
        assert heatmap_slide(HeatmapRequest(TCGA, tmp_path / name, cfg), spec, fn, Ranks()).status == "done"
    grids = [np.load(tmp_path / name / TCGA.stem / "grid.npy") for name in ("table", "assumed")]
    np.testing.assert_array_equal(grids[0], grids[1])
    table.write_text("slide,mpp\nsomething-else.svs,0.25\n")
    with pytest.raises(CamnetError, match=f"slide {TCGA}: no mpp in its metadata"):
        heatmap_slide(HeatmapRequest(TCGA, tmp_path / "unlisted", by_table), spec, fn, Ranks())
