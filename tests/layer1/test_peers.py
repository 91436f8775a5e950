"""Patch stores read by peer tools: CLAM, TRIDENT and WSInfer, each with its own arithmetic on `/coords`.

Each reader below re-implements, from the peer's source, which level it reads, how many pixels, and what it
resizes to; the test then compares what the peer would feed its model with the patches CamNet stored. The peers'
model transforms resize to the model input; here that input is CamNet's stored size, so the stores must make
every peer read the same level-0 area CamNet read. Sources (read at the versions fetched for issue 15):
  CLAM     dataset_modules/dataset_h5.py (`Whole_Slide_Bag_FP`), extract_features_fp.py (`--target_patch_size`)
  TRIDENT  trident/wsi_objects/WSI.py (`extract_patch_features`, `read_coords`), trident/wsi_objects/WSIPatcher.py
           (`__init__`, `_prepare`, `get_tile_xy`, `from_legacy_coords`), trident/IO.py (`read_coords_legacy`)
  WSInfer  wsinfer/modellib/data.py (`_read_patch_coords`, `WholeSlideImagePatches.__getitem__`)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import pytest
from PIL import Image

from layer1_patches.extract import ExtractRequest, extract_slide
from layer1_patches.peers import PatchGeometry, peer_coords_attrs
from layer1_patches.store import PatchStore
from tests.layer1.conftest import CMU, DATA, make_config

# Grey levels. Same area, other filter: CMU's fine texture read as 449 px and brought to 224 differs from CamNet's
# box filter by 4.1-6.8 (bilinear, bicubic, Lanczos; 0 with a box filter); the pre-issue-15 misread (224 px of
# a 449 px area) differed by 52-60. Native reads are identical (0).
MAX_MEAN_ABS = 10.0


@dataclass(frozen=True)
class Read:
    """One peer's read of a patch: `size` px at `level`, resized to `resize` px (None: kept as read)."""

    level: int
    size: int
    resize: int | None = None
    bicubic: bool = False  # PIL's `Image.resize` default, which TRIDENT's pil patcher calls


def clam_read(attrs: dict[str, Any], _level_downsamples: tuple[float, ...]) -> Read:
    """CLAM `Whole_Slide_Bag_FP`: read_region(coord, patch_level, (patch_size, patch_size)), no resize there."""
    return Read(int(attrs["patch_level"]), int(attrs["patch_size"]))


def wsinfer_read(attrs: dict[str, Any], _level_downsamples: tuple[float, ...]) -> Read:
    """WSInfer `_read_patch_coords`: refuses patch_level != 0; patch_size is width and height read at level 0."""
    if int(attrs["patch_level"]) != 0:
        raise NotImplementedError("WSInfer reads patch_level 0 only")
    return Read(0, int(attrs["patch_size"]))


def _trident_level(downsample: float, level_downsamples: tuple[float, ...]) -> int:
    """`WSI.get_best_level_and_custom_downsample(downsample, tolerance=0.1)` as `_prepare` calls it."""
    for level, ds in enumerate(level_downsamples):
        if abs(ds - downsample) <= 0.1:
            return level
    return max(lv for lv, ds in enumerate(level_downsamples) if ds <= downsample)


def _trident_patcher(patch_size: int, downsample: float, level_downsamples: tuple[float, ...]) -> Read:
    """`WSIPatcher`: patch_size_src = round(patch_size x downsample); at the chosen level it reads
    round(patch_size_src / int(level downsample)) px and resizes to patch_size."""
    level = _trident_level(downsample, level_downsamples)
    size = round(round(patch_size * downsample) / int(level_downsamples[level]))
    return Read(level, size, patch_size, bicubic=True)


def trident_read(attrs: dict[str, Any], level_downsamples: tuple[float, ...]) -> Read:
    """TRIDENT: with patch_size, level0_magnification and target_magnification all present, the patcher runs at
    pixel sizes 10/level0_magnification -> 10/target_magnification; otherwise the legacy path."""
    if any(attrs.get(k) is None for k in ("patch_size", "level0_magnification", "target_magnification")):
        return trident_legacy_read(attrs, level_downsamples)
    downsample = (10 / attrs["target_magnification"]) / (10 / attrs["level0_magnification"])
    return _trident_patcher(int(attrs["patch_size"]), downsample, level_downsamples)


def trident_legacy_read(attrs: dict[str, Any], level_downsamples: tuple[float, ...]) -> Read:
    """TRIDENT `from_legacy_coords` (slide with an mpp): downsample = level_downsamples[patch_level] x
    custom_downsample (default 1), patch_size is the target size."""
    ratio = level_downsamples[int(attrs["patch_level"])] * float(attrs.get("custom_downsample", 1))
    return _trident_patcher(int(attrs["patch_size"]), ratio, level_downsamples)


Reader = Callable[[dict[str, Any], tuple[float, ...]], Read]
READERS: dict[str, Reader] = {"clam": clam_read, "trident": trident_read, "wsinfer": wsinfer_read,
                              "trident_legacy": trident_legacy_read}


def peer_patches(slide_path: Path, coords: np.ndarray, read: Read, model_input: int) -> np.ndarray:
    """What the peer feeds its model: its read, its resize, then the model transform's resize (bilinear)."""
    out = []
    with openslide.OpenSlide(str(slide_path)) as osr:
        for x, y in coords:
            im = osr.read_region((int(x), int(y)), read.level, (read.size, read.size)).convert("RGB")
            if read.resize is not None:
                im = im.resize((read.resize, read.resize), Image.Resampling.BICUBIC if read.bicubic else None)
            if im.size != (model_input, model_input):
                im = im.resize((model_input, model_input), Image.Resampling.BILINEAR)
            out.append(np.asarray(im))
    return np.stack(out)


TCGA = DATA / "tcga-cr-7395-01a-01-ts1.svs"
# name: (slide, resolution section, patch size). The resampled case is the issue's: 1.0 um/px from level 0 at
# 0.499 um/px, downsample 2.004, a 224 px patch read as round(224 x 2.004) = 449 level-0 px.
STORES = {
    "native": (CMU, {"level": 0}, 64),
    "pyramid_level": (TCGA, {"level": 1, "assume_mpp": 0.25}, 64),
    "resampled": (CMU, {"mpp": 1.0}, 224),
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for name, (slide, resolution, size) in STORES.items():
        cfg = make_config(patch_size=size, resolution=resolution, sampling={"random": {"per_class": 4}})
        result = extract_slide(ExtractRequest(slide, tmp_path_factory.mktemp(name), cfg))
        out[name] = Path(result.output)
    return out


def mean_abs_difference(store_path: Path, slide: Path, reader: Reader, attrs: dict[str, Any] | None = None) -> float:
    with PatchStore(store_path) as store:
        stored, coords = store.read(np.arange(len(store))), store.coords
        attrs = store.coords_attrs if attrs is None else attrs
        size = store.patch_size
    with openslide.OpenSlide(str(slide)) as osr:
        level_downsamples = tuple(osr.level_downsamples)
    seen = peer_patches(slide, coords, reader(attrs, level_downsamples), size)
    return float(np.abs(seen.astype(np.int16) - stored.astype(np.int16)).mean())


@pytest.mark.parametrize("peer", ["clam", "trident", "trident_legacy", "wsinfer"])
@pytest.mark.parametrize("case", ["native", "resampled"])
def test_peers_read_the_stored_patches_of_a_level0_store(stores: dict[str, Path], case: str, peer: str) -> None:
    """Native: the peer reads the very pixels CamNet stored. Resampled: the same area, brought to size by the
    peer's filter."""
    diff = mean_abs_difference(stores[case], STORES[case][0], READERS[peer])
    if case == "native":
        assert diff == 0, f"{peer} reads other pixels than CamNet stored: {diff:.2f} grey levels"
    assert diff < MAX_MEAN_ABS, f"{peer} reads other pixels than CamNet stored: {diff:.1f} grey levels"


@pytest.mark.parametrize("peer", ["clam", "trident", "trident_legacy"])
def test_peers_read_the_stored_patches_of_a_pyramid_level(stores: dict[str, Path], peer: str) -> None:
    """Level 1 of the TCGA slide (downsample 2.0005): 64 px read at level 1, no resize, in every peer (TRIDENT:
    round(round(64 x 2.0005) / int(2.0005)) = 64), so the pixels are CamNet's own."""
    diff = mean_abs_difference(stores["pyramid_level"], TCGA, READERS[peer])
    assert diff == 0, f"{peer} reads other pixels than CamNet stored: {diff:.2f} grey levels"


def test_a_pyramid_level_store_is_refused_by_wsinfer_not_misread(stores: dict[str, Path]) -> None:
    """WSInfer reads level 0 only: a level-1 store must say patch_level 1, never pass as a level-0 one."""
    with PatchStore(stores["pyramid_level"]) as store:
        assert store.coords_attrs["patch_level"] == 1
    with pytest.raises(NotImplementedError):
        mean_abs_difference(stores["pyramid_level"], TCGA, wsinfer_read)


def test_resampled_store_attributes_give_the_read_area(stores: dict[str, Path]) -> None:
    """1.0 um/px from 0.499 um/px: downsample 1.0 / 0.499 = 2.004; a 224 px patch is round(224 x 2.004) = 449
    level-0 px, read at level 0; CMU's objective power 20 is level 0's magnification, and level 0's too."""
    with PatchStore(stores["resampled"]) as store:
        attrs = store.coords_attrs
    assert attrs["patch_level"] == 0 and attrs["patch_size"] == 449 and attrs["patch_size_level0"] == 449
    assert attrs["downsample"] == pytest.approx(1.0 / 0.499)
    assert attrs["level0_magnification"] == pytest.approx(20) and attrs["target_magnification"] == pytest.approx(20)
    assert attrs["custom_downsample"] == 1


def test_resampled_store_was_misread_with_the_working_patch_size(stores: dict[str, Path]) -> None:
    """The attributes CamNet wrote before issue 15 (patch_size = the stored 224, patch_level 0): every peer read
    224 level-0 px where CamNet read 449, a quarter of the area, so this comparison must fail clearly."""
    old = {"patch_size": 224, "patch_level": 0, "downsample": 1.0 / 0.499}
    for peer in ("clam", "wsinfer", "trident_legacy"):
        assert mean_abs_difference(stores["resampled"], CMU, READERS[peer], old) > 4 * MAX_MEAN_ABS


def test_peer_coords_attrs_of_a_resampled_store_give_the_size_read_not_the_size_stored() -> None:
    """The issue-15 case: 1.0 um/px from a 20x, 0.499 um/px level 0. Downsample 1 / 0.499 = 2.004; a 224 px patch is
    read as round(224 x 2.004) = 449 px at level 0, so CLAM/WSInfer need patch_size 449 at patch_level 0 and
    TRIDENT needs target_magnification = level 0's 20x (449 px there, then its model's resize)."""
    attrs = peer_coords_attrs(PatchGeometry(level=0, level_downsample=1.0, downsample=1 / 0.499, read_size=449,
                                            footprint=449, level0_magnification=20.0))
    assert attrs == {"patch_level": 0, "patch_size": 449, "downsample": pytest.approx(2.004, abs=1e-3),
                     "patch_size_level0": 449, "custom_downsample": 1, "level0_magnification": 20.0,
                     "target_magnification": 20.0}


def test_peer_coords_attrs_of_a_pyramid_level_name_that_level() -> None:
    """Level 1 of a 40x slide at downsample 2.0005: 64 px read there, no resize; TRIDENT's target magnification is
    level 1's, 40 / 2.0005 = 19.995, and the patch covers round(64 x 2.0005) = 128 level-0 px."""
    attrs = peer_coords_attrs(PatchGeometry(level=1, level_downsample=2.0005, downsample=2.0005, read_size=64,
                                            footprint=128, level0_magnification=40.0))
    assert attrs["patch_level"] == 1 and attrs["patch_size"] == 64 and attrs["patch_size_level0"] == 128
    assert attrs["target_magnification"] == pytest.approx(19.995, abs=1e-3)


def test_peer_coords_attrs_without_a_magnification_leave_trident_its_legacy_path() -> None:
    """Magnification unknown (0): no level0/target magnification, which TRIDENT would divide by; its legacy path
    reads patch_size at patch_level x custom_downsample 1, the same area."""
    attrs = peer_coords_attrs(PatchGeometry(0, 1.0, 1.0, 32, 32, 0.0))
    assert "level0_magnification" not in attrs and "target_magnification" not in attrs
    assert attrs["custom_downsample"] == 1 and attrs["patch_size"] == 32
