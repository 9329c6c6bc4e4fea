"""Results: the results.json / results.csv / summary.csv schema and the results table, written atomically.

results.json is the runner's payload plus, for every run, ``intervals`` ({metric: [lo, hi]}, the
95% binomial interval of each of its own accuracies) and, at the end, ``summary``: one entry per
sweep point over its seeds (rtk.services.stats.summarize; a run without seeds is a point with one
run). results.csv has one row per run (id, swept parameters, each metric followed by its
``.ci_lo``/``.ci_hi`` where it has an interval, the paper's numbers); summary.csv, always written,
one row per point (seeds, parameters, n_eval, each metric's ``.mean``, ``.std``, ``.ci_lo``,
``.ci_hi``, the paper's numbers).

The table (results_view) keeps every number whole in any terminal: number columns get the width
of their longest number, only text (run ids, sources, headers) wraps, and when even that does not
fit the console it is printed stacked, one block per run or point.
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Group
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from rtk.services.state import atomic_write_text
from rtk.services.stats import (  # noqa: F401  (metric_names, run_metrics: re-exported for rtk.services.plots)
    group_runs, mean_std, metric_names, point_summary, run_intervals, run_metrics, seeded, summarize)


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and value != value:
        return None  # NaN is not JSON
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _cell_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (dict, list)) else ("" if value is None else value)


def to_csv(runs: list[dict]) -> str:
    """One row per run: id, swept parameters, each metric (then its interval, where any run has
    one: ``<metric>.ci_lo``, ``<metric>.ci_hi``), the paper's numbers (``paper.<metric>``)."""
    params = list(dict.fromkeys(k for run in runs for k in run.get("params", {})))
    metrics = metric_names(runs)
    intervals = [run_intervals(run) for run in runs]
    bounded = {name for found in intervals for name in found}
    papers = list(dict.fromkeys(k for run in runs for k, v in run.get("paper", {}).items() if k in metrics))
    out = io.StringIO()
    writer = csv.writer(out)
    header = ["id", *params]
    for name in metrics:
        header += [name, *((f"{name}.ci_lo", f"{name}.ci_hi") if name in bounded else ())]
    writer.writerow([*header, *(f"paper.{m}" for m in papers)])
    for run, found in zip(runs, intervals):
        row = [run["id"], *(_cell_value(run["params"].get(p)) for p in params)]
        for name in metrics:
            row.append(run_metrics(run).get(name, ""))
            if name in bounded:
                row += found.get(name, ["", ""])
        row += [run.get("paper", {}).get(m, "") for m in papers]
        writer.writerow(row)
    return out.getvalue()


def summary_csv(summary: list[dict]) -> str:
    """One row per point of ``summary`` (rtk.services.stats.summarize): point, seeds (space
    separated), parameters, n_eval, each metric's mean, std, ci_lo, ci_hi, the paper's numbers."""
    params = list(dict.fromkeys(k for entry in summary for k in entry["params"]))
    metrics = list(dict.fromkeys(m for entry in summary for m in entry["metrics"]))
    papers = list(dict.fromkeys(m for entry in summary for m in entry["paper"] if m in metrics))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["point", "seeds", *params, "n_eval",
                     *(f"{m}.{what}" for m in metrics for what in ("mean", "std", "ci_lo", "ci_hi")),
                     *(f"paper.{m}" for m in papers)])
    for entry in summary:
        row = [entry["point"], " ".join(str(s) for s in entry["seeds"]),
               *(_cell_value(entry["params"].get(p)) for p in params), _cell_value(entry["n_eval"])]
        for name in metrics:
            stats = entry["metrics"].get(name) or {}
            interval = stats.get("ci95") or [None, None]
            row += [_cell_value(v) for v in (stats.get("mean"), stats.get("std"), *interval)]
        row += [_cell_value(entry["paper"].get(m)) for m in papers]
        writer.writerow(row)
    return out.getvalue()


def with_intervals(run: dict) -> dict:
    """The run with ``intervals`` ({metric: [lo, hi]}, rtk.services.stats.run_intervals) after its metrics."""
    found = run_intervals(run)
    out = {k: v for k, v in run.items() if k != "intervals"}
    if "metrics" not in out:
        return {**out, "intervals": found}
    keys = list(out)
    place = keys.index("metrics") + 1
    return {**{k: out[k] for k in keys[:place]}, "intervals": found, **{k: out[k] for k in keys[place:]}}


def write_results(out_dir: Path, payload: dict) -> None:
    """results.json (``payload`` with each run's intervals and the per-point summary), results.csv
    and summary.csv, each written atomically; ``payload`` itself is left as it is."""
    runs = [with_intervals(run) for run in payload["runs"]]
    payload = {**payload, "runs": runs, "summary": summarize(runs)}
    atomic_write_text(out_dir / "results.json", json.dumps(jsonable(payload), indent=2) + "\n")
    atomic_write_text(out_dir / "results.csv", to_csv(runs))
    atomic_write_text(out_dir / "summary.csv", summary_csv(jsonable(payload["summary"])))


def curves_line(out_dir: Path | str) -> str | None:
    """Where the run's training curves are, when it has any (RUN_DIR/metrics.jsonl), else None."""
    from rtk.services.metrics import FILE

    path = Path(out_dir) / FILE
    return f"curves: {path} (rtk plot --curves {out_dir})" if path.is_file() else None


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else str(value)


def mean_text(stats: dict) -> str:
    """``0.680 ± 0.012``, or the mean alone without a std (one seed)."""
    if stats.get("mean") is None:
        return ""
    return fmt_value(stats["mean"]) + (f" ± {fmt_value(stats['std'])}" if stats.get("std") is not None else "")


def interval_text(interval: list[float] | None) -> str:
    return f"[{fmt_value(interval[0])}, {fmt_value(interval[1])}]" if interval else ""


def paper_text(paper: Any, inside: bool | None) -> str:
    """``(paper 0.930, inside)`` / ``(paper 0.930, outside)``, or ``(paper 0.930)`` without an interval."""
    where = "" if inside is None else f", {'inside' if inside else 'outside'}"
    return f"(paper {fmt_value(paper)}{where})"


def reused_sources(runs: list[dict]) -> list[str]:
    """One line per source taken from the store that another run made: its key, maker and place."""
    lines = {}
    for run in runs:
        source = run.get("source", {})
        if source.get("reused") and source.get("key") not in lines:
            made = source.get("made_by") or {}
            how = "imported" if source.get("imported") else "trained"
            lines[source["key"]] = (f"source {source['key']} reused from the store: {how} {made.get('created', '?')}"
                                    f" by {made.get('recipe', '?')} ({made.get('point', '?')}); {source.get('store')}")
    return list(lines.values())


def short_header(metric: str) -> str:
    """A metric's column header: certification's long names shortened, so that the number under
    them sets the column's width."""
    match = re.fullmatch(r"certified_accuracy@(.+)", metric)
    if match:
        return f"certified@{match.group(1)}"
    return {"clean_smoothed_accuracy": "smoothed clean", "abstain_rate": "abstain rate",
            "max_certifiable_radius": "max radius"}.get(metric, metric)


def _source_cell(group: list[dict]) -> str:
    """Where the point's source came from: ``f76fc8bb trained``; over seeds with different sources,
    how many were trained, imported or reused (``3 trained``)."""
    def status(source: dict) -> str:
        return "reused" if source.get("reused") else "imported" if source.get("imported") else "trained"

    sources = [run.get("source", {}) for run in group]
    keys = {s.get("key") for s in sources if "key" in s}
    if len(keys) > 1:
        counts: dict[str, int] = {}
        for source in sources:
            if "key" in source:
                counts[status(source)] = counts.get(status(source), 0) + 1
        return ", ".join(f"{count} {name}" for name, count in counts.items())
    source = sources[0]
    return f"{source['key'][:8]} {status(source)}" if "key" in source else "file" if "weights" in source else ""


@dataclass
class Row:
    """One row of the results: a run, or a point over its seeds."""

    name: str
    seeds: str
    source: str
    source_clean: str
    cells: dict[str, list[Text]] = field(default_factory=dict)  # metric: its lines (value, interval, paper)


def _metric_lines(stats: dict, paper: dict, name: str, inside: bool | None) -> list[Text]:
    lines = [Text(mean_text(stats))] if stats.get("mean") is not None else []
    if stats.get("ci95"):
        lines.append(Text(interval_text(stats["ci95"])))
    if name in paper:
        style = "dim" if inside is not False else "yellow"
        lines.append(Text(paper_text(paper[name], inside), style=style))
    return lines


def result_rows(runs: list[dict]) -> list[Row]:
    """The table's rows: one per run, or with seeds one per point (rtk.services.stats.summarize)."""
    rows = []
    for group in group_runs(runs):
        entry = point_summary(group)
        mean, std = mean_std([run.get("source", {}).get("clean") for run in group])
        row = Row(name=str(entry["point"]), seeds=",".join(str(s) for s in entry["seeds"]),
                  source=_source_cell(group), source_clean=mean_text({"mean": mean, "std": std}))
        for name, stats in entry["metrics"].items():
            row.cells[name] = _metric_lines(stats, entry["paper"], name, entry["paper_inside"].get(name))
        rows.append(row)
    return rows


@dataclass
class ColumnSpec:
    """One column of a results-style table (results_table, rtk compare): its header, each row's
    lines, and whether it holds numbers (a fixed width that fits every line: nothing is folded)
    or text (which wraps, then folds, down to ``shrink_to`` characters before spec_width gives up)."""

    header: str
    cells: list[list[Text]]
    number: bool  # numbers keep their width (they never wrap); text wraps and folds
    justify: str = "right"
    shrink_to: int = 8  # the narrowest a text column may get before the table is printed stacked
    style: str | None = None

    def width(self) -> int:
        """A number column's width: its longest line and header word, and the opening of its paper
        line (``(paper 0.930,``: the rest wraps)."""
        widths = [len(word) for word in self.header.split()]
        for lines in self.cells:
            for line in lines:
                text = line.plain
                widths.append(len(text.split(",")[0]) + 1 if text.startswith("(paper") else len(text))
        return max(widths, default=1)

    def natural(self) -> int:
        return max([len(self.header), *(len(line.plain) for lines in self.cells for line in lines)])


def shown_metrics(runs: list[dict]) -> list[str]:
    """The metrics the table shows: all of them, except ``robust`` where every run has a single
    attack, so that robust (the worst case over the attacks) is that attack's column again
    (results.json keeps it; a paper number for it keeps it shown)."""
    names = metric_names(runs)
    copies = bool(runs) and all(
        len(attacks := [k for k in run.get("metrics", {}) if k not in ("clean", "robust")]) == 1
        and run["metrics"].get("robust") == run["metrics"][attacks[0]] and "robust" not in run.get("paper", {})
        for run in runs)
    return [name for name in names if not (copies and name == "robust")]


def columns(runs: list[dict]) -> list[ColumnSpec]:
    """The table's columns: run (or point), seeds, source, source clean, then one per metric."""
    rows = result_rows(runs)
    # A run id folds only between its comma-separated parts ("objective=natural" stays whole).
    narrowest = max([12, *(len(part) for row in rows for part in row.name.split(","))])
    specs = [ColumnSpec("run", [[Text(row.name)] for row in rows], number=False, justify="left",
                        shrink_to=narrowest, style="bold")]
    if seeded(runs):
        specs.append(ColumnSpec("seeds", [[Text(row.seeds)] for row in rows], number=True))
    if any("key" in run.get("source", {}) for run in runs):
        specs.append(ColumnSpec("source", [[Text(row.source)] for row in rows], number=False, justify="left"))
    if any("source" in run for run in runs):
        specs.append(ColumnSpec("source clean", [[Text(row.source_clean)] for row in rows], number=True))
    for name in shown_metrics(runs):
        specs.append(ColumnSpec(short_header(name), [row.cells.get(name, []) for row in rows], number=True))
    return specs


def spec_table(specs: list[ColumnSpec], title: str, squeezed: bool = False) -> Table:
    """The table of ``specs`` (compact: a rule under the header, rows apart when cells have several
    lines); ``squeezed``: every text column at its narrowest, to measure the table (spec_width)."""
    multiline = any(len(lines) > 1 for spec in specs for lines in spec.cells)
    table = Table(title=title, show_lines=multiline, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  collapse_padding=True)
    for spec in specs:
        width = spec.width() if spec.number else min(spec.natural(), spec.shrink_to) if squeezed else None
        table.add_column(spec.header, justify=spec.justify, overflow="fold", width=width, style=spec.style)
    for i in range(len(specs[0].cells) if specs else 0):
        table.add_row(*(Text("\n").join(spec.cells[i]) for spec in specs))
    return table


def spec_width(specs: list[ColumnSpec], title: str = "", squeezed: bool = True) -> int:
    """The width of spec_table(specs): at its narrowest with every number whole (text columns
    folded), or with ``squeezed=False`` as wide as its cells ask."""
    from rich.console import Console

    console = Console(width=100_000, file=io.StringIO())
    return Measurement.get(console, console.options, spec_table(specs, title, squeezed=squeezed)).maximum


def results_table(runs: list[dict], title: str = "results") -> Table:
    """Accuracies per run (with [run] seeds: per point, ``mean ± std`` over its seeds and a seeds
    column), each with its 95% interval below it and the paper's number where the recipe gives
    one, inside or outside that interval. Number columns never wrap; see results_view for a
    narrow console."""
    return spec_table(columns(runs), title)


def table_width(runs: list[dict], title: str = "results") -> int:
    """The narrowest the results table can be with every number whole."""
    return spec_width(columns(runs), title)


def stacked_results(runs: list[dict], title: str = "results") -> Group:
    """The results as one block per run (or point): its name, seeds and source, then a line
    ``metric: value [lo, hi] (paper ...)`` per metric; for consoles too narrow for the table."""
    lines = [Text(title, style="bold")]
    names = shown_metrics(runs)
    for index, row in enumerate(result_rows(runs)):
        if index:
            lines.append(Text(""))  # blocks apart: a name line would otherwise read as the previous block's
        head = Text(row.name, style="bold")
        if row.seeds:
            head.append(f"  seeds {row.seeds}")
        source = " ".join(part for part in (row.source, f"(clean {row.source_clean})" if row.source_clean else "")
                          if part)
        if source:
            head.append(f"  source {source}")
        lines.append(head)
        for name in names:
            cell = row.cells.get(name)
            if cell:
                lines.append(Text(f"  {name}: ") + Text(" ").join(cell))
    return Group(*lines)


def results_view(runs: list[dict], title: str = "results", width: int = 80) -> Table | Group:
    """The results table when it fits ``width`` columns with every number whole (its text columns
    folded to their narrowest when it must: rich would otherwise share the shortfall out and could
    cut a number), else stacked_results."""
    specs = columns(runs)
    if spec_width(specs, title, squeezed=False) <= width:
        return spec_table(specs, title)
    if spec_width(specs, title) <= width:
        return spec_table(specs, title, squeezed=True)
    return stacked_results(runs, title)
