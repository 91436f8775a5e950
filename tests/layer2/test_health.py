"""Model health rules on hand-built labels and probabilities: each rule fires on its case, and a healthy model
(enough samples, a threshold that suits it) gets no warning."""

from __future__ import annotations

import numpy as np
import pytest

from layer2_training.health import MIN_PER_CLASS, HealthWarning, classifier_warnings, singular


def codes(warnings: list[HealthWarning]) -> list[str]:
    return [w.code for w in warnings]


def labels(n_tumour: int, n_normal: int) -> np.ndarray:
    return np.array([1] * n_tumour + [0] * n_normal)


def test_the_issues_useless_model_gets_three_warnings() -> None:
    # Issue 14: val AUC 1.0, accuracy 0.5, sensitivity 0, the model never above 0.13, 20 patches per class.
    # Tumour 0.111..0.13 all rank above normal 0.01..0.10: AUC = 1 (every pair right); nothing reaches 0.5, so
    # sensitivity 0, specificity 1, accuracy 20/40 = 0.5.
    y = labels(20, 20)
    p = np.concatenate([np.linspace(0.111, 0.13, 20), np.linspace(0.01, 0.10, 20)])
    warnings = classifier_warnings("val", y, p, 0.5)
    assert codes(warnings) == ["never_crosses_threshold", "threshold_miscalibrated", "auc_small_sample"]
    assert {w.split for w in warnings} == {"val"}
    assert warnings[0].message == ("val: no patch reaches the threshold 0.5 (highest probability 0.130); the model "
                                   "calls nothing tumour")
    assert "AUC 1.000 but sensitivity 0.000, specificity 1.000 at threshold 0.5" in warnings[1].message
    assert "AUC exactly 1 from 20 tumour and 20 normal patches (fewer than 50 in a class)" in warnings[2].message
    assert warnings[0].to_dict() == {"code": "never_crosses_threshold", "message": warnings[0].message,
                                     "split": "val"}


def test_a_healthy_model_with_60_per_class_gets_no_warning() -> None:
    # AUC exactly 1.0 is believable from 60 per class; the threshold splits the classes (sensitivity and
    # specificity 1)
    y = labels(60, 60)
    p = np.concatenate([np.linspace(0.55, 0.95, 60), np.linspace(0.05, 0.45, 60)])
    assert classifier_warnings("val", y, p, 0.5) == []
    # an imperfect one too: 5 tumour patches at 0.3 (sensitivity 55/60), 5 normal at 0.7 (specificity 55/60)
    p[:5], p[60:65] = 0.3, 0.7
    assert classifier_warnings("test", y, p, 0.5) == []


def test_a_mediocre_ranking_with_a_poor_threshold_is_not_called_miscalibrated() -> None:
    # AUC 9/12 = 0.75 (below 0.8): at 0.65 sensitivity 1/3 is a weak model, not a threshold that does not suit a
    # good one; 3 and 4 per class, but the AUC is not 0.5 or 1.0
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.6, 0.3, 0.7, 0.2, 0.1, 0.5])
    assert classifier_warnings("val", y, p, 0.65) == []


def test_good_ranking_with_low_sensitivity_is_a_miscalibrated_threshold() -> None:
    # 60 per class, every tumour above every normal (AUC 1.0), but 40 of 60 tumour patches below 0.5:
    # sensitivity 20/60 = 0.333, specificity 1
    y = labels(60, 60)
    p = np.concatenate([np.linspace(0.6, 0.9, 20), np.linspace(0.35, 0.45, 40), np.linspace(0.0, 0.3, 60)])
    warnings = classifier_warnings("val", y, p, 0.5)
    assert codes(warnings) == ["threshold_miscalibrated"]
    assert "AUC 1.000 but sensitivity 0.333, specificity 1.000 at threshold 0.5" in warnings[0].message


def test_everything_called_tumour() -> None:
    # the same probabilities for both classes, all at or above 0.5: AUC exactly 0.5 (every pair a tie counts
    # half), specificity 0; 60 per class, AUC below 0.8: only the crossing rule applies
    y = labels(60, 60)
    p = np.tile(np.linspace(0.5, 0.9, 60), 2)
    warnings = classifier_warnings("test", y, p, 0.5)
    assert codes(warnings) == ["never_crosses_threshold"]
    assert warnings[0].message.startswith("test: every patch is at or above the threshold 0.5 (lowest probability "
                                          "0.500)")


def test_a_probability_equal_to_the_threshold_crosses_it() -> None:
    # at or above the threshold is tumour (as in binary_metrics): 0.5 at threshold 0.5 is one tumour call
    y = labels(60, 60)
    p = np.concatenate([np.full(60, 0.5), np.full(60, 0.1)])
    assert "never_crosses_threshold" not in codes(classifier_warnings("val", y, p, 0.5))


@pytest.mark.parametrize(("n_tumour", "n_normal", "warned"), [(MIN_PER_CLASS - 1, 80, True),
                                                              (MIN_PER_CLASS, MIN_PER_CLASS, False)])
def test_perfect_auc_from_few_samples(n_tumour: int, n_normal: int, warned: bool) -> None:
    # perfectly separated at 0.5: AUC exactly 1.0; only the smaller class's count decides
    y = labels(n_tumour, n_normal)
    p = np.concatenate([np.full(n_tumour, 0.9), np.full(n_normal, 0.1)])
    assert codes(classifier_warnings("val", y, p, 0.5)) == (["auc_small_sample"] if warned else [])


def test_chance_auc_from_few_samples() -> None:
    # 10 per class with the same probabilities: every pair ties, AUC exactly 0.5; half of each class above 0.5
    y = labels(10, 10)
    p = np.tile(np.linspace(0.3, 0.7, 10), 2)
    warnings = classifier_warnings("val", y, p, 0.5)
    assert codes(warnings) == ["auc_small_sample"]
    assert "AUC exactly 0.5 from 10 tumour and 10 normal patches" in warnings[0].message


def test_one_class_split() -> None:
    # all normal, the model says normal (max 0.4 below 0.5): right, so only the one-class warning
    normal = classifier_warnings("val", np.zeros(12), np.linspace(0.1, 0.4, 12), 0.5)
    assert codes(normal) == ["one_class"]
    assert normal[0].message == "val: all 12 patches are normal; AUC and sensitivity cannot be measured"
    # all tumour, called tumour: one-class only; called normal: the model misses every one
    assert codes(classifier_warnings("val", np.ones(5), np.full(5, 0.8), 0.5)) == ["one_class"]
    missed = classifier_warnings("val", np.ones(5), np.full(5, 0.2), 0.5)
    assert codes(missed) == ["one_class", "never_crosses_threshold"]
    assert "all 5 patches are tumour; AUC and specificity cannot be measured" in missed[0].message


def test_empty_split() -> None:
    assert classifier_warnings("test", np.zeros(0), np.zeros(0), 0.5) == [
        HealthWarning("empty_split", "test: no patches to evaluate", "test")]


def test_nan_probabilities_were_an_unexplained_scikit_learn_error() -> None:
    # roc_auc_score raises "Input contains NaN"; a broken model output is one warning instead
    y = labels(3, 3)
    p = np.array([0.9, np.nan, 0.8, 0.1, np.inf, 0.2])
    warnings = classifier_warnings("val", y, p, 0.5)
    assert codes(warnings) == ["non_finite_probabilities"]
    assert warnings[0].message.startswith("val: 2 of 6 patches have no finite probability")


def test_slides_are_counted_in_the_singular_without_a_grammar_slip() -> None:
    # the first version said "no patches reaches" and "every patche"
    assert (singular("patches"), singular("slides")) == ("patch", "slide")
    y = labels(3, 3)
    low = classifier_warnings("slides", y, np.linspace(0.1, 0.3, 6), 0.5, what="slides")
    assert "slides: no slide reaches the threshold 0.5" in low[0].message
    high = classifier_warnings("val", y, np.linspace(0.6, 0.9, 6), 0.5)
    assert "val: every patch is at or above" in high[0].message


def test_labels_and_probabilities_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="val: 3 labels but 2 probabilities"):
        classifier_warnings("val", np.array([0, 1, 1]), np.array([0.1, 0.2]), 0.5)
