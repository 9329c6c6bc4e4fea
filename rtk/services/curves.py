"""Training curves: RUN_DIR/metrics.jsonl drawn as one figure (``rtk plot RUN_DIR --curves``).

What metrics.jsonl holds (written by rtk.services.metrics, one JSON object a line, appended as
training goes): for every fit, with ``stage`` (``"source KEY"``, ``"transfer POINT-ID"``) and
``fit`` (``"train"``, ``"probe"``, ...), a ``kind = "epoch"`` record after each epoch (``loss``,
``lr``, ``clean_acc`` on ``clean_acc_on``, ``examples_per_s``, ...), ``kind = "step"`` records of
the running loss every ``[run] log_every`` optimizer steps, and ``kind = "validation"`` records of
a strategy's own per-epoch score (RoLI's ``val_robust_acc``). A resumed run appends an epoch again,
and a killed writer may leave a cut line.

``read_metrics`` gives its records: lines that are not JSON objects skipped, only the last record
of each (stage, fit, kind, epoch[, step]) kept. ``curve_series`` turns them into plain lines
(tested without drawing); ``curves_figure`` draws them: one panel per quantity present (loss, lr,
clean_acc, val_robust_acc, examples_per_s; up to three a row), x = epoch, one line per training
("stage / fit") in the same colour in every panel, the step-wise loss as a thin line, a log lr axis
when lr spans more than two decades, the legend below the panels. ``plot_curves`` writes that
figure to RUN_DIR/curves.png atomically.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from rtk.errors import RtkError
from rtk.services.metrics import FILE as METRICS_FILE
from rtk.services.plots import LOG_SPAN, distinct_styles, is_number, legend_below, new_figure, save_png, value_key

CURVE_QUANTITIES = ("loss", "lr", "clean_acc", "val_robust_acc", "examples_per_s")


@dataclass
class Curve:
    """One line of a curves panel: ``quantity`` over epochs for one ``training`` ("stage / fit");
    ``steps``: the running loss recorded every N optimizer steps (fractional epochs, a thin line)."""

    training: str
    quantity: str
    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)
    steps: bool = False


def _identity(record: dict) -> str:
    """What a resumed run repeats: the record of (stage, fit, kind, epoch[, step]); the last wins."""
    kind = record.get("kind", "epoch")
    return value_key([record.get("stage"), record.get("fit"), kind, record.get("epoch"),
                 record.get("step") if kind == "step" else None])


def _read(path: Path) -> tuple[list[dict], int]:
    """The de-duplicated records of ``path`` (in the order of their last occurrence) and the
    number of lines that were not a JSON object (a line cut by a killed writer, garbage)."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise RtkError(f"{path} is unreadable ({type(exc).__name__}: {exc.strerror or exc});"
                       " check its permissions") from None
    latest: dict[str, dict] = {}
    skipped = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:  # includes UnicodeDecodeError
            skipped += 1
            continue
        if not isinstance(record, dict):
            skipped += 1
            continue
        identity = _identity(record)
        latest.pop(identity, None)  # re-inserted: the repeat takes the later place
        latest[identity] = record
    return list(latest.values()), skipped


def _metrics_path(path: str | Path) -> Path:
    path = Path(path)
    return path / METRICS_FILE if path.is_dir() else path


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl (or of RUN_DIR/metrics.jsonl when given a folder), parsed,
    lines that are not JSON objects skipped, and only the last record of each (stage, fit, kind,
    epoch[, step]) kept (a resumed run appends an epoch again). RtkError when it is missing."""
    path = _metrics_path(path)
    if not path.is_file():
        raise RtkError(f"{path} does not exist; give a run folder whose training wrote metrics.jsonl")
    return _read(path)[0]


def training_name(record: dict) -> str:
    """How a training is called in a legend: "stage / fit" (either may be missing; the fit alone
    when it already names the stage, as a source's "source KEY (objective on data)" does)."""
    parts = [str(record[k]) for k in ("stage", "fit") if record.get(k) not in (None, "")]
    if len(parts) == 2 and parts[1].startswith(parts[0]):
        parts = parts[1:]
    return " / ".join(parts) or "training"


def curve_series(records: list[dict]) -> list[Curve]:
    """The lines to draw from metrics.jsonl records: pure data, trainings in order of appearance,
    each line sorted by epoch. "epoch" records give every quantity at ``epoch``; "validation"
    records add ``val_robust_acc`` at ``epoch``; "step" records give the loss at
    ``step / steps_per_epoch``. Values that are not finite numbers are left out."""
    points: dict[tuple[str, str, bool], dict[float, float]] = {}
    for record in records:
        kind = record.get("kind", "epoch")
        training = training_name(record)
        if kind == "step":
            step, per_epoch = record.get("step"), record.get("steps_per_epoch")
            if is_number(step) and is_number(per_epoch) and per_epoch > 0 and is_number(record.get("loss")):
                points.setdefault((training, "loss", True), {})[step / per_epoch] = float(record["loss"])
            continue
        quantities = CURVE_QUANTITIES if kind == "epoch" else ("val_robust_acc",) if kind == "validation" else ()
        epoch = record.get("epoch")
        if not is_number(epoch):
            continue
        for quantity in quantities:
            if is_number(record.get(quantity)):
                points.setdefault((training, quantity, False), {})[float(epoch)] = float(record[quantity])
    curves = []
    for (training, quantity, steps), by_x in points.items():
        xs = sorted(by_x)
        curves.append(Curve(training, quantity, xs, [by_x[x] for x in xs], steps))
    return curves


def curves_figure(curves: list[Curve], title: str = "", clean_on: str = ""):
    """The matplotlib Figure of ``curves`` (no file written): one panel per quantity present
    (CURVE_QUANTITIES order), up to three panels a row, one line per training with the same
    colour in every panel, the step-wise loss as a thin line, the legend below the panels."""
    quantities = [q for q in CURVE_QUANTITIES if any(c.quantity == q for c in curves)]
    trainings = list(dict.fromkeys(c.training for c in curves))
    columns = min(3, len(quantities))
    rows = math.ceil(len(quantities) / columns)
    fig = new_figure(4.2 * columns + 0.4, 3.0 * rows + 0.4)
    axes = fig.subplots(rows, columns, squeeze=False, sharex=True).ravel()
    for extra in axes[len(quantities):]:
        extra.set_visible(False)
    style = distinct_styles(trainings, ("-", "--", ":", "-."))
    stepped_only = {c.training for c in curves} - {c.training for c in curves if not c.steps}
    for ax, quantity in zip(axes, quantities):
        for curve in (c for c in curves if c.quantity == quantity):
            color, linestyle = style[curve.training]
            if curve.steps:
                ax.plot(curve.xs, curve.ys, linestyle, color=color, linewidth=0.7, alpha=0.6,
                        label=curve.training if curve.training in stepped_only else None)
            else:
                ax.plot(curve.xs, curve.ys, linestyle, color=color, linewidth=1.6, marker=".", markersize=4,
                        label=curve.training)
        values = [y for c in curves if c.quantity == quantity for y in c.ys]
        if quantity == "lr" and values and min(values) > 0 and max(values) / min(values) > LOG_SPAN:
            ax.set_yscale("log")
        ax.set_title(f"{quantity} (on {clean_on})" if quantity == "clean_acc" and clean_on else quantity)
        ax.grid(True, alpha=0.3)
    for ax in axes[:len(quantities)]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_tick_params(labelbottom=True)
    handles = {}
    for ax in axes[:len(quantities)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    labels = [t for t in trainings if t in handles]
    legend_below(fig, [handles[k] for k in labels], labels)
    if title:
        fig.suptitle(title)
    return fig


def plot_curves(run_dir: Path, out: Path | None = None) -> Path:
    """Draw RUN_DIR/metrics.jsonl (see ``curves_figure``) into ``out`` (default RUN_DIR/curves.png),
    written atomically. Lines that are not JSON objects are skipped (the title counts them).
    One-line RtkError when the folder or the file is missing, or it holds no curves."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RtkError(f"{run_dir} is not a folder; give the output folder of `rtk run` (it holds {METRICS_FILE})")
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise RtkError(f"{run_dir} has no {METRICS_FILE}: training writes it, so runs made before rtk recorded"
                       " training curves, and runs without training (evaluation only, cached sources), have none")
    records, skipped = _read(path)
    curves = curve_series(records)
    unreadable = f"{skipped} unreadable line{'s' if skipped != 1 else ''} skipped"
    if not curves:
        raise RtkError(f"{path} holds no training curves (no epoch, step or validation record with a number"
                       f" among {', '.join(CURVE_QUANTITIES)}{'; ' + unreadable if skipped else ''})")
    clean_on = "/".join(dict.fromkeys(str(r["clean_acc_on"]) for r in records
                                      if is_number(r.get("clean_acc")) and r.get("clean_acc_on")))
    title = f"{run_dir.resolve().name}: training curves" + (f" ({unreadable})" if skipped else "")
    fig = curves_figure(curves, title, clean_on)
    return save_png(fig, Path(out) if out is not None else run_dir / "curves.png")
