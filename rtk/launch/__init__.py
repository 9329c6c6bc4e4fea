"""``rtk run RECIPE --launcher slurm|local``: a recipe's sources and sweep points as cluster jobs.

One job per source the store lacks (``rtk run --sources-only --source K/M``), one per sweep point
not done yet (``rtk run --shard I/N``, after its source's job), one that collects (``rtk collect``,
after every point job): rtk.launch.graph builds the graph, rtk.launch.config the resources (the
command line, else the user's launcher.toml, else 1 GPU, 8 CPUs, 24 h; never the recipe),
rtk.launch.submit submits it through submitit. Running the same command again submits only what
is missing. Nothing here imports submitit until jobs are submitted.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

from rtk.errors import RtkError

LAUNCHERS = ("slurm", "local")


def job_arguments(recipe_path: Path, out: Path, store_root: Path, profile: str | None, overrides: list[str],
                  deterministic: bool = False, download: bool = False) -> list[str]:
    """The ``rtk run`` arguments every source and point job shares (absolute paths: a job may
    start in another folder)."""
    args = ["run", str(Path(recipe_path).resolve()), "--out", str(out), "--store", str(store_root), "--quiet"]
    if profile:
        args += ["--profile", profile]
    for override in overrides:
        args += ["--set", override]
    if deterministic:
        args.append("--deterministic")
    if download:
        args.append("--download")
    return args


def launch(recipe_path: Path, loaded, registry, *, launcher: str, out: Path | None, store, profile: str | None,
           overrides: list[str], options: dict, config_file: Path | None = None, dry_run: bool = False,
           overwrite: bool = False, deterministic: bool = False, download: bool = False, console=None) -> int:
    """Build the job graph of ``loaded`` (a rtk.config.recipe.Recipe) and submit it with
    ``launcher``; ``options``: the command line's partition, gpus, cpus, time, account, sbatch.
    Prints the graph (``dry_run``: and stops); returns the exit code (local: 1 if a job failed)."""
    from rich.console import Console
    from rich.markup import escape

    from rtk.config.spec import resolve
    from rtk.launch.config import resources
    from rtk.launch.graph import build_graph, check_same_recipe, describe

    console = console or Console()
    if launcher not in LAUNCHERS:
        raise RtkError(f"--launcher {launcher}: choose one of {', '.join(LAUNCHERS)}")
    if overwrite:
        raise RtkError("--overwrite does not go with --launcher: the jobs fill --out point by point and a second"
                       " submission continues it; choose a new --out to start over")
    res = resources(options, config_file)
    specs = resolve(loaded, registry)  # validates every sweep point before anything is submitted
    if out is None:
        out = Path("runs") / f"{specs[0].run.name}-{datetime.now():%Y%m%d-%H%M%S}"
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise RtkError(f"--out {out} is a file, not a folder")
    again = out.is_dir()  # a resubmission: jobs continue what earlier ones left (--resume)
    if again:
        check_same_recipe(out, loaded.raw)
    base = job_arguments(recipe_path, out, store.root, profile, overrides, deterministic, download)
    graph = build_graph(specs, store, out, base, resume=again)
    profiled = f" (profile {profile})" if profile else ""
    head = "launch plan" if dry_run else "launch"
    console.print(f"{head} of {recipe_path}{profiled} with --launcher {launcher} -> {out}, store {store.root}:",
                  highlight=False, soft_wrap=True)
    for line in describe(graph, source_lines(graph, store), res, launcher):
        console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
    for line in earlier_failures(graph):
        console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
    if dry_run:
        console.print("dry run: nothing submitted", highlight=False)
        return 0
    if graph.complete:
        return 0
    try:
        from rtk.launch import submit
    except ImportError as exc:
        raise RtkError(f'--launcher needs submitit ({exc}): pip install "rtk[slurm]"') from None
    out.mkdir(parents=True, exist_ok=True)
    if launcher == "slurm":
        return submit.submit_slurm(graph, res, console)
    return submit.run_local(graph, res, console)


def source_lines(graph, store) -> list[str]:
    """The plan's description of each source (rtk.stages.plan.describe_source)."""
    from rtk.stages.datasets import Datasets
    from rtk.stages.plan import describe_source

    datasets, notes = Datasets(), {}
    return [describe_source(source.spec, store, datasets, notes) for source in graph.sources]


def earlier_failures(graph) -> list[str]:
    """For each job about to be submitted again: the earlier job that did not finish it, and its log."""
    from rtk.launch import history

    found = history.earlier(graph.out)
    lines = []
    for job in graph.jobs:
        before = found.get(job.name)
        if before is None or before.get("state") == "done":
            continue
        reason = history.last_error(Path(before["log"])) if before.get("log") else ""
        lines.append(f"again: {job.name}, whose earlier {before.get('launcher')} job {before.get('id')} did not finish"
                     f"{': ' + reason if reason else ''} (log: {before.get('log')})")
    return lines
