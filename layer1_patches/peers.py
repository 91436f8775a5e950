"""The `/coords` attributes that let peer tools (CLAM, TRIDENT, WSInfer) read a patch store's patches themselves.

They read the slide again at each coordinate, by their own arithmetic on these attributes; `tests/layer1/
test_peers.py` re-implements each one's and checks it meets the area CamNet stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PatchGeometry:
    """Where a store's patches come from: read `read_size` px at `level`, resized to the stored size."""

    level: int
    level_downsample: float  # of `level`, relative to level 0
    downsample: float  # working (stored) pixels -> level-0 pixels
    read_size: int  # pixels read at `level` per patch side
    footprint: int  # level-0 pixels per patch side
    level0_magnification: float  # objective power of level 0 (0: unknown)


def peer_coords_attrs(geo: PatchGeometry) -> dict[str, Any]:
    """The `/coords` attributes with which CLAM, TRIDENT and WSInfer read the area CamNet stored.

    The peers share one `patch_size` with different meanings: CLAM (`Whole_Slide_Bag_FP`) reads patch_size px at
    patch_level, WSInfer (`_read_patch_coords`) reads patch_size px at level 0 and only accepts patch_level 0,
    TRIDENT's patcher reads patch_size px at target_magnification. Only the size read at `level` satisfies all
    three, so a resampled store describes its patches before CamNet's resize; each peer's model transform then
    resizes to its input, as CamNet resized to the stored size.
    """
    attrs: dict[str, Any] = {
        "patch_level": geo.level, "patch_size": geo.read_size, "downsample": geo.downsample,
        "patch_size_level0": geo.footprint,
        # TRIDENT's legacy (CLAM-format) path multiplies patch_level's downsample by this; CamNet adds none
        "custom_downsample": 1,
    }
    if geo.level0_magnification > 0:  # unknown: TRIDENT falls back to its legacy path, which the above serves
        attrs["level0_magnification"] = geo.level0_magnification
        attrs["target_magnification"] = geo.level0_magnification / geo.level_downsample
    return attrs
