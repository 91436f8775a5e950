"""`explain` end to end: check inputs, select patches, maps + sanity check, concepts + RCV, outputs.

Every user error (config, unknown layer, missing model, empty selection) is raised before the first map
is computed. Ranks split the selected patches round-robin and the RCV patches in contiguous global batches (so
RCV scores do not depend on the number of ranks); rank 0 gathers and writes all outputs under OUT
(`summary.json` last, as the completion marker):
  maps/<id>.npz, panels/<id>.png   per selected patch
  sanity.json                      cascading randomisation: rank correlations trained vs randomised maps per
                                   depth, randomised logits' spread, status and input independence per method
  concepts.csv                     concept measures of the RCV patches
  rcv_scores.csv / rcv_scores.json R^2 and its class-label baseline, TCAV against random fits, adjusted
                                   p-values and a status per layer and concept
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
from layer2_training import progress
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
    index: Path | None = None  # Layer 1's index.json: the split of each store (select.split)


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
        from layer2_training.health import HealthWarning
        from layer3_inference.explain import probe, randomise
        from layer3_inference.model import load_model, read_spec

        self.req, cfg = req, req.cfg
        self.spec = read_spec(req.model_dir)
        self.model = load_model(self.spec)
        self.flat = probe.flatten(self.model)
        choice = probe.gradcam_layer(self.flat, cfg.gradcam.layer, cfg.gradcam.min_size)
        self.layer, self.layer_size = choice.name, choice.size
        self.layer_note = (HealthWarning("gradcam_layer_small", choice.note)
                           if choice.note and cfg.gradcam.enabled else None)
        # the cascade is planned (and every weight's initializer checked) before the first map
        self.steps = randomise.plan(self.flat, cfg.sanity.depths) if cfg.sanity.enabled else []
        self.rcv_layers = ([probe.check_layer(self.flat, n, f"rcv.layers[{i}]") for i, n in enumerate(cfg.rcv.layers)]
                           if cfg.rcv.layers else probe.auto_layers(self.flat, cfg.rcv.auto_layers))
        self.patch_size = int(self.model.inputs[0].shape[1])

    def probabilities(self, patches: np.ndarray) -> np.ndarray:
        from layer3_inference.explain.probe import predict_logits

        return np.asarray(1 / (1 + np.exp(-predict_logits(self.flat, patches, self.req.cfg.batch_size))))

    def maps(self, patches: np.ndarray, randomised: Any = None) -> dict[str, np.ndarray]:
        """The trained model's maps, or (`randomised`: a flat logit model from `randomise.cascade`) the maps of
        `sanity.methods` on it."""
        import tensorflow as tf

        from layer3_inference.explain import gradcam, lime_explain

        cfg = self.req.cfg
        model, flat = self.model, self.flat
        methods = cfg.sanity.methods if randomised is not None else ["gradcam", "gradcam_pp", "lime"]
        if randomised is not None:
            flat = randomised
            model = tf.keras.Model(flat.inputs, tf.keras.layers.Activation("sigmoid")(flat.outputs[0]))
        out: dict[str, np.ndarray] = {}
        if cfg.gradcam.enabled and {"gradcam", "gradcam_pp"} & set(methods):
            cams = gradcam.cams(flat, patches, self.layer, cfg.gradcam.score)
            out.update({k: v for k, v in cams.items() if k in methods})
        if cfg.lime.enabled and "lime" in methods:
            out["lime"] = lime_explain.lime_maps(flat if cfg.lime.target == "logit" else model, patches, cfg.lime)
        return out


def _select(ex: Explainer, stores: list[Any], choice: sel.SplitChoice, world: dist.World) -> sel.Selection:
    """From `stores` (those of the chosen split) or the heatmaps of that split's slides."""
    cfg, req = ex.req.cfg, ex.req
    if req.heatmap is not None:
        heatmaps = sel.heatmaps_of_split(sel.read_heatmaps(req.heatmap), choice, req.index)
        return sel.select_from_heatmaps(heatmaps, cfg.select.k, stores, sel.slide_reader(ex.patch_size))

    def score(pairs: list[tuple[int, int]]) -> np.ndarray:
        mine = world.share(len(pairs))
        probs = np.concatenate([ex.probabilities(np.concatenate([stores[s].read([i]) for s, i in block]))
                                for block in progress.ticking(_blocks([pairs[j] for j in mine], cfg.batch_size),
                                                              "select: scoring candidates", "batches")]
                               or [np.zeros(0)])
        return np.asarray(dist.merge_shares(world.allgather(list(probs)), len(pairs), world.size), np.float64)

    return sel.select_from_stores(stores, cfg.select, score)


def _blocks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _per_patch(ex: Explainer, selection: sel.Selection, world: dist.World,
               ) -> tuple[list[dict[str, Any]] | None, list[tuple[dict[str, Any], float]]]:
    """Per patch (rank 0, selection order; None elsewhere): trained maps, randomised maps at full randomisation
    ("random") and at every cascade depth ("depths"); and (step, randomised logits' std) per depth."""
    mine = world.share(len(selection))
    patches = selection.rgb[mine]
    trained = ex.maps(patches)
    depths = _cascade_maps(ex, selection.rgb, mine)
    random = depths[-1][2] if depths else {}
    rows = [{"trained": {k: v[j] for k, v in trained.items()}, "random": {k: v[j] for k, v in random.items()},
             "depths": [{k: v[j] for k, v in maps.items()} for _, _, maps in depths]} for j in range(len(mine))]
    parts = world.gather(rows)
    facts = [(step, std) for step, std, _ in depths]
    return (None if parts is None else dist.merge_shares(parts, len(selection), world.size)), facts


def _selection_facts(ex: Explainer, choice: sel.SplitChoice, summary: dict[str, Any]) -> None:
    """The split the patches came from, the Grad-CAM layer's size, and their warnings (added to the list)."""
    size = ex.layer_size
    summary.update({"split": choice.split, "gradcam_layer_size": list(size) if size else None})
    found = [w for w in (choice.warning, ex.layer_note) if w is not None]
    summary.setdefault("warnings", []).extend(w.to_dict() for w in found)


def _write_sanity(ex: Explainer, selection: sel.Selection, rows: list[dict[str, Any]],
                  facts: list[tuple[dict[str, Any], float]], summary: dict[str, Any]) -> None:
    """sanity.json, the summary's `sanity` key, and its warnings (rank 0; `rows` from `_per_patch`)."""
    from layer3_inference.explain import randomise, sanity
    from layer3_inference.explain.probe import predict_logits

    trained = {k: np.stack([r["trained"][k] for r in rows]) for k in rows[0]["random"]}
    depths = [sanity.DepthMaps(step, std, {k: np.stack([r["depths"][d][k] for r in rows]) for k in trained})
              for d, (step, std) in enumerate(facts)]
    trained_std = randomise.logit_std(predict_logits(ex.flat, selection.rgb, ex.req.cfg.batch_size))
    doc = sanity.document(trained, depths, trained_std, ex.req.cfg.sanity)
    report.write_json(ex.req.out / "sanity.json", doc)
    summary["sanity"] = sanity.summary(doc)
    summary.setdefault("warnings", []).extend(w.to_dict() for w in sanity.warnings(doc))


def _cascade_maps(ex: Explainer, everyone: np.ndarray, mine: np.ndarray,
                  ) -> list[tuple[dict[str, Any], float, dict[str, np.ndarray]]]:
    """(step, randomised logits' std over all selected patches, maps of this rank's patches) per cascade depth.
    Every rank randomises and calibrates on all selected patches, so all ranks explain with the same models."""
    from layer3_inference.explain import randomise
    from layer3_inference.explain.probe import flatten, predict_logits

    out: list[tuple[dict[str, Any], float, dict[str, np.ndarray]]] = []
    if not ex.steps:  # sanity.enabled: false
        return out
    total = len(ex.steps)
    for step, flat in randomise.cascade(flatten(ex.model), ex.steps, ex.req.cfg.sanity.seed, everyone):
        where = f"sanity depth {step.depth}/{total}"
        # one line per depth: each randomises a block of layers, then maps every patch again
        progress.note(f"{where}: {len(step.layers)} layers randomised")
        with progress.scope(where):
            std = randomise.logit_std(predict_logits(flat, everyone, ex.req.cfg.batch_size))
            out.append((step.to_dict(), std, ex.maps(everyone[mine], randomised=flat)))
    return out


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
    if cfg.rcv.enabled and not (req.stores or req.index):
        raise CamnetError("rcv needs labelled patches: give --store or --index (or set rcv.enabled=false)")
    start = time.perf_counter()
    choice = sel.split_stores(req.stores, req.index, cfg.select.split)
    ex = Explainer(req)
    stores = sel.open_stores(choice.given)
    try:
        with progress.enabled(world.is_chief):  # rank 0's lines stand for all ranks'
            return _run(ex, stores, choice, world, start)
    finally:
        for store in stores:
            store.close()


def _run(ex: Explainer, stores: list[Any], choice: sel.SplitChoice, world: dist.World, start: float,
         ) -> dict[str, Any]:
    from layer3_inference.explain import rcv

    cfg, out = ex.req.cfg, ex.req.out
    want_maps = cfg.gradcam.enabled or cfg.lime.enabled
    of_split = [st for st, path in zip(stores, choice.given, strict=True) if path in choice.paths]
    selection = _select(ex, of_split, choice, world) if want_maps else None
    if world.is_chief:
        for sub in ("", "maps", "panels"):
            (out / sub).mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"model": str(ex.req.model_dir), "gradcam_layer": ex.layer,
                               "rcv_layers": ex.rcv_layers, "config": to_dict(cfg),
                               "config_hash": config_hash(cfg), "ranks": world.size, "rank": world.rank}
    _selection_facts(ex, choice, summary)
    if selection is not None:
        progress.note(f"maps of {len(selection)} patches" + (f", sanity check at {len(ex.steps)} depths"
                                                             if ex.steps else ""))
        rows, facts = _per_patch(ex, selection, world)
        if rows is not None:
            prob = selection.prob if selection.prob is not None else ex.probabilities(selection.rgb)
            scales = plots.shared_scales([row["trained"] for row in rows])
            for j, (pid, row) in enumerate(zip(selection.ids(), rows, strict=True)):
                meta = {"source": selection.source[j], "row": int(selection.row[j]),
                        "x": int(selection.coords[j][0]), "y": int(selection.coords[j][1]),
                        "label": int(selection.label[j]), "probability": float(prob[j])}
                if cfg.output.maps_npz:
                    rand = {f"random_{k}": v for k, v in row["random"].items()}
                    report.write_maps(out / "maps" / f"{pid}.npz", selection.rgb[j], {**row["trained"], **rand}, meta)
                if cfg.output.panels:
                    plots.panel(out / "panels" / f"{pid}.png", selection.rgb[j], row["trained"],
                                f"{pid}  label {meta['label']}  p(tumour) {meta['probability']:.3f}", cfg.output.dpi,
                                scales)
            summary["patches"] = selection.ids()
            if cfg.sanity.enabled:
                _write_sanity(ex, selection, rows, facts, summary)
    if cfg.rcv.enabled:
        progress.note(f"rcv: {len(ex.rcv_layers)} layers x {len(cfg.rcv.concepts)} concepts")
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
            summary["rcv"] = rcv.summary_rows(scores)  # the report's and the CLI's columns; all of them in the JSON
    summary["seconds"] = time.perf_counter() - start
    if world.is_chief:
        report.write_json(out / "summary.json", summary)
    world.barrier()
    return summary
