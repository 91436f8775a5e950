"""Pipeline test helpers: run the CLI, write experiment YAMLs, read the report's tables back."""

from __future__ import annotations

import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def run_pipeline(args: list[str], env: dict[str, str] | None = None, timeout: float = 300,
                 cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    import os

    full = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "layer3_inference", "pipeline", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=timeout, check=False)


def write_experiment(path: Path, **keys: Any) -> Path:
    path.write_text(yaml.safe_dump(keys, sort_keys=False))
    return path


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[dict[str, str]]] = {}
        self.texts: dict[str, str] = {}
        self._table: str | None = None
        self._row: dict[str, str] | None = None
        self._col: str | None = None
        self._id: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table" and a.get("id"):
            self._table = a["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self._row = {}
        elif tag == "td" and self._row is not None:
            self._col = a.get("data-col")
        elif a.get("id"):
            self._id = a["id"]
            self.texts[self._id] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag == "tr" and self._table and self._row:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "td":
            self._col = None
        elif self._id and tag == "p":
            self._id = None

    def handle_data(self, data: str) -> None:
        if self._row is not None and self._col:
            self._row[self._col] = self._row.get(self._col, "") + data
        elif self._id:
            self.texts[self._id] += data


def report_tables(path: Path) -> tuple[dict[str, list[dict[str, str]]], dict[str, str]]:
    """Tables of the report by id (rows keyed by data-col), and texts of elements with an id."""
    parser = _Tables()
    parser.feed(path.read_text())
    return parser.tables, parser.texts
