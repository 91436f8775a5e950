"""Tier (a): maps, sanity check and RCV on a tiny CNN trained in the fixture on synthetic-slide patches
(tumour nuclei larger, darker, denser by construction), exported in Layer 2's layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from layer3_inference.explain import concepts, gradcam, lime_explain, probe, randomise, rcv, sanity
from layer3_inference.explain.config import CONCEPTS, ConceptConfig, LimeConfig, RcvConfig, SanityConfig


@pytest.fixture(scope="module")
def loaded(explain_toy):
    from layer3_inference.model import load_model, read_spec

    model = load_model(read_spec(explain_toy.run_dir))
    return model, probe.flatten(model)


def tumour_patches(explain_toy, n: int) -> np.ndarray:
    return explain_toy.x[explain_toy.y == 1][:n]


def test_toy_model_learnt_the_task(explain_toy) -> None:
    assert explain_toy.accuracy > 0.9


def test_gradcam_mass_falls_on_nuclei_in_tumour_patches(explain_toy, loaded) -> None:
    model, flat = loaded
    patches = tumour_patches(explain_toy, 10)
    maps = gradcam.cams(flat, patches, probe.gradcam_layer(flat, None, 7).name, "logit")
    for method in ("gradcam", "gradcam_pp"):
        ratios = []
        for cam, patch in zip(maps[method], patches, strict=True):
            nuclei = concepts.segment_nuclei(patch, 12, 4) > 0
            ratios.append(cam[nuclei].mean() / max(cam[~nuclei].mean(), 1e-12))
        assert np.median(ratios) > 1.2, (method, ratios)
        assert np.mean(np.array(ratios) > 1) >= 0.8, (method, ratios)


def test_randomisation_check_separates_trained_from_random_weights(explain_toy, loaded) -> None:
    model, flat = loaded
    patches = tumour_patches(explain_toy, 6)
    layer = probe.gradcam_layer(flat, None, 7).name
    trained = gradcam.cams(flat, patches, layer, "logit")
    depths = [sanity.DepthMaps(step.to_dict(), randomise.logit_std(probe.predict_logits(rnd, patches, 8)),
                               gradcam.cams(rnd, patches, layer, "logit"))
              for step, rnd in randomise.cascade(probe.flatten(model), randomise.plan(flat, 4), 1234, patches)]
    trained_std = randomise.logit_std(probe.predict_logits(flat, patches, 8))
    doc = sanity.document(trained, depths, trained_std, SanityConfig())
    assert all(d["random_logit_std"] > 1e-3 for d in doc["depths"]), doc["depths"]
    for method in ("gradcam", "gradcam_pp"):
        result = doc["methods"][method]
        # alive randomised networks: a verdict either way, never "inconclusive". Which verdict is the model's own
        # business: a 3-layer random CNN still finds the dark nuclei this toy learnt to look at.
        assert result["status"] in ("passed", "failed") and result["decided_at_depth"] == 4, result
        # the cascade: randomising only the logit layer keeps the picture (the channels share one spatial
        # pattern); randomising every layer changes it
        top, full = result["by_depth"][0]["median"], result["by_depth"][-1]["median"]
        assert top > 0.9 and full < top - 0.1, result["by_depth"]
        assert not result["input_independent"], result
    # negative control: a "map" that ignores the weights (the haematoxylin image) must fail
    stain = {"stain": np.stack([concepts.haematoxylin(p) for p in patches])}
    same = [sanity.DepthMaps(d.step, d.logit_std, stain) for d in depths]
    assert sanity.document(stain, same, trained_std, SanityConfig())["methods"]["stain"]["status"] == "failed"


def test_lime_map_is_deterministic_and_informative(explain_toy, loaded) -> None:
    _, flat = loaded
    patch = tumour_patches(explain_toy, 1)[0]
    cfg = LimeConfig(num_samples=80, n_segments=25)
    a, segments = lime_explain.lime_map(flat, patch, cfg)
    b, _ = lime_explain.lime_map(flat, patch, cfg)
    np.testing.assert_array_equal(a, b)
    assert a.shape == patch.shape[:2] and np.ptp(a) > 0
    assert segments.min() == 0 and len(np.unique(segments)) == segments.max() + 1  # every superpixel hideable


def test_nuclei_area_is_encoded_with_heldout_r2(explain_toy, loaded) -> None:
    _, flat = loaded
    rng = np.random.default_rng(0)
    pick = np.concatenate([rng.choice(np.flatnonzero(explain_toy.y == c), 50, replace=False) for c in (0, 1)])
    patches, labels = explain_toy.x[pick], explain_toy.y[pick]
    layers = probe.auto_layers(flat, 2)
    data, _ = rcv.activations(probe.tap_model(flat, layers), layers, patches, 32)
    values = concepts.measure_all(patches, ConceptConfig())
    col = CONCEPTS.index("nuclei_area")
    cfg = RcvConfig(n_random=30, n_repeats=5)
    rows = rcv.score_all(data, values[:, [col]], ["nuclei_area"], labels, cfg)
    assert max(r["r2_heldout"] for r in rows) > 0.3, rows
    assert all(r["n_tumour"] == 50 for r in rows)


def test_run_dir_is_layer2_shaped(explain_toy) -> None:
    assert (Path(explain_toy.run_dir) / "export" / "model.keras").is_file()
    assert (Path(explain_toy.run_dir) / "model.json").is_file()
