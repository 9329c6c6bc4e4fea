"""Plots of a run folder: each metric against the swept parameter, paper numbers beside ours.

What the papers draw (Shafahi et al., "Adversarially robust transfer learning", arXiv:1905.08232,
Fig. 1, 3, 4): accuracy against one swept setting (blocks retrained, images per class, hidden
layers, lambda_d). ``plot_series`` turns a results.json payload into plain series (tested without
drawing); ``render`` draws them with matplotlib (imported lazily, Agg backend) into a PNG written
atomically; ``plot_run`` is the non-fatal call the runner makes after a sweep.

Defaults: the metrics are clean, every attack label and robust (results.json order); x is the
first swept key whose values are all numbers (else the first swept key, drawn as categories);
with more swept keys, one line per combination of the others; a log x-axis when positive numeric
values span more than two decades.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtk.errors import RtkError
from rtk.services.results import metric_names
from rtk.services.state import atomic_write

LOG_SPAN = 100.0  # more than two decades between the smallest and largest positive x: log axis


@dataclass
class Series:
    """One line: a metric over x for one value of the other swept keys (``group``)."""

    metric: str
    group: str
    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)
    paper_xs: list[float] = field(default_factory=list)
    paper_ys: list[float] = field(default_factory=list)


@dataclass
class PlotData:
    x_key: str
    metrics: list[str]
    series: list[Series]
    categorical: bool = False
    log_x: bool = False
    ticks: list[str] = field(default_factory=list)  # category names, at x = 0, 1, ...
    title: str = ""


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def short_label(value: Any) -> str:
    """What a swept value is called on an axis or in a legend: a table by its name (as run ids
    name it), a weights path by its file stem, a number compactly."""
    from rtk.config.recipe import _short

    if isinstance(value, str) and ("/" in value or value.endswith((".safetensors", ".pt", ".pth"))):
        return Path(value).stem
    return _short(value)


def _labels(values: list[Any]) -> list[str]:
    """Distinct names for distinct values: two tables with the same name (cifar100 and half of
    cifar100) get the keys that tell them apart appended."""
    names = [short_label(v) for v in values]
    for i, value in enumerate(values):
        clashes = [values[j] for j in range(len(values)) if names[j] == short_label(value) and values[j] != value]
        if clashes and isinstance(value, dict):
            differing = [k for k in value if any(not isinstance(c, dict) or c.get(k) != value[k] for c in clashes)]
            extra = ", ".join(f"{k}={json.dumps(value[k])}" for k in differing)
            names[i] = f"{short_label(value)} ({extra[:40]}{'...' if len(extra) > 40 else ''})" if extra else names[i]
    return names


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def load_results(run_dir: str | Path) -> dict:
    """The results.json payload of ``run_dir``; one-line RtkError when it is missing or incomplete."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RtkError(f"{run_dir} is not a folder; give the output folder of `rtk run` (it holds results.json)")
    path = run_dir / "results.json"
    if not path.is_file():
        raise RtkError(f"{path} does not exist; give the output folder of a finished `rtk run`")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RtkError(f"{path} is unreadable ({type(exc).__name__}); rerun the recipe or restore the file") from None
    runs = payload.get("runs") if isinstance(payload, dict) else None
    if not isinstance(runs, list) or not all(isinstance(r, dict) and isinstance(r.get("metrics"), dict) for r in runs):
        raise RtkError(f"{path} is not an rtk results file (no runs with metrics)")
    if not payload.get("complete") or not runs:
        raise RtkError(f"{path} is incomplete ({len(runs)} run(s) so far); finish it with"
                       f" `rtk run RECIPE --resume --out {run_dir}`")
    return payload


def swept_keys(runs: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for run in runs for k in (run.get("params") or {})))


def choose_x(runs: list[dict], x: str | None) -> str:
    keys = swept_keys(runs)
    if x is not None:
        if x not in keys:
            raise RtkError(f'--x {x}: not a swept key of this run; swept keys: {", ".join(keys) or "none"}')
        return x
    if not keys:
        raise RtkError("nothing was swept in this run, so there is no x-axis; add a [sweep] to the recipe"
                       " (then pick the x-axis with --x KEY if several keys are swept)")
    numeric = [k for k in keys if all(is_number(run["params"].get(k)) for run in runs)]
    return numeric[0] if numeric else keys[0]  # the others become one line per value


def choose_metrics(runs: list[dict], metrics: list[str] | None) -> list[str]:
    available = metric_names(runs)
    if not metrics:
        if not available:
            raise RtkError("the runs have no metrics to plot (no [target] evaluation)")
        return available
    unknown = [m for m in metrics if m not in available]
    if unknown:
        raise RtkError(f'--metric {unknown[0]}: not in the results; available: {", ".join(available)}')
    return list(dict.fromkeys(metrics))


def plot_series(payload: dict, x: str | None = None, metrics: list[str] | None = None) -> PlotData:
    """The lines to draw, from a results.json payload: pure data, in sweep order."""
    runs = payload["runs"]
    x_key = choose_x(runs, x)
    chosen = choose_metrics(runs, metrics)
    others = [k for k in swept_keys(runs) if k != x_key]
    x_values = list({_key(r["params"].get(x_key)): r["params"].get(x_key) for r in runs}.values())
    categorical = not all(is_number(v) for v in x_values)
    ticks = _labels(x_values) if categorical else []
    position = {_key(v): (i if categorical else v) for i, v in enumerate(x_values)}
    group_values = list({_key([r["params"].get(k) for k in others]): [r["params"].get(k) for k in others]
                         for r in runs}.values())
    per_key = [_labels(list({_key(g[i]): g[i] for g in group_values}.values())) for i in range(len(others))]
    name_of = {}
    for i, key in enumerate(others):
        distinct = list({_key(g[i]): g[i] for g in group_values}.values())
        name_of[key] = {_key(v): per_key[i][j] for j, v in enumerate(distinct)}
    series: dict[tuple[str, str], Series] = {}
    for metric in chosen:
        for run in runs:
            combo = [run["params"].get(k) for k in others]
            group = ", ".join(f"{k.split('.')[-1]}={name_of[k][_key(v)]}" for k, v in zip(others, combo))
            line = series.setdefault((metric, group), Series(metric, group))
            xv = position[_key(run["params"].get(x_key))]
            value = run["metrics"].get(metric)
            if is_number(value):
                line.xs.append(xv)
                line.ys.append(float(value))
            published = (run.get("paper") or {}).get(metric)
            if is_number(published):
                line.paper_xs.append(xv)
                line.paper_ys.append(float(published))
    positive = [v for v in x_values if is_number(v) and v > 0]
    log_x = (not categorical and len(positive) == len(x_values) and len(positive) > 1
             and max(positive) / min(positive) > LOG_SPAN)
    for line in series.values():  # numbers in increasing x, so lines do not zigzag
        if not categorical:
            order = sorted(range(len(line.xs)), key=lambda i: line.xs[i])
            line.xs, line.ys = [line.xs[i] for i in order], [line.ys[i] for i in order]
    return PlotData(x_key, chosen, list(series.values()), categorical, log_x, ticks,
                    str(payload.get("recipe") or ""))


def render(data: PlotData, out: Path) -> Path:
    """Draw one panel per metric (ours: filled markers and lines; paper: hollow markers of the
    same colour) and write the PNG to ``out`` atomically."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure  # no pyplot: no global figure state, nothing left open

    panels = len(data.metrics)
    fig = Figure(figsize=(4.2 * panels + 0.4, 3.8), dpi=100, layout="constrained")
    axes = fig.subplots(1, panels, sharey=True, squeeze=False)[0]
    groups = list(dict.fromkeys(s.group for s in data.series))
    colors = {g: f"C{i % 10}" for i, g in enumerate(groups)}
    for ax, metric in zip(axes, data.metrics):
        for line in (s for s in data.series if s.metric == metric):
            label = line.group or "rtk"
            ax.plot(line.xs, line.ys, "o-", color=colors[line.group], label=label, markersize=5)
            if line.paper_xs:
                ax.plot(line.paper_xs, line.paper_ys, "o", markerfacecolor="none", markersize=9,
                        markeredgewidth=1.5, color=colors[line.group],
                        label=f"{line.group} (paper)" if line.group else "paper")
        ax.set_title(metric)
        ax.set_xlabel(data.x_key)
        ax.grid(True, alpha=0.3)
        if data.categorical:
            ax.set_xticks(range(len(data.ticks)), data.ticks, rotation=30 if len(data.ticks) > 3 else 0,
                          ha="right" if len(data.ticks) > 3 else "center", fontsize=8)
            ax.set_xlim(-0.5, len(data.ticks) - 0.5)
        elif data.log_x:
            ax.set_xscale("log")
    axes[0].set_ylabel("accuracy")
    axes[0].set_ylim(-0.02, 1.02)
    handles, labels = axes[0].get_legend_handles_labels()
    if len(labels) > 1 or any("paper" in label for label in labels):
        axes[-1].legend(handles, labels, fontsize=7, loc="best")
    if data.title:
        fig.suptitle(data.title)
    out = Path(out)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    return out


def plot(run_dir: str | Path, x: str | None = None, metrics: list[str] | None = None,
         out: str | Path | None = None) -> Path:
    """Plot ``run_dir``/results.json into ``out`` (default ``run_dir``/plot.png); RtkError on bad input."""
    data = plot_series(load_results(run_dir), x, metrics)
    return render(data, Path(out) if out is not None else Path(run_dir) / "plot.png")


def plot_run(run_dir: str | Path, console=None) -> Path | None:
    """The runner's call after a finished run: plot.png when the run swept something, else None.
    Never raises: a plot is a convenience, so a failure is one warning line, not a failed run."""
    try:
        payload = load_results(run_dir)
        if not swept_keys(payload["runs"]) or not metric_names(payload["runs"]):
            return None
        return render(plot_series(payload), Path(run_dir) / "plot.png")
    except Exception as exc:  # noqa: BLE001 - see the docstring
        if console is not None:
            from rich.markup import escape

            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            console.print(f"[yellow]warning[/yellow]: no plot: {escape(message)} (draw one with"
                          f" `rtk plot {run_dir} --x KEY`)", highlight=False, soft_wrap=True)
        return None
