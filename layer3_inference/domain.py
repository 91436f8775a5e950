"""Is this slide the kind of tissue the model was trained on? Pure rules for a heatmap summary's warnings.

A model trained on one stain and scanner will still return a probability for every patch of another: nothing in
its output says the tissue is unlike anything it has seen. Two cheap signs do: the slide's stained tissue lies far
from the training tissue in optical density (`layer1_patches.colour`), or the model calls an implausible share of
the tissue tumour. The warnings share Layer 2's vocabulary (`HealthWarning`, split null: a slide is no split).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from layer1_patches.colour import STAINED_OD, ColourStats, colour_shift
from layer2_training.health import HealthWarning
from layer3_inference.config import WarningsConfig


@dataclass(frozen=True)
class DomainCheck:
    """A slide's figures for its summary and the warnings they raise."""

    colour_shift: float | None
    tumour_share: float
    warnings: list[HealthWarning]


def tumour_share(probs: np.ndarray, threshold: float) -> float:
    """Share of the tissue patches at or above the threshold (0 without patches)."""
    return float(np.mean(np.asarray(probs) >= threshold)) if len(probs) else 0.0


def colour_warnings(slide: ColourStats | None, training: ColourStats | None, patches: int,
                    limit: float | None) -> tuple[float | None, list[HealthWarning]]:
    """(shift, warnings) of a slide's tissue colour against the training colour (None: either is missing)."""
    if limit is None:
        return (colour_shift(slide, training) if slide and training else None), []
    if training is None:
        return None, [HealthWarning("no_training_colour", "the model's model.json records no training colour, so "
                                    "the slide's colour could not be compared with it")]
    if slide is None:
        # tissue patches without one stained pixel: far paler than any stained tissue the model saw
        return None, [HealthWarning("colour_shift", f"none of the {patches} tissue patches has a stained pixel "
                                    f"(optical density {STAINED_OD:g} or more in R, G and B): the tissue is unlike "
                                    "the model's training tissue, so its probabilities may mean little")]
    shift = colour_shift(slide, training)
    if shift <= limit:
        return shift, []
    channel = int(np.argmax([abs(s - t) / max(sd, 1e-6) for s, t, sd in
                             zip(slide.od_mean, training.od_mean, training.od_std, strict=True)]))
    return shift, [HealthWarning("colour_shift", f"tissue colour is {shift:.1f} training standard deviations from "
                                 f"the model's training tissue (more than {limit:g}; largest in "
                                 f"{'RGB'[channel]}: optical density {slide.od_mean[channel]:.3f} vs "
                                 f"{training.od_mean[channel]:.3f}): another stain or scanner, its probabilities "
                                 "may mean little")]


def share_warnings(share: float, patches: int, limit: float | None) -> list[HealthWarning]:
    if limit is None or share <= limit:
        return []
    return [HealthWarning("tumour_share", f"{share:.1%} of the {patches} tissue patches are called tumour (more than "
                          f"{limit:.0%}): rare in real slides, check the model suits this tissue")]


def check_slide(slide: ColourStats | None, training: ColourStats | None, probs: np.ndarray, threshold: float,
                cfg: WarningsConfig) -> DomainCheck:
    """The domain figures and warnings of one slide's heatmap."""
    share = tumour_share(probs, threshold)
    shift, warnings = colour_warnings(slide, training, len(probs), cfg.max_colour_shift)
    return DomainCheck(shift, share, warnings + share_warnings(share, len(probs), cfg.max_tumour_share))
