"""The tile renderer: every pixel is a function of its level-0 position, so tiles agree across borders."""

from __future__ import annotations

import numpy as np

from layer1_patches.synth import pixels
from layer1_patches.synth.slides import SynthSpec, make_layout


def test_nuclei_agree_across_tile_borders() -> None:
    layout = make_layout(SynthSpec(size=1024, seed=4, tumour_fraction=0.5))[0]
    for kind in (layout.normal, layout.malignant):
        whole = pixels.nuclei_layer(layout, kind, 256, 256, 512, 512)
        assert whole.max() > 0.5
        quarters = [[pixels.nuclei_layer(layout, kind, 256 + x, 256 + y, 256, 256) for x in (0, 256)]
                    for y in (0, 256)]
        assert np.array_equal(whole, np.block(quarters))
