"""Sharded runs: the points of one sweep run by several processes, on one machine or many, into
one output folder, then gathered into the results.json a single run writes.

The assignment is fixed: sweep point i (0-based, in the recipe's sweep order) belongs to shard
(i % N) + 1 of ``--shard I/N``; ``--source K/M`` (with ``--sources-only``) picks the K-th of the
recipe's M distinct sources, in the order the plan prints them. Shards share ``--out``: each
holds the folder's lock shared and its points' locks exclusively (rtk.services.locking), the
first one writes recipe.resolved.toml, env.json and ``points/sweep.json`` (the others check that
they run the same recipe), and each point's result goes to ``points/<i>.json`` as soon as it is
done (a failure to ``points/<i>.error``). ``collect`` merges the points into results.json,
results.csv and plot.png, as the last shard to finish does by itself; ``point_states`` is what
``rtk status`` shows. Nothing here imports torch.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.markup import escape

from rtk.errors import RtkError
from rtk.services.locking import LOCKS, point_lock_path, probe
from rtk.services.results import curves_line, jsonable, reused_sources, results_view, write_results
from rtk.services.state import RunFolder, atomic_write_text, first_line

HEADER = ("recipe", "recipe_path", "profile", "overrides", "rtk_version")  # results.json's keys before "complete"
LOG_ENV = "RTK_LOG_PATH"  # a job's log file, recorded with a point's failure


def parse_share(text: str, flag: str = "--shard") -> tuple[int, int]:
    """"I/N" -> (I, N) with 1 <= I <= N."""
    try:
        first, of = (int(part) for part in str(text).split("/"))
    except ValueError:
        first = of = 0
    if not 1 <= first <= of:
        raise RtkError(f'{flag} "{text}": give I/N with 1 <= I <= N, e.g. {flag} 2/4')
    return first, of


def shard_points(count: int, shard: int, of: int) -> list[int]:
    """The sweep points of shard ``shard`` of ``of``: point i belongs to shard (i % of) + 1."""
    return [i for i in range(count) if i % of == shard - 1]


def source_points(groups: list[str], k: int, m: int) -> list[int]:
    """The sweep points whose source is the ``k``-th of the ``m`` distinct ones (``groups``: each
    point's source group, rtk.stages.source.group_of)."""
    order = list(dict.fromkeys(groups))
    if m != len(order):
        raise RtkError(f"--source {k}/{m}: the recipe has {len(order)} distinct source{'s' * (len(order) != 1)},"
                       f" not {m} (`rtk run RECIPE --dry-run` lists them); give --source K/{len(order)}")
    return [i for i, group in enumerate(groups) if group == order[k - 1]]


def select_points(specs: list, shard: tuple[int, int] | None = None, source: tuple[int, int] | None = None,
                  sources_only: bool = False) -> list[int]:
    """The sweep points a run takes: shard I/N's, source K/M's (with --sources-only), else all."""
    if source is not None and not sources_only:
        raise RtkError("--source K/M picks a source for --sources-only; add --sources-only (--shard I/N splits the"
                       " points)")
    if source is not None and shard is not None:
        raise RtkError("--source K/M and --shard I/N both select what to run; pass one of them")
    if shard is not None:
        return shard_points(len(specs), *shard)
    if source is not None:
        from rtk.stages.source import group_of

        return source_points([group_of(spec) for spec in specs], *source)
    return list(range(len(specs)))


def ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    parts: list[str] = []
    for i in indices:
        if parts and isinstance(parts[-1], list) and parts[-1][1] == i - 1:
            parts[-1][1] = i
        else:
            parts.append([i, i])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts)


def write_sweep(root: Path, header: dict, ids: list[str]) -> None:
    sweep = {**{key: header.get(key) for key in HEADER}, "points": list(ids)}
    atomic_write_text(RunFolder(root).sweep_file, json.dumps(jsonable(sweep), indent=2) + "\n")


def read_sweep(root: Path) -> dict | None:
    """points/sweep.json, None when absent; an unreadable one is an error naming it."""
    path = RunFolder(root).sweep_file
    if not path.is_file():
        return None
    try:
        sweep = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(sweep, dict) or not isinstance(sweep.get("points"), list):
            raise ValueError("not a sweep")
    except (OSError, ValueError) as exc:
        raise RtkError(f"{path} is unreadable ({first_line(exc)}); rerun any shard of {root} to write it again"
                       ) from None
    return sweep


def write_point(root: Path, index: int, run: dict) -> None:
    """Point ``index``'s result (its entry of results.json), written atomically; its failure, if
    an earlier attempt left one, is removed."""
    folder = RunFolder(root)
    atomic_write_text(folder.point_result(index), json.dumps(jsonable(run), indent=2) + "\n")
    folder.point_error(index).unlink(missing_ok=True)


def read_point(root: Path, index: int) -> dict | None:
    path = RunFolder(root).point_result(index)
    if not path.is_file():
        return None
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(run, dict) or "id" not in run:
            raise ValueError("not a run's result")
    except (OSError, ValueError) as exc:
        raise RtkError(f"{path} is unreadable ({first_line(exc)}); delete it and rerun its shard with --resume"
                       ) from None
    return run


def failure_line(exc: BaseException) -> str:
    """An exception as the one line the CLI prints for it."""
    if isinstance(exc, RtkError):
        return first_line(exc, 500)
    return f"internal error: {type(exc).__name__}: {first_line(exc, 400)}"


def record_failure(root: Path, index: int, exc: BaseException, shard: str = "") -> None:
    """points/<i>.error: the failure's one line, the log's path ($RTK_LOG_PATH) and who failed."""
    import socket
    from datetime import datetime

    failure = {"error": failure_line(exc), "log": os.environ.get(LOG_ENV) or None, "shard": shard or None,
               "host": socket.gethostname(), "pid": os.getpid(), "time": datetime.now().isoformat(timespec="seconds")}
    try:
        atomic_write_text(RunFolder(root).point_error(index), json.dumps(failure, indent=2) + "\n")
    except RtkError:
        pass  # the failure itself is what the user must see


def read_failure(root: Path, index: int) -> dict | None:
    path = RunFolder(root).point_error(index)
    if not path.is_file():
        return None
    try:
        failure = json.loads(path.read_text(encoding="utf-8"))
        return failure if isinstance(failure, dict) else {"error": str(failure)}
    except (OSError, ValueError):
        try:
            return {"error": path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[0]}
        except (OSError, IndexError):
            return {"error": "(unreadable)"}


@dataclass
class PointState:
    """A sweep point as ``rtk status`` shows it: ``state`` is done, running, failed, interrupted
    (left resume state, nobody runs it: rerun its shard with --resume), waiting (its shard is
    running and will get to it) or not started; ``detail`` says more (holder, error, shard)."""

    index: int
    id: str
    state: str
    detail: str = ""
    log: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def running_shards(root: Path) -> list[tuple[int, int, str]]:
    """The shards (I, N, holder) whose lock is held now."""
    found = []
    for path in sorted((Path(root) / LOCKS).glob("shard-*-of-*.lock")):
        try:
            shard, of = (int(part) for part in path.stem.removeprefix("shard-").split("-of-"))
        except ValueError:
            continue
        kind, holder = probe(path)
        if kind is not None:
            found.append((shard, of, holder))
    return found


def point_states(root: Path) -> list[PointState]:
    """Every point of the sharded run in ``root`` (points/sweep.json), in sweep order."""
    root = Path(root)
    sweep = read_sweep(root)
    if sweep is None:
        raise RtkError(f"{root} holds no sharded run yet (no {RunFolder(root).sweep_file}): no shard has started"
                       " there")
    folder, shards = RunFolder(root), running_shards(root)
    states = []
    for index, point_id in enumerate(sweep["points"]):
        kind, holder = probe(point_lock_path(root, index))
        failure = read_failure(root, index)
        if folder.point_result(index).is_file():
            state = PointState(index, point_id, "done")
        elif kind is not None:
            state = PointState(index, point_id, "running", holder)
        elif failure is not None:
            state = PointState(index, point_id, "failed", str(failure.get("error", "")), failure.get("log"))
        else:
            waiting = [f"{s}/{n}" for s, n, _ in shards if index % n == s - 1]
            if waiting:
                state = PointState(index, point_id, "waiting", f"shard {waiting[0]} is running")
            elif folder.started(index):
                state = PointState(index, point_id, "interrupted", "rerun its shard with --resume to continue")
            else:
                state = PointState(index, point_id, "not started")
        states.append(state)
    return states


def collect_payload(root: Path) -> dict:
    """The payload of results.json (rtk.stages.runner.Runner.payload, complete) from the points;
    an error listing the missing points when any is not done."""
    root = Path(root)
    sweep = read_sweep(root)
    if sweep is None:
        raise RtkError(f"cannot collect {root}: it holds no sharded run (no {RunFolder(root).sweep_file}); run the"
                       " recipe with --shard I/N --out there first")
    ids = sweep["points"]
    missing = [i for i in range(len(ids)) if not RunFolder(root).point_result(i).is_file()]
    if missing:
        raise RtkError(f"cannot collect {root}: {len(missing)} of {len(ids)} points are not done (point"
                       f"{'s' * (len(missing) > 1)} {ranges(missing)}); `rtk status {root}` shows which are running,"
                       " failed or not started")
    runs = []
    for index, point_id in enumerate(ids):
        run = read_point(root, index)
        if run is None or run.get("id") != point_id:
            raise RtkError(f"{RunFolder(root).point_result(index)} holds {run.get('id') if run else None!r}, not"
                           f" point {index} ({point_id}) of {RunFolder(root).sweep_file}; delete it and rerun its"
                           " shard")
        runs.append(run)
    return {**{key: sweep.get(key) for key in HEADER}, "complete": True, "runs": runs}


def write_collected(root: Path, payload: dict, console=None) -> None:
    """results.json, results.csv and plot.png from a collected payload, as an unsharded run writes them."""
    from rtk.services.plots import plot_run

    write_results(Path(root), payload)
    RunFolder(Path(root)).tidy()
    plot_run(Path(root), console=console)  # plot.png of a sweep; a failure only warns


def collect(root: Path, console=None) -> dict:
    """Merge the points of ``root`` into its results (see collect_payload, write_collected), holding
    the folder's lock shared, as a shard does: an unsharded run writing the folder is refused."""
    from rtk.services.locking import OutputLock

    if not Path(root).is_dir():
        raise RtkError(f"cannot collect {root}: no such folder")
    with OutputLock(root, shared=True):
        payload = collect_payload(root)
        write_collected(root, payload, console)
    return payload


def print_report(console, runs: list[dict], title: str, last_line: str, out_dir: Path | None = None) -> None:
    """The results table (stacked, one block per run, when it does not fit the console's width;
    rtk.services.results.results_view), where the training curves are when ``out_dir`` (default
    None: not said) has them, then every flag of every run on its own line, then ``last_line``."""
    console.print(results_view(runs, title=title, width=console.width))
    curves = curves_line(out_dir) if out_dir is not None else None
    if curves:
        console.print(escape(curves), highlight=False, soft_wrap=True)
    for line in reused_sources(runs):
        console.print(escape(line), highlight=False, soft_wrap=True)
    for run in runs:
        for flag in run.get("flags", []):
            where = f"{run['id']}: " if len(runs) > 1 else ""
            attack = f" ({flag['attack']})" if flag.get("attack") else ""
            console.print(f"[yellow]flag[/yellow] {escape(where)}[bold]{escape(str(flag.get('name', '?')))}[/bold]"
                          f"{escape(attack)}: {escape(str(flag.get('message', '')))}", highlight=False,
                          soft_wrap=True)
    console.print(last_line)


def is_sharded(root: Path) -> bool:
    """Whether ``root`` holds a sharded run's points."""
    return RunFolder(Path(root)).sweep_file.is_file()


def share_plan(specs: list, selected: list[int], store, datasets, sources_only: bool = False, label: str = "",
               download: bool = False) -> list[str]:
    """The plan (rtk.stages.plan) of a shard or a --sources-only run: the sources of the selected
    points, numbered as in the whole recipe's plan, then the points that follow."""
    from rtk.errors import DataError
    from rtk.stages.plan import describe_runs, describe_source
    from rtk.stages.source import group_of

    groups = [group_of(spec) for spec in specs]
    order = list(dict.fromkeys(groups))
    notes: dict[str, str] = {}
    lines = [f"source {order.index(g) + 1}/{len(order)}:"
             f" {describe_source(specs[groups.index(g)], store, datasets, notes)}"
             for g in dict.fromkeys(groups[i] for i in selected)]
    if not sources_only:
        chosen = [specs[i] for i in selected]
        lines.append(f"{label}: point{'s' * (len(selected) != 1)} {ranges(selected) or '(none)'} of the"
                     f" sweep's {len(specs)} (point i belongs to shard (i % N) + 1)")
        if chosen:
            lines.append(describe_runs(chosen))
        for spec in chosen:
            if spec.target is not None:
                try:
                    datasets.get(spec.target)
                except DataError as exc:
                    notes.setdefault(spec.target.name, str(exc).splitlines()[0])
    fetch = " (--download fetches it)" if download else ""
    return lines + [f"data not here yet{fetch}: {note}" for note in notes.values()]
