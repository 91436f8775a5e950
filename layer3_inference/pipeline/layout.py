"""Where every output of one experiment lives: the folder layout the stages use to find each other's files.

Its own module so that the config (which validates Layer 2's overrides as the chain will place them) and the
stages both read it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """Every output of one experiment lives under `out`; stages find each other's files here."""

    out: Path

    @property
    def patches(self) -> Path:
        return self.out / "patches"

    @property
    def manifest(self) -> Path:
        return self.patches / "manifest.json"

    @property
    def index(self) -> Path:
        return self.patches / "index.json"

    @property
    def run_dir(self) -> Path:
        return self.out / "run"

    @property
    def heatmaps(self) -> Path:
        return self.out / "heatmaps"

    @property
    def heatmap_manifest(self) -> Path:
        return self.heatmaps / "manifest.json"

    @property
    def evaluate(self) -> Path:
        return self.out / "evaluate"

    @property
    def explain(self) -> Path:
        return self.out / "explain"

    @property
    def report(self) -> Path:
        return self.out / "report" / "index.html"

    @property
    def state(self) -> Path:
        return self.out / "pipeline"

    @property
    def jobs(self) -> Path:
        return self.state / "jobs.json"

    @property
    def timings(self) -> Path:
        return self.state / "timings.json"

    @property
    def resolved(self) -> Path:
        return self.state / "experiment.yaml"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def no_annotations(self) -> Path:
        return self.state / "no_annotations"


def layer2_sets(layout: Layout, overrides: list[str]) -> list[str]:
    # The chain owns where the index and the run dir are; a user's value for them would break the next stage.
    owned = ("data.index=", "output.run_dir=")
    kept = [o for o in overrides if not o.replace(" ", "").startswith(owned)]
    return [*kept, f"data.index={layout.index}", f"output.run_dir={layout.run_dir}"]
