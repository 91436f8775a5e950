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
    """An experiment YAML at `path`; a layer `config` given repo-relative (configs/...) is written absolute, since
    an experiment file's relative paths are relative to its own folder (a tmp dir here)."""
    for ref in keys.values():
        if isinstance(ref, dict) and str(ref.get("config", "")).startswith("configs/"):
            ref["config"] = str(REPO / ref["config"])
    path.write_text(yaml.safe_dump(keys, sort_keys=False))
    return path


VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
                  "wbr"})


class _Tables(HTMLParser):
    """Tables by id, texts of elements with an id, the order of tables, and `<li data-source>` warnings."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[dict[str, str]]] = {}
        self.texts: dict[str, str] = {}
        self.order: list[str] = []
        self.items: list[dict[str, str]] = []
        self._table: str | None = None
        self._row: dict[str, str] | None = None
        self._col: str | None = None
        self._id: str | None = None
        self._id_tag: tuple[str, int] | None = None  # tag of the element with the id, and nesting of that tag
        self._item: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "li" and a.get("data-code") is not None:
            self._item = {k[5:]: v or "" for k, v in a.items() if k.startswith("data-")}
            self._item["text"] = ""
            self.items.append(self._item)
        if self._id_tag and tag == self._id_tag[0]:
            self._id_tag = (tag, self._id_tag[1] + 1)
        ident = a.get("id") or ""
        if tag == "table" and ident:
            self._table = ident
            self.tables[ident] = []
            self.order.append(ident)
        elif tag == "tr" and self._table:
            self._row = {}
        elif tag == "td" and self._row is not None:
            self._col = a.get("data-col")
        elif ident and tag not in VOID:
            self._id = ident
            self._id_tag = (tag, 0)
            self.texts[ident] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "li":
            self._item = None
        if tag == "table":
            self._table = None
        elif tag == "tr" and self._table and self._row:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "td":
            self._col = None
        elif self._id_tag and tag == self._id_tag[0]:
            if self._id_tag[1] == 0:
                self._id, self._id_tag = None, None
            else:
                self._id_tag = (tag, self._id_tag[1] - 1)

    def handle_data(self, data: str) -> None:
        if self._item is not None:
            self._item["text"] += data
        if self._row is not None and self._col:
            self._row[self._col] = self._row.get(self._col, "") + data
        elif self._id:
            self.texts[self._id] += data


def parse_report(page: str) -> _Tables:
    parser = _Tables()
    parser.feed(page)
    return parser


def report_tables(path: Path) -> tuple[dict[str, list[dict[str, str]]], dict[str, str]]:
    """Tables of the report by id (rows keyed by data-col), and texts of elements with an id."""
    parser = parse_report(path.read_text())
    return parser.tables, parser.texts


class _Balance(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        ident = dict(attrs).get("id")
        if ident:
            self.ids.append(ident)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        pass  # <x/>: opens and closes at once (SVG elements)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}>")
        else:
            self.stack.pop()


def assert_well_formed(page: str) -> None:
    """Every tag closed in order and no id twice: an unescaped `<b>` or `</table>` in a file's text breaks this,
    as it would break the page in a browser."""
    checker = _Balance()
    checker.feed(page)
    checker.close()
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack)
    assert len(checker.ids) == len(set(checker.ids)), sorted(i for i in checker.ids if checker.ids.count(i) > 1)


def report_data(**values: Any) -> Any:
    """A ReportData with nothing in it but `values`: the report of a run whose other stages did not run."""
    from layer3_inference.pipeline.collect import ReportData

    base: dict[str, Any] = dict(name="t", out="o", generated="now", cohort=[], splits={}, history=[], metrics={},
                                evaluate_summary={}, evaluate_rows=[], explain_summary=None, images={}, slides=[],
                                panels=[], status=[], timings={}, configs={}, versions={})
    return ReportData(**{**base, **values})
