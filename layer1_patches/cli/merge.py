"""`merge`: join a slide's dense shard files into `<stem>.h5` (what the sbatch script does after srun)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from layer1_patches.merge import merge_shards


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "merge", help="merge dense shard files of one slide",
        description="Joins OUT/<stem>.shard-i-of-K.h5 (from `extract --shard i/K`) into OUT/<stem>.h5 and "
                    "removes the shard files.")
    p.add_argument("--slide", type=Path, required=True, help="the slide the shards came from")
    p.add_argument("--out", type=Path, required=True, help="folder holding <stem>.shard-i-of-K.h5")
    p.add_argument("--shards", type=int, required=True, help="K")
    p.add_argument("--keep-shards", action="store_true", help="keep the shard files after merging")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(merge_shards(args.out, args.slide, args.shards, args.keep_shards))
    return 0
