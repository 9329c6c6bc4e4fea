"""What every stage of a run receives: device, the [run] config, progress display, output folder
and resume state."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rtk.config.schema import RunConfig
from rtk.services.state import RunFolder, StateFile, train_state_path


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from rtk.errors import RtkError

        raise RtkError(f'device "{name}" was asked for but no CUDA device is available; use device = "cpu" or "auto"')
    return torch.device(name)


@dataclass
class RunContext:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # The [run] table whole: seed and fast paths (rtk.config.schema.RunConfig documents them; its
    # defaults change no number). ``device`` above is its device as resolved for this process.
    run: RunConfig = field(default_factory=RunConfig)
    console: Console = field(default_factory=lambda: Console(stderr=True))
    show_progress: bool = True
    out_dir: Path | None = None
    # Where fit keeps training checkpoints (None: it keeps none) and whether it continues from them.
    checkpoint_dir: Path | None = None
    resume: bool = False
    run_index: int = 0
    train_stage: str | None = None
    # Training curves (rtk.services.metrics.MetricsLog; None: not recorded) and the name of the
    # stage training now, e.g. "source 5009383294552c87" or "transfer objective=natural".
    metrics: object | None = None
    curve_stage: str | None = None
    _fits: dict = field(default_factory=dict, repr=False)

    @property
    def seed(self) -> int:
        """The run seed ([run] seed)."""
        return self.run.seed

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A CPU batch on the run's device: pinned first when ``pin_memory`` (so the copy can
        overlap compute with ``non_blocking``), channels_last for 4-D images when asked."""
        run = self.run
        if self.device.type == "cuda" and run.pin_memory and tensor.device.type == "cpu":
            tensor = tensor.pin_memory()
        tensor = tensor.to(self.device, non_blocking=run.non_blocking and self.device.type == "cuda")
        if run.channels_last and tensor.ndim == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def autocast(self, stage: str = "train"):
        """bf16 autocast for ``stage`` ("train" or "eval") when the run asks for it, else a no-op."""
        kind = self.run.amp if stage == "train" else self.run.eval_amp
        if kind == "off":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def fast_model(self, model):
        """The [run] fast paths that act on the model: channels_last weights, compiled forward.
        nn.Module.compile compiles in place, so state dicts, ``features`` and ``head`` are untouched."""
        if self.run.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.run.compile and not getattr(model, "_rtk_compiled", False):
            model.compile()
            model._rtk_compiled = True
        return model

    def log_metrics(self, record: dict) -> None:
        """Append ``record`` (a dict of numbers, see rtk.services.metrics) to the run's
        metrics.jsonl under the stage training now; nothing outside a run folder or off rank 0.
        A strategy that measures something per epoch (validation robust accuracy) calls this with
        ``{"kind": "validation", "fit": ..., "epoch": e, "val_robust_acc": x}``."""
        if self.metrics is None or not self.world.is_main:
            return
        self.metrics.record({"stage": self.curve_stage or self.train_stage or "train", **record})

    @property
    def world(self):
        """This process's rank and the job's size (rtk.services.distributed.World)."""
        from rtk.services.distributed import world

        return world()

    def generator(self, offset: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
        """A fresh generator seeded from the run seed (offset separates independent streams)."""
        return torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + offset)

    def train_checkpoint(self, stage: str | None = None) -> Path | None:
        """The checkpoint file of the next ``fit`` of ``stage`` (default: the stage running now).

        A strategy that trains twice (probe, then fine-tune) gets one file per call, so that a
        resumed run finds the first training finished and continues the second.
        """
        stage = stage or self.train_stage
        if self.checkpoint_dir is None or stage is None:
            return None
        calls = self._fits[stage] = self._fits.get(stage, -1) + 1
        return train_state_path(self.checkpoint_dir, stage, self.run_index, calls)

    def state(self, name: str, kind: str | None = None) -> StateFile | None:
        """This run point's resume-state file ``name``, e.g. ``ctx.state("certify", "certification")``:
        a certifier's per-example rows (``.rows(fingerprint)``), continued when the run resumes and
        removed once its results are saved. None outside a run folder (``out_dir`` None). The one
        way a plugin keeps state: it never builds a path in the run folder itself."""
        if self.out_dir is None:
            return None
        return RunFolder(Path(self.out_dir), self.resume).rows(name, self.run_index, kind)

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None):
        """A rich progress bar for a long loop; yields ``advance(n=1)``."""
        if not self.show_progress or not self.console.is_terminal:  # bars are noise in logs and pipes
            yield lambda n=1: None
            return
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("eta"), TimeRemainingColumn())
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)
