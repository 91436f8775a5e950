"""The README's generated parts: one markdown table per config class, one JSON Schema per contract between layers.

Each sits between marker comments, `<!-- config:NAME -->` ... `<!-- /config:NAME -->` for a config table and
`<!-- schema:NAME -->` ... `<!-- /schema:NAME -->` for a contract, so prose around it stays hand-written.
`python -m layer3_inference.pipeline.configdoc --write README.md` rewrites every block from
`typedconfig.describe` and `typedconfig.json_schema`; `--check README.md` exits 1 naming each block that differs
from the code; without either it prints the blocks.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from layer1_patches.config import Layer1Config
from layer1_patches.index import IndexEntry
from layer1_patches.shared.atomic import write_text_atomic
from layer1_patches.shared.errors import CamnetError
from layer1_patches.shared.typedconfig import describe, json_schema
from layer1_patches.store import SlideMeta
from layer2_training.config import Layer2Config
from layer2_training.sidecar import ModelSidecar
from layer3_inference.config import EvaluateConfig, HeatmapConfig
from layer3_inference.explain.config import ExplainConfig
from layer3_inference.pipeline.config import ExperimentConfig
from layer3_inference.summaries import EvaluationSummary, HeatmapSummary

COMMAND = "python -m layer3_inference.pipeline.configdoc --write README.md"
TABLES: dict[str, type] = {"layer1": Layer1Config, "layer2": Layer2Config, "heatmap": HeatmapConfig,
                           "evaluate": EvaluateConfig, "explain": ExplainConfig, "experiment": ExperimentConfig}
# the contracts between the layers: (class, title, where it is written)
CONTRACTS: dict[str, tuple[type, str, str]] = {
    "store": (SlideMeta, "Patch store attributes", "attributes of every `<stem>.h5`"),
    "index": (IndexEntry, "Dataset index entry", "`entries[i]` of `index.json`"),
    "sidecar": (ModelSidecar, "Model sidecar", "`<run dir>/model.json`"),
    "heatmap": (HeatmapSummary, "Heatmap summary", "`heatmaps/<stem>/summary.json`"),
    "evaluation": (EvaluationSummary, "Evaluation summary", "`evaluate/summary.json`"),
}
NAMES = [*TABLES, *(f"schema:{name}" for name in CONTRACTS)]  # every block, config tables by their bare name


def label(name: str) -> str:
    """How messages name a block: `config table 'layer2'`, `schema 'sidecar'`."""
    return f"schema '{name.removeprefix('schema:')}'" if name.startswith("schema:") else f"config table '{name}'"


def markers(name: str) -> tuple[str, str]:
    tag = name if name.startswith("schema:") else f"config:{name}"
    return f"<!-- {tag} -->", f"<!-- /{tag} -->"


def cell(text: str, code: bool = False) -> str:
    """One table cell: `|` escaped; outside code spans `<` escaped too, so `<slide stem>` is not read as HTML."""
    if code:
        return f"`{text}`".replace("|", "\\|")
    parts = text.split("`")
    parts[::2] = [p.replace("<", "&lt;") for p in parts[::2]]  # even parts lie outside code spans
    return "`".join(parts).replace("|", "\\|")


def render(cls: type) -> str:
    """The markdown table of one config class: key, type, default, meaning; a section's defaults are its keys'."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, kind, default, doc in describe(cls):
        lines.append(f"| {cell(key, code=True)} | {cell(kind)} | {cell(default, code=True) if default else ''} "
                     f"| {cell(doc)} |")
    return "\n".join(lines)


def compact_json(schema: dict[str, Any]) -> str:
    """JSON with one line per top-level key and one per property: short enough to read in a README."""
    lines = []
    for key, value in schema.items():
        if key == "properties":
            props = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items()]
            lines.append(' "properties": {\n' + ",\n".join(props) + "\n }")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}"


def schema_block(name: str) -> str:
    """A contract's JSON Schema, folded (the README stays readable), with where the file is written."""
    cls, title, where = CONTRACTS[name]
    begin, end = markers(f"schema:{name}")
    schema = compact_json(json_schema(cls, title))
    source = f"{cls.__module__}.{cls.__name__}"
    return (f"{begin}\n<details><summary>{title} ({where}): JSON Schema of <code>{source}</code></summary>\n\n"
            f"```json\n{schema}\n```\n\n</details>\n{end}")


def block(name: str) -> str:
    """Markers, a note on where the table comes from, the table (or a contract's schema block)."""
    if name.startswith("schema:"):
        return schema_block(name.removeprefix("schema:"))
    begin, end = markers(name)
    source = TABLES[name].__module__.replace(".", "/") + ".py"
    note = f"<!-- generated from {TABLES[name].__name__} in {source}: edit the schema, then run {COMMAND} -->"
    return f"{begin}\n{note}\n\n{render(TABLES[name])}\n\n{end}"


def _span(text: str, name: str) -> re.Match[str] | None:
    begin, end = (re.escape(m) for m in markers(name))
    found = list(re.finditer(f"{begin}.*?{end}", text, flags=re.DOTALL))
    return found[0] if len(found) == 1 else None


def stale(text: str) -> list[str]:
    """Names of the tables that are missing from `text` or differ from the schema."""
    return [name for name in NAMES if (m := _span(text, name)) is None or m.group(0) != block(name)]


def update(text: str) -> str:
    """`text` with every table regenerated; a table without exactly one pair of markers is an error."""
    for name in NAMES:
        m = _span(text, name)
        if m is None:
            begin, end = markers(name)
            raise CamnetError(f"no single '{begin}' ... '{end}' pair to put the {label(name)} in")
        text = text[:m.start()] + block(name) + text[m.end():]
    return text


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as err:
        raise CamnetError(f"{path}: cannot read ({err.strerror or err})") from None


def run(args: argparse.Namespace) -> int:
    if args.check is not None:
        names = stale(_read(args.check))
        for name in names:
            print(f"{args.check}: {label(name)} is stale or missing (regenerate: {COMMAND})",
                  file=sys.stderr)
        return 1 if names else 0
    if args.write is not None:
        old = _read(args.write)
        new, changed = update(old), stale(old)
        if new != old:
            write_text_atomic(args.write, new)
        print(f"{args.write}: generated blocks {'rewritten: ' + ', '.join(changed) if changed else 'already current'}")
        return 0
    print("\n\n".join(block(name) for name in NAMES))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m layer3_inference.pipeline.configdoc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", type=Path, metavar="README", help="regenerate the tables in this file")
    mode.add_argument("--check", type=Path, metavar="README", help="exit 1 when a table in this file is stale")
    try:
        return run(parser.parse_args(argv))
    except CamnetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
