"""Results: the results.json / results.csv schema and the results table, written atomically."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from rich.table import Table

from rtk.services.state import atomic_write_text


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


def run_metrics(run: dict) -> dict:
    """A run's accuracies followed by its certification metrics (certified accuracy, ACR...)."""
    certify = run.get("certify") or {}
    return {**run.get("metrics", {}), **(certify.get("metrics", {}) if isinstance(certify, dict) else {})}


def metric_names(runs: list[dict]) -> list[str]:
    """Accuracy columns (robust last: it summarises the columns before it), then certification's."""
    names: list[str] = []
    for run in runs:
        for key in run.get("metrics", {}):
            if key not in names:
                names.append(key)
    if "robust" in names:
        names.remove("robust")
        names.append("robust")
    for run in runs:
        for key in run_metrics(run):
            if key not in names:
                names.append(key)
    return names


def to_csv(runs: list[dict]) -> str:
    params = list(dict.fromkeys(k for run in runs for k in run.get("params", {})))
    metrics = metric_names(runs)
    papers = list(dict.fromkeys(k for run in runs for k, v in run.get("paper", {}).items() if k in metrics))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", *params, *metrics, *(f"paper.{m}" for m in papers)])
    for run in runs:
        row = [run["id"]]
        row += [json.dumps(run["params"].get(p)) if isinstance(run["params"].get(p), (dict, list))
                else run["params"].get(p, "") for p in params]
        row += [run_metrics(run).get(m, "") for m in metrics]
        row += [run.get("paper", {}).get(m, "") for m in papers]
        writer.writerow(row)
    return out.getvalue()


def write_results(out_dir: Path, payload: dict) -> None:
    atomic_write_text(out_dir / "results.json", json.dumps(jsonable(payload), indent=2) + "\n")
    atomic_write_text(out_dir / "results.csv", to_csv(payload["runs"]))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else str(value)


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


def results_table(runs: list[dict], title: str = "results") -> Table:
    """Accuracies per run, with the paper's number beside ours where the recipe gives one."""
    metrics = metric_names(runs)
    table = Table(title=title)
    table.add_column("run", style="bold")
    stored = any("key" in run.get("source", {}) for run in runs)
    if stored:
        table.add_column("source")
    if any("source" in run for run in runs):
        table.add_column("source clean", justify="right")
    for name in metrics:
        table.add_column(name, justify="right")
    for run in runs:
        cells = [run["id"]]
        if stored:
            source = run.get("source", {})
            made = "imported" if source.get("imported") else "trained"
            cells.append(f"{source['key'][:8]} {'reused' if source.get('reused') else made}" if "key" in source
                         else "file" if "weights" in source else "")
        if any("source" in r for r in runs):
            cells.append(_fmt(run.get("source", {}).get("clean")))
        for name in metrics:
            cell = _fmt(run_metrics(run).get(name))
            if name in run.get("paper", {}):
                cell += f" [dim](paper {_fmt(run['paper'][name])})[/dim]"
            cells.append(cell)
        table.add_row(*cells)
    return table
