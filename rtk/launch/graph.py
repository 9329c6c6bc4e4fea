"""The job graph of a launched recipe: one job per source the store lacks, one per sweep point
not done yet (each after its source's job), one that collects (after every point job).

Every job is an ``rtk`` command line: ``rtk run RECIPE --out OUT --sources-only --source K/M``
(the K-th of the recipe's M distinct sources, in the order the plan prints them),
``rtk run RECIPE --out OUT --shard I/N`` with N the number of sweep points (so shard I runs
point I - 1 alone) and ``rtk collect OUT``. What is already done is left out: sources in the
store, points whose ``OUT/points/<i>.json`` exists; a complete ``OUT/results.json`` leaves
nothing to do. Building the graph reads the store and the output folder and writes nothing; it
imports no scheduler library.
"""
from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from rtk.config.source_key import source_key
from rtk.config.spec import RunSpec
from rtk.errors import RtkError
from rtk.services.store import SourceStore


@dataclass
class Job:
    name: str                   # "source-1", "point-0", "collect"
    kind: str                   # "source" | "point" | "collect"
    args: list[str]             # the rtk command line, without "rtk"
    after: list[str] = field(default_factory=list)  # names of the jobs it needs (afterok)


@dataclass
class Source:
    index: int                  # K, 1-based, in the plan's order
    spec: RunSpec               # its first sweep point
    state: str                  # "train", "import" (a job makes it), "store", "file", "none" (no job)
    points: list[int]           # the sweep points that use it
    job: Job | None = None


@dataclass
class Graph:
    out: Path
    points: int                 # sweep points in the recipe
    sources: list[Source]
    done: list[int]             # points already in OUT/points/
    complete: bool              # OUT/results.json is complete: nothing to do
    jobs: list[Job]

    def job(self, name: str) -> Job:
        return next(j for j in self.jobs if j.name == name)

    def of_kind(self, kind: str) -> list[Job]:
        return [j for j in self.jobs if j.kind == kind]


def source_state(spec: RunSpec, store: SourceStore) -> str:
    """What a source needs: "train" or "import" (a job), "store" (there already), "file" or "none"."""
    source = spec.source
    if source.imported is not None:
        from rtk.stages.plan import describe_import

        return "store" if describe_import(spec, store).startswith("reused") else "import"
    if source.trained:
        return "store" if store.get(source_key(source)) is not None else "train"
    return "file" if source.weights is not None else "none"


def sources_of(specs: list[RunSpec], store: SourceStore) -> list[Source]:
    """The recipe's distinct sources in the plan's order (rtk.stages.plan), with their points."""
    from rtk.stages.source import group_of

    groups: dict[str, Source] = {}
    for i, spec in enumerate(specs):
        group = group_of(spec)
        if group not in groups:
            groups[group] = Source(len(groups) + 1, spec, source_state(spec, store), [])
        groups[group].points.append(i)
    return list(groups.values())


def point_file(out: Path, index: int) -> Path:
    return Path(out) / "points" / f"{index}.json"


def is_complete(out: Path) -> bool:
    try:
        return bool(json.loads((Path(out) / "results.json").read_text(encoding="utf-8")).get("complete"))
    except (OSError, ValueError, AttributeError):
        return False


def check_same_recipe(out: Path, raw: dict) -> None:
    """Refuse an --out that holds another recipe's run (its recipe.resolved.toml differs), before any
    job is submitted: every job would fail on it."""
    import tomli_w

    resolved = Path(out) / "recipe.resolved.toml"
    if not resolved.is_file():
        return
    try:
        saved = tomllib.loads(resolved.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RtkError(f"cannot continue {out}: {resolved} is unreadable ({exc})") from None
    if saved != tomllib.loads(tomli_w.dumps(dict(raw))):
        raise RtkError(f"{out} holds a different recipe (its recipe.resolved.toml differs); launch with the same"
                       " recipe, --set and --profile, or choose another --out")


def build_graph(specs: list[RunSpec], store: SourceStore, out: Path, base: list[str], resume: bool) -> Graph:
    """The jobs still needed to fill ``out``. ``base``: the arguments every ``rtk run`` job shares
    (``run RECIPE --out OUT --store DIR ...``); ``resume``: add ``--resume`` (a resubmission)."""
    out = Path(out)
    sources = sources_of(specs, store)
    n = len(specs)
    done = [i for i in range(n) if point_file(out, i).is_file()]
    complete = is_complete(out)
    jobs: list[Job] = []
    if complete:
        return Graph(out, n, sources, done, True, jobs)
    again = ["--resume"] if resume else []
    todo = [i for i in range(n) if i not in done]
    needs = {i: s for s in sources for i in s.points}
    for source in sources:
        if source.state in ("train", "import") and any(i in todo for i in source.points):
            source.job = Job(f"source-{source.index}", "source",
                             [*base, "--sources-only", "--source", f"{source.index}/{len(sources)}", *again])
            jobs.append(source.job)
    points = []
    for i in todo:
        source_job = needs[i].job
        points.append(Job(f"point-{i}", "point", [*base, "--shard", f"{i + 1}/{n}", *again],
                          [source_job.name] if source_job else []))
    jobs += points
    jobs.append(Job("collect", "collect", ["collect", str(out)], [j.name for j in points]))
    return Graph(out, n, sources, done, False, jobs)


def ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    parts, start = [], None
    for k, i in enumerate(indices):
        if start is None:
            start = i
        if k + 1 == len(indices) or indices[k + 1] != i + 1:
            parts.append(f"{start}" if start == i else f"{start}-{i}")
            start = None
    return ", ".join(parts)


def describe(graph: Graph, source_lines: list[str], resources, launcher: str) -> list[str]:
    """The job graph, one line per source, then the point jobs by source, then collect and the
    resources. ``source_lines``: the plan's line for each source (rtk.stages.plan.describe_source)."""
    if graph.complete:
        return [f"{graph.out / 'results.json'} is complete: nothing to submit"]
    lines = []
    for source, line in zip(graph.sources, source_lines):
        job = f"job {source.job.name}" if source.job else "no job"
        lines.append(f"source {source.index}/{len(graph.sources)}: {line} -> {job}")
    points = graph.of_kind("point")
    done = f"; {len(graph.done)} already done in {graph.out / 'points'}" if graph.done else ""
    lines.append(f"{len(points)} point job{'s' if len(points) != 1 else ''} (rtk run --shard I/{graph.points},"
                 f" one sweep point each){done}")
    names = {j.name for j in points}
    for source in graph.sources:
        mine = [i for i in source.points if f"point-{i}" in names]
        if mine:
            when = f"after {source.job.name}" if source.job else "at once (its source needs no job)"
            lines.append(f"  points {ranges(mine)} (source {source.index}): {when}")
    after = f"after the {len(points)} point job{'s' if len(points) != 1 else ''}" if points else "at once"
    lines.append(f"collect: 1 job {after} (rtk collect {graph.out})")
    local = launcher != "slurm"
    lines.append(f"resources of each source and point job: {resources.describe(local)}")
    lines.append(f"resources of the collect job: {resources.for_collect().describe(local)}")
    return lines
