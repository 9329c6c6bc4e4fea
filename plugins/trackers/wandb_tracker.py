"""Weights & Biases tracker: a W&B run, offline by default.

Defaults: project = "rtk", mode = "offline", dir = OUT, entity = your default one. The run is
named after the run folder and grouped under the recipe's run name. Offline, everything stays in
OUT/wandb/offline-run-<time>-<id>/ (the run's log run-<id>.wandb, and files/ with copies of the
logged files); ``wandb sync OUT/wandb/offline-run-*`` uploads it later. Nothing is printed: the run
neither reports to the terminal nor captures it (settings silent, console "off").

What goes where: parameters as the run's config; curves as history ``<stage>/<metric>``; results
in the run's summary as ``results/<point>/<metric>``; files saved into the run; the end as the
exit code (0 finished, 1 failed). W&B wants one increasing step per run while every rtk stage
counts its optimizer steps from 0, so the W&B step is a private counter and the stage's own step
is logged as ``<stage>/step``, the x axis of that stage's charts (``define_metric``).
"""
from __future__ import annotations

import inspect
import shutil
from pathlib import Path
from typing import Any

import wandb

from rtk.tracking import Tracker


def build_tracker(config, out_dir: Path, run_name: str) -> WandbTracker:
    """The W&B tracker of the run in ``out_dir`` (defaults in the module's docstring)."""
    folder = Path(config.dir).expanduser() if config.dir else Path(out_dir)
    return WandbTracker(project=config.project, mode=config.mode, folder=folder.resolve(), entity=config.entity,
                        name=Path(out_dir).resolve().name, group=run_name)


class WandbTracker(Tracker):
    """One W&B run in ``folder``/wandb/, started when the rtk run starts."""

    def __init__(self, project: str, mode: str, folder: Path, entity: str | None, name: str, group: str):
        self.project, self.mode, self.folder, self.entity = project, mode, Path(folder), entity
        self.name, self.group = name, group
        self.run = None
        self.step = 0  # the W&B step: one per log_metrics call, increasing across stages
        self.stages: set[str] = set()

    def start(self, info: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(silent=True, console="off")
        # create_new: another run in this process (a sweep through the Python API, a test) keeps its own run
        self.run = wandb.init(project=self.project, entity=self.entity, mode=self.mode, dir=str(self.folder),
                              name=self.name, group=self.group, reinit="create_new", settings=settings)

    def log_params(self, params: dict[str, Any]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_metrics(self, metrics: dict[str, float], step: int, stage: str) -> None:
        if stage not in self.stages:
            self.run.define_metric(f"{stage}/step")
            self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
            self.stages.add(stage)
        self.step += 1
        values = {f"{stage}/{name}": value for name, value in metrics.items()}
        self.run.log({**values, f"{stage}/step": step}, step=self.step)

    def log_results(self, results: dict[str, float]) -> None:
        self.run.summary.update({f"results/{key}": value for key, value in results.items()})

    def log_artifact(self, path: Path) -> None:
        """Save a copy of ``path`` as it is now (W&B would link the original, which the run rewrites)."""
        files = Path(self.run.dir)
        copy = files / Path(path).name
        shutil.copyfile(path, copy)
        # the copy is already in the run's files/: saving it neither links nor warns; glob=False (newer wandb)
        # keeps brackets in the folder's name literal
        literal = {"glob": False} if "glob" in inspect.signature(self.run.save).parameters else {}
        self.run.save(str(copy), base_path=str(files), policy="now", **literal)

    def finish(self, status: str = "finished") -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if status == "finished" else 1)
        self.run = None
