"""``rtk compare RUN_DIR...``: the results of several runs side by side, in the terminal and as a
Markdown file for a paper's appendix.

Each run folder's results.json gives its per-point summary (rtk.services.stats.summarize; computed
from its runs for a results.json written before summaries existed). One table per metric: a row per
sweep point (the union over the runs, in order of first appearance), a column per run (named by its
folder, with its recipe and profile when the runs do not share them), cells ``mean ± std`` over
the seeds with the 95% interval ``[lo, hi]`` of the mean accuracy; a ``paper`` column where a
recipe gives published numbers. A table too wide for the console is printed stacked.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import click
from rich.text import Text

from rtk.store_command import consoles, handled

DEFAULT_OUT = Path("compare.md")
MISSING = "-"


@dataclass
class RunResults:
    """One run folder's results.json: its header fields and per-point summary."""

    folder: Path
    payload: dict
    summary: list[dict]

    @property
    def recipe(self) -> str:
        return str(self.payload.get("recipe") or "?")

    @property
    def profile(self) -> str | None:
        return self.payload.get("profile")


def load_run(folder: Path) -> RunResults:
    """The results of the run in ``folder``; an RtkError naming the folder when it has no readable
    results.json."""
    from rtk.errors import RtkError
    from rtk.services.stats import summarize

    path = Path(folder) / "results.json"
    if not path.is_file():
        raise RtkError(f"{folder} has no results.json; give the --out folder of a finished `rtk run`")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RtkError(f"{path} cannot be read as JSON ({str(exc).splitlines()[0]}); rerun the run") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("runs"), list):
        raise RtkError(f"{path} is not the results.json of an rtk run (no runs list)")
    summary = payload.get("summary")
    if not isinstance(summary, list):  # written before results.json had summaries
        summary = summarize(payload["runs"])
    return RunResults(Path(folder), payload, summary)


def run_labels(results: list[RunResults]) -> list[str]:
    """Column names: each folder's name (its path when two names clash), with ``recipe/profile``
    when the runs do not all share them."""
    names = [r.folder.name or str(r.folder) for r in results]
    if len(set(names)) < len(names):
        names = [str(r.folder) for r in results]
    if len({(r.recipe, r.profile) for r in results}) > 1:
        names = [f"{name} ({r.recipe}{f'/{r.profile}' if r.profile else ''})" for name, r in zip(names, results)]
    return names


def compared_metrics(results: list[RunResults], wanted: tuple[str, ...] = ()) -> list[str]:
    """The metrics to compare: ``wanted`` (an RtkError for one that no run has), else every metric
    of every run, in order of first appearance."""
    from rtk.errors import RtkError

    found = list(dict.fromkeys(name for r in results for entry in r.summary for name in entry.get("metrics", {})))
    for name in wanted:
        if name not in found:
            raise RtkError(f"--metric {name}: none of the runs has it; they have {', '.join(found) or 'no metrics'}")
    return list(dict.fromkeys(wanted)) if wanted else found


def points(results: list[RunResults]) -> list[str]:
    """Every run's points, each once, in order of first appearance."""
    return list(dict.fromkeys(str(entry.get("point")) for r in results for entry in r.summary))


def _entry(run: RunResults, point: str) -> dict | None:
    return next((e for e in run.summary if str(e.get("point")) == point), None)


def cell_lines(entry: dict | None, metric: str) -> list[str]:
    """``["0.680 ± 0.012", "[0.534, 0.805]"]`` of a point's metric; the interval line only for an
    accuracy; ``["-"]`` where the run lacks the point or the metric."""
    from rtk.services.results import interval_text, mean_text

    stats = (entry or {}).get("metrics", {}).get(metric)
    if not stats or stats.get("mean") is None:
        return [MISSING]
    return [mean_text(stats), *([interval_text(stats["ci95"])] if stats.get("ci95") else [])]


def paper_value(results: list[RunResults], point: str, metric: str):
    """The published number of ``metric`` at ``point``: the first run's that gives one, else None."""
    for run in results:
        paper = (_entry(run, point) or {}).get("paper") or {}
        if metric in paper:
            return paper[metric]
    return None


def metric_specs(results: list[RunResults], metric: str, labels: list[str]):
    """The columns of one metric's table (rtk.services.results.ColumnSpec): point, one per run, paper."""
    from rtk.services.results import ColumnSpec, fmt_value

    rows = points(results)
    specs = [ColumnSpec("point", [[Text(p)] for p in rows], number=False, justify="left", shrink_to=12, style="bold")]
    for label, run in zip(labels, results):
        specs.append(ColumnSpec(label, [[Text(line) for line in cell_lines(_entry(run, p), metric)] for p in rows],
                                number=True))
    papers = [paper_value(results, p, metric) for p in rows]
    if any(v is not None for v in papers):
        specs.append(ColumnSpec("paper", [[Text(fmt_value(v) if v is not None else MISSING)] for v in papers],
                                number=True))
    return specs


def stacked(results: list[RunResults], metric: str, labels: list[str]):
    """One metric's comparison as a block per point: ``run: mean ± std [lo, hi]`` per run."""
    from rich.console import Group

    from rtk.services.results import fmt_value

    lines = [Text(metric, style="bold")]
    for point in points(results):
        lines.append(Text(point, style="bold"))
        for label, run in zip(labels, results):
            lines.append(Text(f"  {label}: {' '.join(cell_lines(_entry(run, point), metric))}"))
        paper = paper_value(results, point, metric)
        if paper is not None:
            lines.append(Text(f"  paper: {fmt_value(paper)}", style="dim"))
    return Group(*lines)


def metric_view(results: list[RunResults], metric: str, labels: list[str], width: int):
    """One metric's table, or its stacked form when the table does not fit ``width`` columns."""
    from rtk.services.results import spec_table, spec_width

    specs = metric_specs(results, metric, labels)
    return spec_table(specs, metric) if spec_width(specs, metric) <= width else stacked(results, metric, labels)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def footnote(run: RunResults) -> str:
    """What a reader needs to reproduce the column: folder, recipe, profile, seeds, n_eval, rtk version."""
    seeds = sorted({s for e in run.summary for s in e.get("seeds", [])}, key=str)
    n_evals = sorted({e["n_eval"] for e in run.summary if isinstance(e.get("n_eval"), int)})
    parts = [f"recipe {run.recipe}", f"profile {run.profile or '(none)'}",
             f"seeds {', '.join(map(str, seeds))}" if seeds else "one run per point (no seeds)",
             f"n_eval {', '.join(map(str, n_evals))}" if n_evals else "n_eval unknown",
             f"rtk {run.payload.get('rtk_version', '?')}"]
    if not run.payload.get("complete", True):
        parts.append("incomplete (not every point had finished)")
    return f"`{run.folder}`: {'; '.join(parts)}."


def markdown(results: list[RunResults], metrics: list[str], labels: list[str]) -> str:
    """The comparison as Markdown: one table per metric, a footnote per run."""
    from rtk.services.results import fmt_value

    marks = [f"[^{i}]" for i in range(1, len(results) + 1)]
    out = ["# Comparison", "",
           "Cells: mean ± sample standard deviation over seeds (the mean alone for one seed), then the 95%"
           " Clopper-Pearson interval [lo, hi] of the mean accuracy on the n_eval test examples of one seed"
           " (none for radius-type metrics).", ""]
    for metric in metrics:
        rows = points(results)
        papers = [paper_value(results, p, metric) for p in rows]
        with_paper = any(v is not None for v in papers)
        header = ["point", *(f"{_md(label)}{mark}" for label, mark in zip(labels, marks))] + ["paper"] * with_paper
        out += [f"## {_md(metric)}", "", f"| {' | '.join(header)} |",
                f"|:---|{'|'.join('---:' for _ in header[1:])}|"]
        for point, paper in zip(rows, papers):
            cells = [_md(point), *(_md(" ".join(cell_lines(_entry(run, point), metric))) for run in results)]
            if with_paper:
                cells.append(fmt_value(paper) if paper is not None else MISSING)
            out.append(f"| {' | '.join(cells)} |")
        out.append("")
    out += [f"{mark}: {_md(footnote(run))}" for mark, run in zip(marks, results)]
    return "\n".join(out) + "\n"


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="RUN_DIR...")
@click.option("--metric", "wanted", multiple=True, metavar="NAME",
              help="Compare only this metric (repeatable), e.g. --metric clean --metric robust (default: all).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None, metavar="FILE.md",
              help=f"Markdown file to write (default {DEFAULT_OUT} in the current folder).")
@handled
def compare(run_dirs, wanted, out):
    """Compare the results of the runs in RUN_DIR... (their --out folders): one table per metric,
    a row per sweep point, a column per run, cells `mean ± std [lo, hi]` over the seeds with the
    95% binomial interval. Also writes the tables, with a footnote per run (recipe, profile, seeds,
    n_eval, rtk version), as Markdown to --out (default compare.md in the current folder)."""
    from rtk.services.state import atomic_write_text

    console, _ = consoles()
    results = [load_run(folder) for folder in run_dirs]
    metrics = compared_metrics(results, tuple(wanted))
    labels = run_labels(results)
    for metric in metrics:
        console.print(metric_view(results, metric, labels, console.width))
    out = Path(out) if out is not None else DEFAULT_OUT
    atomic_write_text(out, markdown(results, metrics, labels))
    console.print(f"markdown: {out.resolve()}", highlight=False, soft_wrap=True)
