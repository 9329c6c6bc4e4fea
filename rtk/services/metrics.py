"""Training curves: RUN_DIR/metrics.jsonl, one JSON object per line, appended as training goes.

Every ``fit`` (the source's training, each fit of a transfer strategy) writes, with ``stage``
(``"source KEY"`` or ``"transfer POINT-ID"``) and ``fit`` (the fit's description, e.g. ``"train"``,
``"probe"``):

- ``kind = "epoch"`` after every epoch: ``epoch`` (epochs done, 1-based), ``epochs``, ``step``,
  ``steps_per_epoch``, ``loss`` (the epoch's mean), ``lr``, ``clean_acc`` and ``clean_acc_on``
  (``[run] curve_examples`` training examples in eval mode, ``"train"``), ``seconds`` (since the
  fit began), ``epoch_seconds``, ``examples_per_s``, ``time``;
- ``kind = "step"`` every ``[run] log_every`` optimizer steps of epochs longer than that: ``loss``
  (the mean since the last record), ``lr``, ``epoch`` (the epoch in progress), ``step``;
- ``kind = "validation"``: a strategy's own per-epoch measurement (RoLI's validation robust
  accuracy, ``val_robust_acc``), at the ``epoch`` it scored.

Lines are appended with one ``write`` each (O_APPEND), so shards writing one folder interleave
whole lines; a resumed run appends an epoch again, and readers keep the last record of each
(stage, fit, kind, epoch, step). Only rank 0 writes. Each record also goes to the run's trackers.
"""
from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

FILE = "metrics.jsonl"


class MetricsLog:
    """Appends records to ``out_dir/metrics.jsonl`` and hands them to the run's trackers."""

    def __init__(self, out_dir: Path, trackers=None):
        self.path = Path(out_dir) / FILE
        self.trackers = trackers

    def record(self, record: dict) -> None:
        record = {**record, "time": datetime.now().isoformat(timespec="seconds")}
        line = json.dumps(record, allow_nan=False, default=str) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)
        if self.trackers:
            name = f"{record.get('stage')}/{record.get('fit')}"
            values = {k: v for k, v in record.items() if k not in ("stage", "fit", "kind", "time", "step",
                                                                    "epochs", "steps_per_epoch", "point")}
            self.trackers.log_metrics(values, record.get("step", 0), name)


def finite(value) -> float | None:
    """A float for JSON (None for NaN and infinities, which JSON cannot hold)."""
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None
