"""`index`: list finished patch stores with counts and a patient- or centre-level split.

Each store is checked before it is listed; a bad one fails the command with one error line naming it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from layer1_patches.index import (
    DEFAULT_FRACTIONS,
    IndexChecks,
    assign_splits,
    index_plan,
    make_index,
    scan_stores,
    split_advice,
)
from layer1_patches.shared.errors import CamnetError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "index", help="build the dataset index Layer 2 reads",
        description="Checks each finished patch store, counts its tumour and normal patches and assigns every "
                    "slide a split (train/val/test) by patient or by centre; writes the index JSON that "
                    "Layer 2's data.index names.")
    p.add_argument("--inputs", nargs="+", type=Path, required=True, help="folders of .h5 stores, or files")
    p.add_argument("--out", type=Path, required=True, help="index JSON to write")
    p.add_argument("--split-by", choices=("patient", "centre"), default="patient",
                   help="patient: shuffled patients cut by --fractions; centre: whole centres per split (--centres)")
    p.add_argument("--fractions", default="train=0.7,val=0.15,test=0.15",
                   help="patient split shares, e.g. train=0.7,val=0.15,test=0.15")
    p.add_argument("--centres", nargs="*", default=[], metavar="SPLIT=C1,C2",
                   help="centre split, e.g. train=0,1,2 val=3 test=4")
    p.add_argument("--seed", type=int, default=0, help="patient shuffle seed")
    p.add_argument("--verify", action="store_true",
                   help="also read every patch of every store, checking its checksum (a full pass over the data; "
                        "by default stores are checked structurally: lengths, shapes, types, coords and labels)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out a damaged or unreadable store, recording it under 'skipped' in the index, "
                        "instead of failing")
    p.add_argument("--require-both-classes", action="store_true",
                   help="a split without tumour or without normal patches is an error, naming its patients and "
                        "suggesting fewer splits, other patients or a --seed that works (default: the same "
                        "message as a warning, and the index is written)")
    p.set_defaults(func=run)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise CamnetError(f"{what} {item!r}: expected SPLIT=VALUE")
        out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    fractions: dict[str, float] = {}
    for key, value in _pairs(args.fractions.split(","), "--fractions").items():
        try:
            fractions[key] = float(value)
        except ValueError:
            raise CamnetError(f"--fractions {key}={value}: not a number") from None
    centres = {k: v.split(",") for k, v in _pairs(args.centres, "--centres").items()}
    scan = scan_stores(args.inputs, args.out.parent, IndexChecks(verify=args.verify, skip_bad=args.skip_bad))
    if args.require_both_classes:
        entries = assign_splits(scan.entries, args.split_by, fractions, centres or None, args.seed)
        problems = split_advice(index_plan(entries, args.split_by, fractions or DEFAULT_FRACTIONS))
        if problems:
            raise CamnetError(f"{args.out}: not written: {'; and '.join(problems)}")
    index = make_index(scan, args.out, args.split_by, fractions, centres or None, args.seed)
    print(json.dumps({"index": str(args.out), "split_by": index.split_by, "splits": index.splits(),
                      "skipped": len(index.skipped)}, indent=1))
    return 0
