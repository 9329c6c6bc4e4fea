"""``rtk collect OUT`` and ``rtk status OUT``: gather the points of a sharded run (``rtk run
--shard I/N``) into results.json, and show where each point stands (rtk.services.shards)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click
from rich import box
from rich.markup import escape
from rich.table import Table

from rtk.store_command import consoles, handled

STYLES = {"done": "green", "running": "cyan", "failed": "bold red", "waiting": "yellow", "interrupted": "magenta",
          "not started": "dim"}


@click.command()
@click.argument("out", type=click.Path(path_type=Path))
@handled
def collect(out):
    """Gather the sweep points that the shards of a sharded run wrote into OUT/points/ into
    results.json, results.csv, plot.png and the results table, exactly as one unsharded run
    writes them. Refuses, listing them, while any point is not done (see `rtk status OUT`)."""
    from rtk.services.shards import collect as gather, print_report

    console, err_console = consoles()
    payload = gather(out, console=err_console)
    print_report(console, payload["runs"], str(payload.get("recipe")), f"results: {Path(out) / 'results.json'}",
                 Path(out))


@click.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output: one object per point.")
@handled
def status(out, as_json):
    """Show each sweep point of the run in OUT: done, running (its lock is held: by which process),
    failed (the error and the log's path), interrupted (rerun its shard with --resume), waiting
    (its shard is running) or not started."""
    from rtk.errors import RtkError
    from rtk.services.shards import point_states, ranges

    console, _ = consoles()
    out = Path(out)
    if not out.is_dir():
        raise RtkError(f"{out} is not a folder; give the --out of a run")
    try:
        states = point_states(out)
    except RtkError:
        if (out / "points" / "sweep.json").is_file():
            raise
        return unsharded_status(out, as_json, console)
    if as_json:
        click.echo(json.dumps([state.as_dict() for state in states], indent=2))
        return
    table = Table(title=f"{out}", box=box.SIMPLE_HEAD)
    for name in ("point", "run", "state", "detail"):
        table.add_column(name, justify="right" if name == "point" else "left", overflow="fold")
    for state in states:
        detail = state.detail + (f" (log: {state.log})" if state.log else "")
        style = STYLES.get(state.state, "")
        table.add_row(str(state.index), escape(state.id), f"[{style}]{state.state}[/{style}]", escape(detail))
    console.print(table)
    counts = Counter(state.state for state in states)
    summary = ", ".join(f"{counts[name]} {name}" for name in STYLES if counts[name])
    console.print(f"{len(states)} points: {summary}", highlight=False)
    complete = _complete(out)
    if counts["done"] == len(states):
        console.print(f"results: {out / 'results.json'}" if complete else f"every point is done: `rtk collect {out}`",
                      highlight=False, soft_wrap=True)
    for state in states:
        if state.state == "failed":
            log = f"; log: {state.log}" if state.log else ""
            console.print(f"point {state.index} ({escape(state.id)}) failed: {escape(state.detail)}{escape(log)}",
                          highlight=False, soft_wrap=True)
    for name, hint in (("failed", "rerun their shards with --resume once the cause is fixed"),
                       ("interrupted", "rerun their shards with --resume")):
        indices = [state.index for state in states if state.state == name]
        if indices:
            console.print(f"{name}: point{'s' * (len(indices) > 1)} {ranges(indices)}; {hint}", highlight=False,
                          soft_wrap=True)


def _complete(out: Path) -> bool:
    try:
        return bool(json.loads((out / "results.json").read_text(encoding="utf-8")).get("complete"))
    except (OSError, ValueError, AttributeError):
        return False


def unsharded_status(out: Path, as_json: bool, console) -> None:
    """A folder without points/: an unsharded run's results.json (or nothing yet)."""
    from rtk.services.locking import LOCK_NAME, probe

    kind, holder = probe(out / LOCK_NAME)
    try:
        payload = json.loads((out / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        payload = None
    runs = payload.get("runs", []) if isinstance(payload, dict) else []
    running = f"running now ({holder})" if kind == "exclusive" else ""
    if as_json:
        click.echo(json.dumps([{"index": i, "id": run.get("id"), "state": "done", "detail": "", "log": None}
                               for i, run in enumerate(runs)], indent=2))
        return
    if payload is None:
        now = f"; an unsharded run is {running}" if running else ""
        console.print(f"{out}: no run has written results here yet{now}", highlight=False, soft_wrap=True)
        return
    complete = "complete" if payload.get("complete") else "incomplete"
    console.print(f"{out}: an unsharded run, {len(runs)} run(s) done, {complete}{f'; {running}' if running else ''}"
                  f"; results: {out / 'results.json'}", highlight=False, soft_wrap=True)
