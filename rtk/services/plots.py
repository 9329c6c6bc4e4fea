"""Plots of a run folder: each metric against the swept parameter, paper numbers beside ours.

What the papers draw (Shafahi et al., "Adversarially robust transfer learning", arXiv:1905.08232,
Fig. 1, 3, 4): accuracy against one swept setting (blocks retrained, images per class, hidden
layers, lambda_d). ``plot_series`` turns a results.json payload into plain series (tested without
drawing); ``figure`` draws them with matplotlib (imported lazily, Agg backend, no pyplot) and
``render`` writes that figure to a PNG atomically; ``plot_run`` is the non-fatal call the runner
makes after a sweep.

Defaults: the metrics are clean, every attack label and robust (results.json order); x is the
first swept key whose values are all numbers (else the first swept key, drawn as categories);
with more swept keys, one series per combination of the others; a log x-axis when positive
numeric values span more than two decades. A numeric x is drawn as lines; a categorical one
(strings, tables, booleans) as grouped bars: one group per category, one bar per metric (one
panel per metric and one bar per series when other keys are swept too), paper numbers as hollow
diamonds on their bar. ``[run] seeds`` repeats each point per seed (params ``run.seed``, runs
carrying ``"point"``): a point is the mean over its seeds with an error bar of their standard
deviation (sample, n - 1), and ``run.seed`` is never an axis nor a series.

The training curves of RUN_DIR/metrics.jsonl live in rtk.services.curves (which draws with the
figure helpers here); ``plot_curves`` and ``read_metrics`` are importable from here too.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtk.config.recipe import SEED_KEY  # the param [run] seeds sets: averaged, never an axis
from rtk.errors import RtkError
from rtk.services.results import metric_names
from rtk.services.state import atomic_write

LOG_SPAN = 100.0  # more than two decades between the smallest and largest positive x: log axis
POINT_AXIS = "point"  # the x-axis of a run that repeats one unswept point per seed
LEGEND_INSIDE = 6  # more legend entries than this go below the panels


@dataclass
class Series:
    """One line or row of bars: a metric over x for one value of the other swept keys (``group``).
    ``errs`` is the standard deviation over a point's seeds (0.0 for a single run), beside ``ys``."""

    metric: str
    group: str
    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)
    paper_xs: list[float] = field(default_factory=list)
    paper_ys: list[float] = field(default_factory=list)
    errs: list[float] = field(default_factory=list)


@dataclass
class PlotData:
    x_key: str
    metrics: list[str]
    series: list[Series]
    categorical: bool = False
    log_x: bool = False
    ticks: list[str] = field(default_factory=list)  # category names, at x = 0, 1, ...
    title: str = ""
    seeds: int = 1  # the most runs (seeds) averaged into one point


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


def value_key(value: Any) -> str:
    """A hashable key for a JSON value (tables and lists included): equal values, equal keys."""
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
    """The swept params, in order; ``run.seed`` is not one (a point's seeds are averaged)."""
    return list(dict.fromkeys(k for run in runs for k in (run.get("params") or {}) if k != SEED_KEY))


def seeded(runs: list[dict]) -> bool:
    """Whether the runs repeat their points per seed ([run] seeds, or run.seed swept)."""
    return any(SEED_KEY in (run.get("params") or {}) or "seed" in run for run in runs)


def point_of(run: dict) -> str:
    """The point a run measures: its ``"point"`` (its id without the seed), else its params
    without ``run.seed``; runs of one point are averaged."""
    point = run.get("point")
    if isinstance(point, str) and point:
        return point
    return value_key({k: v for k, v in (run.get("params") or {}).items() if k != SEED_KEY})


def _point_name(run: dict) -> str:
    point = run.get("point")
    return point if isinstance(point, str) and point else str(run.get("id", "run")).rsplit(",seed=", 1)[0]


def choose_x(runs: list[dict], x: str | None) -> str:
    keys = swept_keys(runs)
    if x == SEED_KEY and seeded(runs):
        raise RtkError(f"--x {SEED_KEY}: seeds repeat one point and are averaged (mean ± std), not an axis;"
                       f' swept keys: {", ".join(keys) or "none"}')
    if x is not None:
        if x not in keys:
            raise RtkError(f'--x {x}: not a swept key of this run; swept keys: {", ".join(keys) or "none"}')
        return x
    if not keys:
        raise RtkError("nothing was swept in this run, so there is no x-axis; add a [sweep] to the recipe"
                       " (then pick the x-axis with --x KEY if several keys are swept)")
    numeric = [k for k in keys if all(is_number(run["params"].get(k)) for run in runs)]
    return numeric[0] if numeric else keys[0]  # the others become one series per value


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


def _mean_std(values: list[float]) -> tuple[float, float]:
    if len(values) == 1:
        return values[0], 0.0
    return statistics.fmean(values), statistics.stdev(values)


def plot_series(payload: dict, x: str | None = None, metrics: list[str] | None = None) -> PlotData:
    """The series to draw, from a results.json payload: pure data, in sweep order, one value per
    point (the mean over its seeds, their standard deviation in ``errs``). A run that repeats one
    unswept point per seed gets the point's name as its single category (x_key ``"point"``)."""
    runs = payload["runs"]
    if x is None and seeded(runs) and not swept_keys(runs):
        x_key, others = POINT_AXIS, []

        def x_value(run):
            return _point_name(run)
    else:
        x_key = choose_x(runs, x)
        others = [k for k in swept_keys(runs) if k != x_key]

        def x_value(run):
            return run["params"].get(x_key)
    chosen = choose_metrics(runs, metrics)
    points: dict[str, list[dict]] = {}
    for run in runs:
        points.setdefault(point_of(run), []).append(run)
    x_values = list({value_key(x_value(r)): x_value(r) for r in runs}.values())
    categorical = not all(is_number(v) for v in x_values)
    ticks = _labels(x_values) if categorical else []
    position = {value_key(v): (i if categorical else v) for i, v in enumerate(x_values)}
    group_values = list({value_key([r["params"].get(k) for k in others]): [r["params"].get(k) for k in others]
                         for r in runs}.values())
    per_key = [_labels(list({value_key(g[i]): g[i] for g in group_values}.values())) for i in range(len(others))]
    name_of = {}
    for i, key in enumerate(others):
        distinct = list({value_key(g[i]): g[i] for g in group_values}.values())
        name_of[key] = {value_key(v): per_key[i][j] for j, v in enumerate(distinct)}
    series: dict[tuple[str, str], Series] = {}
    for metric in chosen:
        for point_runs in points.values():
            first = point_runs[0]
            combo = [first["params"].get(k) for k in others]
            group = ", ".join(f"{k.split('.')[-1]}={name_of[k][value_key(v)]}" for k, v in zip(others, combo))
            line = series.setdefault((metric, group), Series(metric, group))
            xv = position[value_key(x_value(first))]
            values = [float(r["metrics"][metric]) for r in point_runs if is_number(r["metrics"].get(metric))]
            if values:
                mean, std = _mean_std(values)
                line.xs.append(xv)
                line.ys.append(mean)
                line.errs.append(std)
            published = next((p for r in point_runs if is_number(p := (r.get("paper") or {}).get(metric))), None)
            if published is not None:
                line.paper_xs.append(xv)
                line.paper_ys.append(float(published))
    positive = [v for v in x_values if is_number(v) and v > 0]
    log_x = (not categorical and len(positive) == len(x_values) and len(positive) > 1
             and max(positive) / min(positive) > LOG_SPAN)
    for line in series.values():  # numbers in increasing x, so lines do not zigzag
        if not categorical:
            order = sorted(range(len(line.xs)), key=lambda i: line.xs[i])
            line.xs, line.ys, line.errs = ([seq[i] for i in order] for seq in (line.xs, line.ys, line.errs))
    return PlotData(x_key, chosen, list(series.values()), categorical, log_x, ticks,
                    str(payload.get("recipe") or ""), max(len(p) for p in points.values()))


def distinct_styles(names: list[str], variants: tuple) -> dict[str, tuple[Any, Any]]:
    """(colour, variant) per name, distinct for 20 x len(variants) names: tab10 colours for up to
    ten names, else tab20's; then the next variant (line style, bar hatch) with the colours again."""
    import matplotlib

    palette = list(matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"].colors)
    return {name: (palette[i % len(palette)], variants[(i // len(palette)) % len(variants)])
            for i, name in enumerate(names)}


def new_figure(width: float, height: float):
    """An empty matplotlib Figure, ``width`` x ``height`` inches at 100 dpi, constrained layout,
    drawn by its own Agg canvas (matplotlib imported only here and in ``distinct_styles``: rtk starts fast).
    Neither pyplot nor ``matplotlib.use``: no global figure state, nothing left open, and the backend of
    the caller (a notebook's inline plots) stays as it was."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _legend(fig, axes, fontsize: int = 7) -> None:
    """One legend for the figure, each label once: inside the last panel when short, else below
    the panels in columns, so many series stay readable."""
    handles, labels = {}, []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    if len(labels) <= 1 and not any("paper" in label for label in labels):
        return
    if len(labels) <= LEGEND_INSIDE:
        axes[-1].legend([handles[k] for k in labels], labels, fontsize=fontsize, loc="best")
        return
    legend_below(fig, [handles[k] for k in labels], labels, fontsize)


def legend_below(fig, handles: list, labels: list[str], fontsize: int = 7) -> None:
    """A legend below the panels, in as many columns as the figure's width holds (widened up to
    three columns when there are more than ten entries), the figure made taller to hold it."""
    if not labels:
        return
    width, height = fig.get_size_inches()
    column = 0.5 + 0.06 * max(len(label) for label in labels)  # inches a column of fontsize-7 labels takes
    if len(labels) > 10:
        width = max(width, min(3, math.ceil(len(labels) / 10)) * column)
    columns = max(1, min(len(labels), int(width / column)))
    rows = math.ceil(len(labels) / columns)
    fig.set_size_inches(width, height + 0.17 * rows + 0.2)
    fig.legend(handles, labels, fontsize=fontsize, loc="outside lower center", ncols=columns)


def _x_label(data: PlotData) -> str:
    return data.x_key + (f"  (mean ± std over {data.seeds} seeds)" if data.seeds > 1 else "")


def _draw_lines(fig, data: PlotData):
    """One panel per metric, one line per series; paper numbers as hollow markers of its colour."""
    axes = fig.subplots(1, len(data.metrics), sharey=True, squeeze=False)[0]
    style = distinct_styles(list(dict.fromkeys(s.group for s in data.series)), ("-", "--", ":", "-."))
    for ax, metric in zip(axes, data.metrics):
        for line in (s for s in data.series if s.metric == metric):
            (color, linestyle), label = style[line.group], line.group or "rtk"
            if any(line.errs):
                ax.errorbar(line.xs, line.ys, yerr=line.errs, fmt="o", linestyle=linestyle, color=color, label=label,
                            markersize=5, capsize=3, elinewidth=1)
            else:
                ax.plot(line.xs, line.ys, "o", linestyle=linestyle, color=color, label=label, markersize=5)
            if line.paper_xs:
                ax.plot(line.paper_xs, line.paper_ys, "o", markerfacecolor="none", markersize=9,
                        markeredgewidth=1.5, color=color, label=f"{line.group} (paper)" if line.group else "paper")
        ax.set_title(metric)
        ax.set_xlabel(_x_label(data))
        if data.log_x:
            ax.set_xscale("log")
    return axes


def _draw_bars(fig, data: PlotData):
    """Grouped bars: one group per category. With a single series per metric, one panel and one
    bar per metric; with other swept keys, one panel per metric and one bar per series. A category
    holds only the bars it has values for, side by side and centred on its tick."""
    groups = list(dict.fromkeys(s.group for s in data.series))
    if len(groups) == 1:
        panels = [(data.metrics[0] if len(data.metrics) == 1 else "", data.series)]
        names = [s.metric for s in data.series]
    else:
        panels = [(m, [s for s in data.series if s.metric == m]) for m in data.metrics]
        names = groups
    style = distinct_styles(names, ("", "//", "..", "xx"))
    present = [[[i for i, bar in enumerate(bars) if c in bar.xs or c in bar.paper_xs] for c in range(len(data.ticks))]
               for _, bars in panels]
    per_category = max(1, max(len(here) for panel in present for here in panel))
    width_in = min(14.0, max(4.2, 1.0 + len(data.ticks) * (0.28 * per_category + 0.35)))
    fig.set_size_inches(width_in * len(panels) + 0.4, fig.get_size_inches()[1])
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    width = 0.8 / per_category
    for ax, (title, bars), here in zip(axes, panels, present):
        for i, bar in enumerate(bars):
            def at(x, i=i, here=here):
                slots = here[int(x)]
                return x + (slots.index(i) - (len(slots) - 1) / 2) * width

            name = bar.metric if len(groups) == 1 else bar.group
            color, hatch = style[name]
            errs = bar.errs if any(bar.errs) else None
            ax.bar([at(x) for x in bar.xs], bar.ys, width * 0.95, yerr=errs, capsize=3 if errs else 0,
                   color=color, hatch=hatch or None, label=name, error_kw={"elinewidth": 1})
            if bar.paper_xs:
                ax.plot([at(x) for x in bar.paper_xs], bar.paper_ys, "D", markerfacecolor="none",
                        markeredgecolor="black", markeredgewidth=1.3, markersize=6, linestyle="none",
                        label="paper")
        ax.set_title(title)
        ax.set_xlabel(_x_label(data))
        many = len(data.ticks) > 3
        ax.set_xticks(range(len(data.ticks)), data.ticks, rotation=30 if many else 0,
                      ha="right" if many else "center", fontsize=8)
        ax.set_xlim(-0.5, len(data.ticks) - 0.5)
    return axes


def figure(data: PlotData):
    """The matplotlib Figure of ``data`` (no file written): lines for a numeric x, grouped bars
    for a categorical one; error bars where seeds were averaged; y from 0 to 1 (accuracy)."""
    fig = new_figure(4.2 * len(data.metrics) + 0.4, 3.8)
    axes = (_draw_bars if data.categorical else _draw_lines)(fig, data)
    for ax in axes:
        ax.grid(True, alpha=0.3, axis="y" if data.categorical else "both")
    axes[0].set_ylabel("accuracy")
    axes[0].set_ylim(-0.02, 1.02)
    _legend(fig, axes)
    if data.title:
        fig.suptitle(data.title)
    return fig


def save_png(fig, out: str | Path) -> Path:
    """Write ``fig`` to ``out`` as a PNG atomically (no half-written file when killed); returns ``out``."""
    out = Path(out)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    return out


def render(data: PlotData, out: Path) -> Path:
    """Draw ``data`` (see ``figure``) and write the PNG to ``out`` atomically."""
    return save_png(figure(data), out)


def plot(run_dir: str | Path, x: str | None = None, metrics: list[str] | None = None,
         out: str | Path | None = None) -> Path:
    """Plot ``run_dir``/results.json into ``out`` (default ``run_dir``/plot.png); RtkError on bad input."""
    data = plot_series(load_results(run_dir), x, metrics)
    return render(data, Path(out) if out is not None else Path(run_dir) / "plot.png")


def plot_run(run_dir: str | Path, console=None) -> Path | None:
    """The runner's call after a finished run: plot.png when the run swept something or repeated
    its point per seed, else None. Never raises: a plot is a convenience, so a failure is one
    warning line, not a failed run."""
    try:
        payload = load_results(run_dir)
        runs = payload["runs"]
        if not (swept_keys(runs) or seeded(runs)) or not metric_names(runs):
            return None
        return render(plot_series(payload), Path(run_dir) / "plot.png")
    except Exception as exc:  # noqa: BLE001 - see the docstring
        if console is not None:
            from rich.markup import escape

            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            console.print(f"[yellow]warning[/yellow]: no plot: {escape(message)} (draw one with"
                          f" `rtk plot {run_dir} --x KEY`)", highlight=False, soft_wrap=True)
        return None


def __getattr__(name: str):
    # plot_curves and read_metrics stay importable from here (rtk.cli imports plot_curves from here);
    # resolved on first use because rtk.services.curves itself imports this module's figure helpers.
    if name in ("plot_curves", "read_metrics"):
        from rtk.services import curves

        return getattr(curves, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
