"""The README's config tables come from the schemas: rendering, rewriting between markers, the stale check."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from layer1_patches.config import Layer1Config
from layer1_patches.shared.errors import CamnetError
from layer1_patches.shared.typedconfig import bounded, describe, from_mapping
from layer3_inference.config import HeatmapConfig
from layer3_inference.pipeline import configdoc

from .conftest import REPO


@dataclass(frozen=True)
class Inner:
    size: int = bounded(3, min=1, doc="pixels | at level 0")
    tags: list[str] = bounded(["a"], doc="names")


@dataclass(frozen=True)
class Outer:
    name: str = bounded("x", doc="folder of `<slide stem>.png` masks, or <stem>")
    inner: Inner = bounded(Inner(), doc="a section")
    optional: Inner | None = bounded(Inner(), doc="null: off")
    absent: Inner | None = bounded(None, doc="off unless set")


def test_describe_lists_sections_and_their_keys_in_order() -> None:
    rows = describe(Outer)
    assert [r[:3] for r in rows] == [
        ("name", "str", '"x"'), ("inner", "section", ""), ("inner.size", "int", "3"),
        ("inner.tags", "list[str]", '["a"]'), ("optional", "section or null", ""), ("optional.size", "int", "3"),
        ("optional.tags", "list[str]", '["a"]'), ("absent", "section or null", "null"),
        ("absent.size", "int", "3"), ("absent.tags", "list[str]", '["a"]')]
    assert dict((r[0], r[3]) for r in rows)["optional"] == "null: off"


def test_a_section_default_is_not_shared_between_configs() -> None:
    a, b = Outer(), Outer()
    assert a == b and a.inner is not b.inner and a.inner.tags is not b.inner.tags
    assert from_mapping(Outer, {"optional": None, "inner": {"size": 5}}) == \
        Outer(inner=Inner(size=5), optional=None)


def test_cells_escape_pipes_and_html_outside_code() -> None:
    table = configdoc.render(Outer)
    assert "| `inner.size` | int | `3` | pixels \\| at level 0 |" in table
    assert "| `name` | str | `\"x\"` | folder of `<slide stem>.png` masks, or &lt;stem> |" in table
    assert "| `inner` | section |  | a section |" in table


def _readme(tmp_path: Path, body: str = "") -> Path:
    parts = ["# Title", "prose before"]
    for name in configdoc.NAMES:
        begin, end = configdoc.markers(name)
        parts += [f"## {name}", f"prose about {name}", begin, body, end, "prose after"]
    path = tmp_path / "README.md"
    path.write_text("\n".join(parts) + "\n")
    return path


def test_update_fills_only_between_markers_and_is_idempotent(tmp_path: Path) -> None:
    old = _readme(tmp_path, "| `old` | table |").read_text()
    assert configdoc.stale(old) == configdoc.NAMES
    new = configdoc.update(old)
    assert configdoc.stale(new) == [] and configdoc.update(new) == new
    assert "| `old` | table |" not in new and new.count("prose after") == len(configdoc.NAMES)
    assert new.startswith("# Title\nprose before\n## layer1\nprose about layer1\n<!-- config:layer1 -->\n")
    layer1 = new.partition("<!-- config:layer1 -->")[2].partition("<!-- /config:layer1 -->")[0]
    assert "| `reader.batch_size` | int | `64` |" in layer1 and "| `reader.batch` |" not in layer1


def test_a_changed_schema_doc_makes_its_table_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = configdoc.update(_readme(tmp_path).read_text())
    real = configdoc.describe

    def edited(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
        rows = real(cls, prefix)
        return [(k, t, d, "changed" if k == "epochs" else doc) for k, t, d, doc in rows]

    monkeypatch.setattr(configdoc, "describe", edited)
    assert configdoc.stale(text) == ["layer2"]


def test_missing_markers_are_stale_and_refused_by_update(tmp_path: Path) -> None:
    text = _readme(tmp_path).read_text().replace("<!-- /config:explain -->", "")
    assert "explain" in configdoc.stale(text)
    with pytest.raises(CamnetError, match="config table 'explain'"):
        configdoc.update(text)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "layer3_inference.pipeline.configdoc", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_cli_check_names_the_stale_table_and_write_fixes_it(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(configdoc.update(_readme(tmp_path).read_text()).replace("| `epochs` |", "| `epoch` |"))
    check = _cli("--check", str(readme))
    assert check.returncode == 1 and check.stdout == ""
    assert check.stderr.splitlines() == [f"{readme}: config table 'layer2' is stale or missing (regenerate: "
                                         f"{configdoc.COMMAND})"]
    write = _cli("--write", str(readme))
    assert write.returncode == 0 and write.stdout == f"{readme}: generated blocks rewritten: layer2\n"
    assert _cli("--check", str(readme)).returncode == 0
    assert "| `epochs` |" in readme.read_text()


def test_cli_write_without_markers_is_one_error_line(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no tables here\n")
    proc = _cli("--write", str(readme))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert readme.read_text() == "# no tables here\n"


def test_the_layer1_reader_key_is_named_as_in_layer3() -> None:
    layer1, heatmap = ({row[0] for row in describe(c) if row[0].startswith("reader.")} for c in (Layer1Config,
                                                                                             HeatmapConfig))
    assert "reader.batch_size" in layer1 & heatmap and "reader.batch" not in layer1
