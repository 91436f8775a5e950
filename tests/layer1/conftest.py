from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from layer1_patches.config import Layer1Config
from layer1_patches.shared.typedconfig import from_mapping

DATA = Path(__file__).resolve().parents[1] / "data"
REPO = Path(__file__).resolve().parents[2]
CMU = DATA / "CMU-1-Small-Region.svs"

# A tumour square with a `_2` hole, inside the CMU slide's tissue (level-0 px).
CMU_XML = """<?xml version="1.0"?>
<ASAP_Annotations><Annotations>
<Annotation Name="T0" Type="Polygon" PartOfGroup="Tumor"><Coordinates>
<Coordinate Order="0" X="1000" Y="1200"/><Coordinate Order="1" X="1800" Y="1200"/>
<Coordinate Order="2" X="1800" Y="2200"/><Coordinate Order="3" X="1000" Y="2200"/>
</Coordinates></Annotation>
<Annotation Name="H0" Type="Polygon" PartOfGroup="_2"><Coordinates>
<Coordinate Order="0" X="1200" Y="1400"/><Coordinate Order="1" X="1500" Y="1400"/>
<Coordinate Order="2" X="1500" Y="1700"/><Coordinate Order="3" X="1200" Y="1700"/>
</Coordinates></Annotation>
</Annotations></ASAP_Annotations>
"""


@pytest.fixture
def cmu_xml(tmp_path: Path) -> Path:
    path = tmp_path / "CMU-1-Small-Region.xml"
    path.write_text(CMU_XML)
    return path


def make_config(**sections: object) -> Layer1Config:
    return from_mapping(Layer1Config, dict(sections))


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "layer1_patches", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=600)


@pytest.fixture(scope="session")
def synth_slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    """A 4096 px synthetic slide with tumour and `_2` holes: (slide, annotation, ground truth)."""
    from layer1_patches.synth import SynthSpec, write_synthetic_slide

    folder = tmp_path_factory.mktemp("synth")
    tif, xml = folder / "patient_000_node_0.tif", folder / "patient_000_node_0.xml"
    truth = write_synthetic_slide(tif, xml, SynthSpec(size=4096, seed=7, tumour_fraction=0.25))
    return tif, xml, truth
