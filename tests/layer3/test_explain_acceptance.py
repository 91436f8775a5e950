"""Tier (b), the issue's acceptance tests, on a MobileNetV2 trained by `python -m layer2_training train`
(configs/layer2/mobilenetv2_cpu.yaml) on synthetic slides whose tumour nuclei are larger and darker by
construction (`trained_layer2`, tests/conftest.py, shared with test_acceptance.py); explained on the validation
patient's patches (never seen in training).

At 64-px patches MobileNetV2's last block is 2 x 2 cells, too coarse to tell nuclei from stroma; these tests
name `block_5_add` (8 x 8), where the default layer (the deepest of at least 7 x 7) would be block_6_expand_relu.

Where this trained model's Grad-CAM mass falls is what the model learnt, not a property of Grad-CAM: the model
retrained on exact tumour fractions (issue 14) puts as much of it on stroma as on nuclei (median ratio 0.94 at
block_5_add, 1.00 at block_6_expand_relu), so it is not asserted here. Grad-CAM itself is pinned by known answers
(test_explain_gradcam.py) and by a model of known behaviour (test_explain_maps.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from layer3_inference.explain.config import load_explain_config
from layer3_inference.explain.run import Request, run
from tests.conftest import TrainedRun

REPO = Path(__file__).resolve().parents[2]
GRADCAM_LAYER = "block_5_add"


@pytest.fixture(scope="module")
def explained(trained_layer2: TrainedRun, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    cfg = load_explain_config(REPO / "configs" / "layer3" / "explain.yaml", [
        "select.mode=random_per_class", "select.per_class=6", f"gradcam.layer={GRADCAM_LAYER}",
        "lime.num_samples=100", "rcv.per_class=60", "rcv.layers=[block_5_add, block_12_add, out_relu]",
        "rcv.concepts=[nuclei_area, nuclei_count, glcm_contrast]"])
    out = tmp_path_factory.mktemp("explain_layer2")
    return out, run(Request(cfg, trained_layer2.run_dir, out, list(trained_layer2.val_stores)))


def test_randomisation_check_separates_trained_from_random_weights(explained) -> None:
    out, summary = explained
    sanity = summary["sanity"]
    assert sanity["random_logit_std"] > 1e-3, sanity  # the randomised MobileNetV2 is alive: a conclusive check
    assert sanity["methods"]["gradcam"]["status"] == "passed", sanity
    assert sanity["methods"]["gradcam"]["median"] < 0.5
    assert not sanity["methods"]["gradcam"]["input_independent"], sanity


def test_nuclei_area_is_encoded_but_reported_as_restating_the_class(explained) -> None:
    """The generator makes tumour nuclei larger by construction, so the class label alone predicts nuclei area
    (held-out R^2 about 0.59 on these patches): the activations' R^2 (about 0.5-0.57) adds nothing to it, and
    the concept is reported as restating the class, never as significant evidence of its own. Before issue 14 it
    was reported significant with p ~ 1e-10."""
    _, summary = explained
    area = {r["layer"]: r for r in summary["rcv"] if r["concept"] == "nuclei_area"}
    assert set(area) == {"block_5_add", "block_12_add", "out_relu"}
    assert max(r["r2_heldout"] for r in area.values()) > 0.3, area  # encoded
    assert all(r["r2_label_baseline"] > 0.3 for r in area.values()), area  # ...and a class marker
    for layer in ("block_5_add", "block_12_add"):
        assert area[layer]["status"] == "restates class" and not area[layer]["significant"], area[layer]


def test_tcav_just_before_the_pooled_linear_head_is_undefined(explained) -> None:
    """out_relu feeds global average pooling and one Dense unit: the logit's gradient with respect to it is the
    same for every patch, so TCAV is 0 or 1 for any direction and no test is possible."""
    _, summary = explained
    head = [r for r in summary["rcv"] if r["layer"] == "out_relu"]
    assert len(head) == 3
    assert all(r["status"] == "undefined" and r["p_adjusted"] is None and r["significant"] is None
               for r in head), head
