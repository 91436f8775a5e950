"""The streamed pyramid TIFF writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from layer1_patches.synth import pyramid
from layer1_patches.synth.slides import SynthSpec, write_synthetic_slide


def test_failed_write_leaves_no_file_under_final_or_partial_name(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object) -> np.ndarray:
        raise RuntimeError("killed")

    monkeypatch.setattr(pyramid, "render_tile", broken)
    with pytest.raises(RuntimeError):
        write_synthetic_slide(tmp_path / "k.tif", tmp_path / "k.xml", SynthSpec(512, seed=1))
    assert list(tmp_path.iterdir()) == []
