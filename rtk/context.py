"""What every stage of a run receives: device, seeds, progress display, output folder."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


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
    seed: int = 0
    console: Console = field(default_factory=lambda: Console(stderr=True))
    show_progress: bool = True
    out_dir: Path | None = None

    def generator(self, offset: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
        """A fresh generator seeded from the run seed (offset separates independent streams)."""
        return torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + offset)

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
