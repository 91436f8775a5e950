"""`explain` end to end: check inputs, select patches, maps + sanity check, concepts + RCV, outputs.

Every user error (config, unknown layer, missing model, empty selection) is raised before the first map
is computed. Ranks split the selected patches round-robin and the RCV patches in contiguous global batches (so
RCV scores do not depend on the number of ranks); rank 0 gathers and writes all outputs under OUT
(`summary.json` last, as the completion marker):
  maps/<id>.npz, panels/<id>.png   per selected patch
  sanity.json                      rank correlations trained vs randomised weights, flagged methods
  concepts.csv                     concept measures of the RCV patches
  rcv_scores.csv / rcv_scores.json R^2, TCAV, Br, baselines, p-values per layer and concept
  r2_by_layer.png, tcav_vs_random.png
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layer1_patches.shared.errors import CamnetError
from layer1_patches.shared.typedconfig import config_hash, to_dict
from layer3_inference.explain import concepts, dist, plots, report
from layer3_inference.explain import select as sel
from layer3_inference.explain.config import CONCEPTS, ExplainConfig
from layer3_inference.grid import shard_batches

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    cfg: ExplainConfig
    model_dir: Path
    out: Path
    stores: list[Path]
    heatmap: Path | None = None
    masks: Path | None = None


def read_masks(path: Path, n: int) -> np.ndarray:
    """Supplied nuclei label masks (N, H, W) aligned with the rows of the first store."""
    import h5py

    try:
        if path.suffix == ".npz":
            with np.load(path) as z:
                masks = np.asarray(z["masks"])
        else:
            with h5py.File(path, "r") as f:
                masks = np.asarray(f["masks"][()])
    except (OSError, KeyError) as err:
        raise CamnetError(f"concepts.masks {path}: cannot read a 'masks' array ({err})") from None
    if masks.ndim != 3 or len(masks) != n:
        raise CamnetError(f"concepts.masks {path}: shape {masks.shape}, expected ({n}, H, W) for the first store")
    return masks


class Explainer:
    """The loaded model and its derived views, validated against the config."""

    def __init__(self, req: Request) -> None:
        from layer3_inference.explain import probe
        from layer3_inference.model import load_model, read_spec

        self.req, cfg = req, req.cfg
        self.spec = read_spec(req.model_dir)
        self.model = load_model(self.spec)
        self.flat = probe.flatten(self.model)
        self.layer = (probe.check_layer(self.flat, cfg.gradcam.layer, "gradcam.layer") if cfg.gradcam.layer
                      else probe.default_gradcam_layer(self.model, self.flat))
        self.rcv_layers = ([probe.check_layer(self.flat, n, f"rcv.layers[{i}]") for i, n in enumerate(cfg.rcv.layers)]
                           if cfg.rcv.layers else probe.auto_layers(self.flat, cfg.rcv.auto_layers))
        self.patch_size = int(self.model.inputs[0].shape[1])

    def probabilities(self, patches: np.ndarray) -> np.ndarray:
        from layer3_inference.explain.probe import predict_logits

        return np.asarray(1 / (1 + np.exp(-predict_logits(self.flat, patches, self.req.cfg.batch_size))))

    def maps(self, patches: np.ndarray, randomised: bool) -> dict[str, np.ndarray]:
        from layer3_inference.explain import gradcam, lime_explain, probe

        cfg = self.req.cfg
        model, flat = self.model, self.flat
        methods = cfg.sanity.methods if randomised else ["gradcam", "gradcam_pp", "lime"]
        if randomised:
            model = probe.randomised_copy(self.model, cfg.sanity.seed)
            flat = probe.flatten(model)
        out: dict[str, np.ndarray] = {}
        if cfg.gradcam.enabled and {"gradcam", "gradcam_pp"} & set(methods):
            cams = gradcam.cams(flat, patches, self.layer, cfg.gradcam.score)
            out.update({k: v for k, v in cams.items() if k in methods})
        if cfg.lime.enabled and "lime" in methods:
            out["lime"] = lime_explain.lime_maps(flat if cfg.lime.target == "logit" else model, patches, cfg.lime)
        return out


def _select(ex: Explainer, stores: list[Any], world: dist.World) -> sel.Selection:
    cfg, req = ex.req.cfg, ex.req
    if req.heatmap is not None:
        return sel.select_from_heatmaps(sel.read_heatmaps(req.heatmap), cfg.select.k, stores,
                                        sel.slide_reader(ex.patch_size))

    def score(pairs: list[tuple[int, int]]) -> np.ndarray:
        mine = world.share(len(pairs))
        probs = np.concatenate([ex.probabilities(np.concatenate([stores[s].read([i]) for s, i in block]))
                                for block in _blocks([pairs[j] for j in mine], cfg.batch_size)] or [np.zeros(0)])
        return np.asarray(dist.merge_shares(world.allgather(list(probs)), len(pairs), world.size), np.float64)

    return sel.select_from_stores(stores, cfg.select, score)


def _blocks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _per_patch(ex: Explainer, selection: sel.Selection, world: dist.World) -> list[dict[str, Any]] | None:
    mine = world.share(len(selection))
    patches = selection.rgb[mine]
    trained = ex.maps(patches, randomised=False)
    random = ex.maps(patches, randomised=True) if ex.req.cfg.sanity.enabled else {}
    rows = [{"trained": {k: v[j] for k, v in trained.items()}, "random": {k: v[j] for k, v in random.items()}}
            for j in range(len(mine))]
    parts = world.gather(rows)
    return None if parts is None else dist.merge_shares(parts, len(selection), world.size)


def _rcv_inputs(ex: Explainer, stores: list[Any], world: dist.World,
                ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """(concept matrix, labels, per-layer data) on rank 0; None elsewhere."""
    from layer3_inference.explain import probe, rcv

    cfg = ex.req.cfg
    pairs = sel.random_per_class(stores, cfg.rcv.per_class, cfg.rcv.seed)
    labels = np.array([int(stores[s].labels[i]) for s, i in pairs])
    if len(np.unique(labels)) < 2 or not (labels == 1).any():
        raise CamnetError("rcv needs tumour and normal patches in the stores (labels 1 and 0)")
    # --masks wins over the config's concepts.masks; the config key was once ignored
    masks_path = ex.req.masks or (Path(cfg.concepts.masks) if cfg.concepts.masks else None)
    if masks_path is not None and len(stores) != 1:
        raise CamnetError(f"concepts.masks {masks_path} goes with a single store (its rows are the masks' rows), "
                          f"got {len(stores)} stores")
    masks = read_masks(masks_path, len(stores[0])) if masks_path else None
    # Contiguous shares cut at global batch boundaries (as heatmaps do): each patch goes through the network in
    # the same batch at any number of ranks, so the activations, and the RCV scores, do not depend on it (a
    # convolution's last bits can depend on the batch it runs in).
    lo, hi = shard_batches(len(pairs), cfg.rcv.batch_size, world.rank, world.size)
    mine = pairs[lo:hi]
    patches = sel.read_pairs(stores, mine, ex.patch_size)
    mine_masks = None
    if masks is not None:
        mine_masks = masks[[i for _, i in mine]]
    values = concepts.measure_all(patches, ex.req.cfg.concepts, mine_masks)
    taps = probe.tap_model(ex.flat, ex.rcv_layers)
    data, _ = rcv.activations(taps, ex.rcv_layers, patches, cfg.rcv.batch_size)
    part = (values, {k: (v.pooled, v.grad) for k, v in data.items()})
    parts = world.gather(part)
    if parts is None:
        return None
    merged_values = np.concatenate([p[0] for p in parts])  # rank order is pair order: the shares are contiguous
    merged = {name: rcv.LayerData(np.concatenate([p[1][name][0] for p in parts]),
                                  np.concatenate([p[1][name][1] for p in parts]))
              for name in ex.rcv_layers}
    return merged_values, labels, {"data": merged, "pairs": pairs}


def run(req: Request, world: dist.World | None = None) -> dict[str, Any]:
    world = world or dist.init()
    cfg = req.cfg
    if not cfg.rcv.enabled and not (cfg.gradcam.enabled or cfg.lime.enabled):
        raise CamnetError("nothing to do: gradcam, lime and rcv are all disabled")
    if cfg.rcv.enabled and not req.stores:
        raise CamnetError("rcv needs labelled patches: give --store (or set rcv.enabled=false)")
    start = time.perf_counter()
    ex = Explainer(req)
    stores = sel.open_stores(req.stores)
    try:
        return _run(ex, stores, world, start)
    finally:
        for store in stores:
            store.close()


def _run(ex: Explainer, stores: list[Any], world: dist.World, start: float) -> dict[str, Any]:
    from layer3_inference.explain import rcv, sanity

    cfg, out = ex.req.cfg, ex.req.out
    want_maps = cfg.gradcam.enabled or cfg.lime.enabled
    selection = _select(ex, stores, world) if want_maps else None
    if world.is_chief:
        for sub in ("", "maps", "panels"):
            (out / sub).mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"model": str(ex.req.model_dir), "gradcam_layer": ex.layer,
                               "rcv_layers": ex.rcv_layers, "config": to_dict(cfg),
                               "config_hash": config_hash(cfg), "ranks": world.size, "rank": world.rank}
    if selection is not None:
        rows = _per_patch(ex, selection, world)
        if rows is not None:
            prob = selection.prob if selection.prob is not None else ex.probabilities(selection.rgb)
            for j, (pid, row) in enumerate(zip(selection.ids(), rows, strict=True)):
                meta = {"source": selection.source[j], "row": int(selection.row[j]),
                        "x": int(selection.coords[j][0]), "y": int(selection.coords[j][1]),
                        "label": int(selection.label[j]), "probability": float(prob[j])}
                if cfg.output.maps_npz:
                    rand = {f"random_{k}": v for k, v in row["random"].items()}
                    report.write_maps(out / "maps" / f"{pid}.npz", selection.rgb[j], {**row["trained"], **rand}, meta)
                if cfg.output.panels:
                    plots.panel(out / "panels" / f"{pid}.png", selection.rgb[j], row["trained"],
                                f"{pid}  label {meta['label']}  p(tumour) {meta['probability']:.3f}", cfg.output.dpi)
            summary["patches"] = selection.ids()
            if cfg.sanity.enabled:
                result = sanity.compare({k: np.stack([r["trained"][k] for r in rows]) for k in rows[0]["random"]},
                                        {k: np.stack([r["random"][k] for r in rows]) for k in rows[0]["random"]},
                                        cfg.sanity.max_rank_correlation)
                report.write_json(out / "sanity.json", result)
                summary["sanity"] = {k: {"median": v["median"], "flagged": v["flagged"]} for k, v in result.items()}
    if cfg.rcv.enabled:
        inputs = _rcv_inputs(ex, stores, world)
        if inputs is not None:
            values, labels, extra = inputs
            names = list(cfg.rcv.concepts)
            cols = [CONCEPTS.index(n) for n in names]
            scores = rcv.score_all(extra["data"], values[:, cols], names, labels, cfg.rcv)
            table = [{"source": str(stores[s].path), "row": i, "label": int(lab),
                      **dict(zip(CONCEPTS, map(float, v), strict=True))}
                     for (s, i), lab, v in zip(extra["pairs"], labels, values, strict=True)]
            report.write_csv(out / "concepts.csv", table)
            report.write_csv(out / "rcv_scores.csv", scores)
            report.write_json(out / "rcv_scores.json", scores)
            if cfg.output.plots:
                plots.r2_by_layer(out / "r2_by_layer.png", scores, cfg.output.dpi)
                plots.tcav_vs_random(out / "tcav_vs_random.png", scores, cfg.output.dpi)
            summary["rcv"] = [{k: r.get(k) for k in ("layer", "concept", "r2_heldout", "tcav", "p_value",
                                                     "significant", "br")} for r in scores]
    summary["seconds"] = time.perf_counter() - start
    if world.is_chief:
        report.write_json(out / "summary.json", summary)
    world.barrier()
    return summary
