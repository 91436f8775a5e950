"""Stand-ins for the stages' processes, for runner tests that must not train: each writes the completion marker
`stages.finished` reads, and behaves as its layer does towards outputs made from something else (Layer 1 and
heatmap refuse them, Layer 2 resumes its run dir instead of training again), and the index and evaluate read the
stores and heatmaps they are given as the real commands do, so a test sees which slides they took."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py

from layer1_patches.extract import output_path
from layer1_patches.shared.errors import CamnetError
from layer1_patches.shared.manifest import Manifest
from layer3_inference.outputs import final_dir

STAGE_OF = {("layer1_patches", "task"): "layer1", ("layer1_patches", "index"): "index",
            ("layer2_training", "train"): "layer2", ("layer3_inference", "pipeline"): "pipeline",
            ("layer3_inference", "evaluate"): "evaluate", ("layer3_inference", "explain"): "explain"}


def _value(argv: list[str], option: str) -> str:
    return argv[argv.index(option) + 1]


def _values(argv: list[str], option: str) -> list[str]:
    """The values of an option taking several (up to the next option)."""
    rest = argv[argv.index(option) + 1:]
    return rest[:next((i for i, a in enumerate(rest) if a.startswith("--")), len(rest))]


def _sets(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]


@dataclass
class FakeStages:
    """Records which stages ran (in order, once per stage) and which slides Layer 1 extracted."""

    ran: list[str] = field(default_factory=list)
    extracted: list[str] = field(default_factory=list)
    fail: set[str] = field(default_factory=set)  # stages that leave a partial output and fail (interrupted)

    def take(self) -> tuple[list[str], list[str]]:
        ran, extracted = list(dict.fromkeys(self.ran)), sorted(self.extracted)
        self.ran.clear()
        self.extracted.clear()
        return ran, extracted

    def __call__(self, argv: list[str], log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:  # as chain._run_module: the command heads the stage's log
            f.write(f"$ python -m {' '.join(argv)}\n")
        stage = STAGE_OF[(argv[0], argv[1])]
        if stage == "pipeline":
            stage = "heatmap" if argv[2] == "heatmap-task" else "report"
        self.ran.append(stage)
        handlers: dict[str, Callable[[list[str]], None]] = {
            "layer1": self._layer1, "heatmap": self._heatmap, "layer2": self._layer2, "index": self._index,
            "evaluate": self._evaluate}
        handlers.get(stage, self._marker(stage))(argv)

    def _marker(self, stage: str) -> Callable[[list[str]], None]:
        def write(argv: list[str]) -> None:
            if stage == "report":  # --config OUT/pipeline/experiment.yaml
                path = Path(_value(argv, "--config")).parent.parent / "report" / "index.html"
            else:
                target = Path(_value(argv, "--out"))
                path = target if stage == "index" else target / "summary.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")
        return write

    def _layer1(self, argv: list[str]) -> None:
        manifest = Manifest.load(Path(_value(argv, "--manifest")))
        entry = manifest.entry(int(_value(argv, "--index")), Path("m"))
        slide = Path(entry.slide)
        store = output_path(Path(manifest.out), slide, None)
        # as extract.store_hash: reader settings change the speed of extraction, never the patches
        made_from = json.dumps([o for o in manifest.overrides if not o.startswith("reader.")])
        annotation = entry.annotation or ""
        if store.is_file():
            with h5py.File(store, "r") as f:
                if f.attrs["made_from"] != made_from:
                    raise CamnetError(f"{store}: finished with a different config; pass --overwrite to redo it")
                if f.attrs["annotation"] != annotation:
                    raise CamnetError(f"{store}: finished with annotation {f.attrs['annotation'] or 'none'!r}, "
                                      f"this run has {annotation or 'none'!r}; pass --overwrite")
            return  # finished with this config: skipped, as extract does
        with h5py.File(store, "w") as f:
            f.attrs["complete"] = True
            f.attrs["made_from"] = made_from
            f.attrs["annotation"] = annotation
        self.extracted.append(slide.name)

    def _layer2(self, argv: list[str]) -> None:
        run_dir = Path(next(a.split("=", 1)[1] for a in argv if a.startswith("output.run_dir=")))
        metrics = run_dir / "metrics.json"
        if metrics.is_file():
            return  # a run dir of the same config resumes: nothing new is trained
        # an unfinished run dir resumes whatever config began it, as Layer 2 resumes its last checkpoint
        started = run_dir / "started.json"
        made_from = json.loads(started.read_text()) if started.is_file() else _sets(argv)
        run_dir.mkdir(parents=True, exist_ok=True)
        started.write_text(json.dumps(made_from))
        if "layer2" in self.fail:
            raise CamnetError("layer2_training train exited with status 143 (interrupted)")
        metrics.write_text(json.dumps({"model": uuid.uuid4().hex, "made_from": made_from}))

    def _index(self, argv: list[str]) -> None:
        from layer1_patches.index import find_stores

        out = Path(_value(argv, "--out"))
        out.parent.mkdir(parents=True, exist_ok=True)
        found = find_stores(Path(a) for a in _values(argv, "--inputs"))
        out.write_text(json.dumps({"slides": [p.stem for p in found]}))

    def _evaluate(self, argv: list[str]) -> None:
        from layer3_inference.evaluate import finished_outputs

        only = _values(argv, "--slides") if "--slides" in argv else None
        out = Path(_value(argv, "--out"))
        out.mkdir(parents=True, exist_ok=True)
        seen = finished_outputs(Path(_value(argv, "--heatmaps")), only)
        (out / "summary.json").write_text(json.dumps({"slides": [d.name for d in seen]}))

    def _heatmap(self, argv: list[str]) -> None:
        manifest = Manifest.load(Path(_value(argv, "--manifest")))
        slide = Path(manifest.entry(int(_value(argv, "--index")), Path("m")).slide)
        model = (Path(_value(argv, "--model")) / "metrics.json").read_text()
        run_hash = hashlib.sha256(f"{manifest.overrides}{model}".encode()).hexdigest()
        final = final_dir(Path(manifest.out), slide)
        summary = final / "summary.json"
        if summary.is_file():
            if json.loads(summary.read_text())["run_hash"] != run_hash:
                raise CamnetError(f"{final}: finished with a different config or model; pass --overwrite")
            return
        final.mkdir(parents=True, exist_ok=True)
        (final / "probabilities.h5").write_text("")
        summary.write_text(json.dumps({"run_hash": run_hash, "files": ["probabilities.h5"]}))
