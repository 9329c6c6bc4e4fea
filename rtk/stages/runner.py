"""Run a recipe: source -> transfer -> evaluate -> certify, for each sweep point.

Everything is validated before the first stage starts; nothing is written to the output folder
before every dataset has loaded, and every file in it is written atomically.

The stages, each in its module: rtk.stages.source (build, train or load the source),
rtk.stages.transfer (the strategy and objective; the target checkpoint), rtk.stages.evaluate
(attacks, sanity checks, per-class accuracy) and rtk.stages.certify (the certifier, sharded rows).
The Runner validates, owns the output folder and its lock, resumes, and writes the results.

Resuming (``resume=True``): runs already in an incomplete results.json are kept; a run whose
target checkpoint was saved (it is saved before evaluation starts) is not trained again, and its
evaluation continues after the last batch it saved; an interrupted training continues from its
last training checkpoint. Every such file is a resume-state file of rtk.services.state, which
holds the layout of the run folder.

Under ``torchrun --nproc_per_node=N -m rtk run RECIPE`` every rank runs this same code: training
splits each global batch across ranks, evaluation and feature extraction share out whole batches,
per-example certifiers (rtk.evaluation.certifier.Certifier) share out examples (see
rtk.services.distributed); only rank 0 writes files or prints (the other ranks' consoles are
quiet), and results equal a single-process run's. A distributed run does not save evaluation or certification progress
mid-way (an interrupted one restarts that stage when resumed).

Sharded (``shard=(I, N)``, ``rtk run --shard I/N``): only the points of shard I run, point i
belonging to shard (i % N) + 1; several shards write one folder at the same time, each point under
its own lock, each point's result into points/<i>.json as soon as it is done; the shard that
finds every point done writes results.json (rtk.services.shards; else ``rtk collect``). With
``--resume`` a shard skips its points that are done and continues an interrupted one.
``sources_only`` (``--sources-only``, optionally ``source=(K, M)``): only the selected points'
sources, trained or imported into the store; nothing but training state goes into the folder.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

import rtk
from rtk.config.recipe import Recipe, paper_for
from rtk.config.spec import RunSpec, resolve
from rtk.errors import RtkError
from rtk.registry import Registry
from rtk.services import distributed
from rtk.services import shards
from rtk.services.metrics import MetricsLog
from rtk.services.locking import OutputLock, PointLock, ShardLock, header_lock
from rtk.services.results import results_table, write_results
from rtk.config.source_key import source_key
from rtk.services.state import RunFolder, atomic_write_text
from rtk.services.store import SourceStore
from rtk.stages.certify import certify_target
from rtk.stages.context import RunContext, resolve_device
from rtk.stages.datasets import Datasets, allow_downloads
from rtk.stages.evaluate import evaluate_target
from rtk.stages.source import SourceStage
from rtk.stages.transfer import TransferStage
from rtk.tracking import Trackers, point_results, tracked, tracker_specs


def environment(device: torch.device, seed: int, deterministic: bool = False) -> dict:
    import importlib.metadata as md

    versions = {}
    for dist in ("torch", "torchvision", "timm", "torchattacks", "pyautoattack", "numpy", "scipy"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "rtk": rtk.__version__, "python": sys.version.split()[0], "platform": platform.platform(),
        "versions": versions, "device": str(device), "device_name": name,
        "torch_threads": torch.get_num_threads(), "seed": seed, "argv": sys.argv, "deterministic": deterministic,
        "started": datetime.now().isoformat(timespec="seconds"), "world_size": distributed.world().size,
    }


def first_difference(a, b, prefix: str = "") -> str | None:
    """The first dotted key at which two TOML documents differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            found = first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := first_difference(x, y, f"{prefix}{i}."))), None)
    return None if a == b else prefix.rstrip(".") or "(the whole recipe)"


EXISTING = ("{} already holds results.json; choose another --out, pass --overwrite, or --resume to continue an"
            " interrupted run")


class Runner:
    def __init__(self, recipe: Recipe, registry: Registry, out_dir: Path | None = None, *,
                 show_progress: bool = True, console=None, overwrite: bool = False, resume: bool = False,
                 deterministic: bool = False, store: SourceStore | None = None, download: bool = False,
                 shard: tuple[int, int] | None = None, sources_only: bool = False,
                 source: tuple[int, int] | None = None, trackers: tuple[str, ...] = ()):
        self.recipe = recipe
        self.registry = registry
        self.specs: list[RunSpec] = resolve(recipe, registry)  # validates every sweep point up front
        self.shard, self.sources_only = shard, sources_only
        self.sharded = shard is not None and not sources_only  # runs its points into a shared folder
        self.selected = shards.select_points(self.specs, shard, source, sources_only)
        self.collected, self.source_lines = False, []
        if download:
            allow_downloads(self.specs)
        self.store = store or SourceStore()
        self.world = distributed.init(resolve_device(self.specs[0].run.device))
        if not self.world.is_main:  # rank 0 alone prints; the others would repeat every line
            show_progress, console = False, Console(quiet=True)
        self.out_dir = self.output_folder(out_dir, resume, overwrite)
        self.resume, self.overwrite, self.deterministic = resume, overwrite, deterministic
        self.show_progress, self.console = show_progress, console
        self.folder = RunFolder(self.out_dir, resume)
        self.datasets = Datasets()
        self.source = SourceStage(self.specs, self.datasets, self.folder, recipe.path, self.store,
                                  lambda: environment(resolve_device(self.specs[0].run.device), self.specs[0].run.seed,
                                                      self.deterministic))
        self.transfer = TransferStage(self.source, self.folder)
        self.runs: list[dict] = []
        self.tracker_specs = tracker_specs(self.specs[0].trackers, trackers, registry)
        self.trackers = Trackers([])
        self.metrics = MetricsLog(self.out_dir, self.trackers) if not sources_only else None
        if self.world.is_main and not sources_only:  # rank 0 takes the lock; another rank would find it taken
            # refuse a folder another run is writing before reading its results
            OutputLock(self.out_dir, shared=self.sharded).check()
        self.finished: list[dict] = []
        self.done: set[int] = set()
        if self.sharded:
            self.done = self.check_shard()
        elif not sources_only:
            self.check_unsharded()
            self.finished = self.check_resume() if resume else []
            if not resume and (self.out_dir / "results.json").exists() and not overwrite:
                raise RtkError(EXISTING.format(self.out_dir))
        distributed.barrier()  # every rank has read --out before rank 0 can write to it

    def check_unsharded(self) -> None:
        """An unsharded run does not mix its results with a sharded run's points."""
        if shards.is_sharded(self.out_dir) and not self.overwrite:
            raise RtkError(f"{self.out_dir} holds the points of a sharded run (`rtk status {self.out_dir}`); continue"
                           " it with --shard I/N --resume, gather it with `rtk collect`, pass --overwrite to replace"
                           " it, or choose another --out")

    def check_shard(self) -> set[int]:
        """The points of this shard that are done already (skipped when resuming); refuses a folder
        with an unsharded run's results, another recipe, or done points without --resume."""
        out = self.out_dir
        if (out / "results.json").exists() and not shards.is_sharded(out) and not self.overwrite:
            raise RtkError(f"{out} holds the results of an unsharded run; continue it without --shard, pass"
                           " --overwrite to replace it, or choose another --out")
        self.check_same_recipe("run this shard")
        done = [i for i in self.selected if self.folder.point_result(i).is_file()]
        if done and not (self.resume or self.overwrite):
            them = "them" if len(done) > 1 else "it"
            raise RtkError(f"{out}: point{'s' * (len(done) > 1)} {shards.ranges(done)} of this shard done already;"
                           f" pass --resume to skip {them} and go on, --overwrite to run {them} again, or choose"
                           " another --out")
        return set(done) if self.resume else set()

    def output_folder(self, out_dir: Path | None, resume: bool, overwrite: bool) -> Path:
        name = self.specs[0].run.name
        out_dir = Path(out_dir) if out_dir else Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
        if out_dir.exists() and not out_dir.is_dir():
            raise RtkError(f"--out {out_dir} is a file, not a folder")
        if resume and overwrite:
            raise RtkError("--resume continues the results in --out and --overwrite replaces them; pass one of them")
        return out_dir

    def check_resume(self) -> list[dict]:
        """The runs an interrupted run in --out finished; refuses a complete or different run."""
        self.check_same_recipe()
        results = self.out_dir / "results.json"
        if not results.is_file():
            return []
        try:
            payload = json.loads(results.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RtkError(f"cannot resume: {results} is unreadable ({exc}); choose another --out or pass --overwrite"
                           ) from None
        if payload.get("complete"):
            raise RtkError(f"{self.out_dir} already holds complete results; nothing to resume (pass --overwrite to run"
                           " again)")
        runs = payload.get("runs", [])
        if [r.get("id") for r in runs] != [s.id for s in self.specs[:len(runs)]]:
            raise RtkError(f"cannot resume: the runs in {results} are not this recipe's sweep points; choose another"
                           " --out")
        return runs

    def check_same_recipe(self, action: str = "resume") -> None:
        """Refuse to resume (or ``action``) a run folder whose recipe.resolved.toml differs from this recipe."""
        import tomllib

        import tomli_w

        resolved = self.out_dir / "recipe.resolved.toml"
        if not resolved.is_file():
            return
        try:
            saved = tomllib.loads(resolved.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RtkError(f"cannot {action}: {resolved} is unreadable ({exc})") from None
        where = first_difference(saved, tomllib.loads(tomli_w.dumps(self.recipe.raw)))
        if where:
            again = "run every shard" if action != "resume" else "resume"
            raise RtkError(f"cannot {action}: {self.out_dir} holds a different recipe ({where} differs from its"
                           f" recipe.resolved.toml); {again} with the same recipe, --set and --profile, or choose"
                           " another --out")

    def context(self, spec: RunSpec, index: int = 0) -> RunContext:
        ctx = RunContext(device=distributed.local_device(resolve_device(spec.run.device)), run=spec.run,
                         show_progress=self.show_progress, out_dir=self.out_dir, checkpoint_dir=self.folder.train_dir,
                         resume=self.resume, run_index=index, metrics=self.metrics)
        if self.console is not None:
            ctx.console = self.console
        return ctx

    def run_point(self, index: int, spec: RunSpec) -> dict:
        """Run sweep point ``index``: its target model (trained, or resumed), evaluated and certified."""
        ctx = self.context(spec, index)
        target = self.datasets.get(spec.target) if spec.target else None
        model, source_info, seconds = self.transfer.target_model(index, spec, ctx, target)
        started = time.perf_counter()
        metrics, extra = {}, {}
        if target is not None:
            result, extra = evaluate_target(model, target, spec, ctx, self.folder)
            metrics = result["metrics"]
            if spec.certify is not None:
                extra["certify"], flags = certify_target(spec, model, target.test, result["indices"], ctx)
                extra["flags"] = list(extra["flags"]) + flags
        run = {"id": spec.id, "params": spec.params, "metrics": metrics,
               "paper": paper_for(self.recipe, spec.params, spec.cases), **extra,
               "checkpoint": str(self.folder.target_weights(index).relative_to(self.out_dir)),
               "seconds": round(seconds + time.perf_counter() - started, 2)}
        if source_info:
            run["source"] = source_info
        if spec.group is not None:  # [run] seeds: the point this run repeats with its seed
            run["point"], run["seed"] = spec.group, spec.run.seed
        return run

    def payload(self, complete: bool) -> dict:
        return {"recipe": self.recipe.raw.get("run", {}).get("name", self.recipe.path.stem),
                "recipe_path": str(self.recipe.path), "profile": self.recipe.profile,
                "overrides": self.recipe.overrides, "rtk_version": rtk.__version__,
                "complete": complete, "runs": self.runs}

    def write_header(self, ctx: RunContext) -> None:
        import tomli_w

        self.out_dir.mkdir(parents=True, exist_ok=True)
        recipe = self.recipe
        atomic_write_text(self.out_dir / "recipe.resolved.toml",
                          f"# {recipe.path} resolved (profile: {recipe.profile}, --set: {recipe.overrides})\n"
                          + tomli_w.dumps(dict(recipe.raw)))
        env = environment(ctx.device, ctx.seed, self.deterministic)
        atomic_write_text(self.out_dir / "env.json", json.dumps(env, indent=2) + "\n")

    def prepare(self) -> None:
        """Load every dataset before anything is written, so missing data fails with an empty --out
        (not the source data of a source that the store already holds)."""
        for spec in (self.specs[i] for i in self.selected):
            stored = spec.source.trained and self.store.get(source_key(spec.source)) is not None
            for data in (None if stored else spec.source.data, None if self.sources_only else spec.target):
                if data is not None:
                    self.datasets.get(data)

    def run(self) -> dict:
        result = self._run_deterministic() if self.deterministic else self._run()
        # Not in a finally: after an error on one rank the others sit in a collective, and torchrun
        # ends them; a barrier here would only hang. Models and tensors go first, or gloo can abort
        # the process at exit.
        if self.world.distributed:
            self.source.trained.clear()
            self.datasets.clear()
            gc.collect()
            distributed.shutdown()
        return result

    def _run_deterministic(self) -> dict:
        previous = torch.are_deterministic_algorithms_enabled()
        if torch.cuda.is_available():  # cuBLAS is deterministic only with a fixed workspace
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        try:
            return self._run()
        finally:
            torch.use_deterministic_algorithms(previous)

    def plan(self) -> list[str]:
        """What will happen to each source, and the runs that follow (rtk.stages.plan)."""
        from rtk.stages.plan import plan

        if self.sharded or self.sources_only:
            return shards.share_plan(self.specs, self.selected, self.store, self.datasets, self.sources_only,
                                     f"shard {self.shard[0]}/{self.shard[1]}" if self.shard else "")
        return plan(self.specs, self.store, self.datasets)

    def _run(self) -> dict:
        self.prepare()
        if self.world.is_main and self.console is not None:
            for line in self.plan():
                self.console.print(f"plan: {escape(line)}", highlight=False, soft_wrap=True)
        if self.sources_only:
            return self._run_sources()
        with self.tracking():
            return self._run_tracked()

    def tracking(self):
        """The trackers of the run (rank 0; rtk.tracking.tracked): started now, finished with the
        run's artefacts, or as failed when it raises."""
        if not (self.world.is_main and self.tracker_specs):
            return contextlib.nullcontext()
        return tracked(self.trackers, self.tracker_specs, self.recipe, self.out_dir, [s.id for s in self.specs],
                       self.warn)

    def warn(self, message: str) -> None:
        if self.console is not None:
            self.console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)

    def _run_tracked(self) -> dict:
        if self.sharded:
            return self._run_shard()
        lock = OutputLock(self.out_dir) if self.world.is_main else contextlib.nullcontext()
        with lock:  # taken after prepare(), so a run whose data fails leaves no folder
            if not (self.resume or self.overwrite) and (self.out_dir / "results.json").exists():
                raise RtkError(EXISTING.format(self.out_dir))  # a run that finished meanwhile
            if self.overwrite and self.world.is_main and shards.is_sharded(self.out_dir):
                import shutil

                shutil.rmtree(self.folder.sweep_file.parent)  # a sharded run's points, replaced by this run
            distributed.barrier()  # no rank checks results.json after rank 0 wrote it
            return self._run_points()

    def _run_shard(self) -> dict:
        """This shard's points, each under its lock into points/<i>.json; results.json when every
        point of the sweep is done."""
        main, name = self.world.is_main, f"{self.shard[0]}/{self.shard[1]}"
        with contextlib.ExitStack() as held:
            if main:  # the folder shared with the other shards, this shard alone
                held.enter_context(OutputLock(self.out_dir, shared=True))
                held.enter_context(ShardLock(self.out_dir, *self.shard))
                self.write_shard_header()
            distributed.barrier()
            for index in self.selected:
                if index in self.done:
                    continue
                spec = self.specs[index]
                with PointLock(self.out_dir, index, spec.id, name) if main else contextlib.nullcontext():
                    self.context(spec).console.print(f"[bold]run {index + 1}/{len(self.specs)}[/bold] (shard {name}):"
                                                     f" {spec.id}")
                    if main:
                        self.folder.point_error(index).unlink(missing_ok=True)
                    try:
                        run = self.run_point(index, spec)
                    except Exception as exc:
                        if main:
                            shards.record_failure(self.out_dir, index, exc, name)
                        raise
                    if main:
                        self.trackers.log_results(point_results(run))
                        shards.write_point(self.out_dir, index, run)
                        self.folder.finish_run(index)
            if not main:
                return self.payload(complete=False)
            if all(self.folder.point_result(i).is_file() for i in range(len(self.specs))):
                payload = shards.collect_payload(self.out_dir)  # the last shard to finish gathers them
                shards.write_collected(self.out_dir, payload, self.console)
                self.runs, self.collected = payload["runs"], True
                return payload
        self.runs = [run for i in self.selected if (run := shards.read_point(self.out_dir, i)) is not None]
        return self.payload(complete=False)

    def write_shard_header(self) -> None:
        """recipe.resolved.toml, env.json and points/sweep.json, by the first shard (the others
        check that their recipe is the same)."""
        with header_lock(self.out_dir):
            if (self.out_dir / "recipe.resolved.toml").is_file():
                self.check_same_recipe("run this shard")
            else:
                self.write_header(self.context(self.specs[0]))
            if self.overwrite:  # results of the points run again would be stale
                for name in ("results.json", "results.csv"):
                    (self.out_dir / name).unlink(missing_ok=True)
            if not self.folder.sweep_file.is_file():
                shards.write_sweep(self.out_dir, self.payload(complete=False), [spec.id for spec in self.specs])

    def _run_sources(self) -> dict:
        """Only the selected points' sources: each one the store lacks trained or imported into it."""
        from rtk.stages.source import group_of

        groups = [group_of(spec) for spec in self.specs]
        order = list(dict.fromkeys(groups))
        existed = self.out_dir.exists()
        for group in dict.fromkeys(groups[i] for i in self.selected):
            k = order.index(group)
            spec = self.specs[groups.index(group)]
            line = self.ensure_source(spec, self.context(spec), k)
            self.source_lines.append(f"source {k + 1}/{len(order)}: {line}")
        if self.world.is_main:
            self.folder.tidy()
            if not existed:
                with contextlib.suppress(OSError):
                    self.out_dir.rmdir()  # made for training state alone, now gone
        return self.payload(complete=False)

    def ensure_source(self, spec: RunSpec, ctx: RunContext, k: int) -> str:
        """Put ``spec``'s source into the store unless it is there; what happened, in words."""
        source = spec.source
        if source.imported is not None:
            _, info = self.source.imported(spec, ctx)
            return f"{info['key']} in the store {info['store']}"
        if not source.trained:
            return "a weights file or untrained: nothing to store"
        key = source_key(source)
        entry = self.store.get(key)
        if entry is None:
            _, info = self.source.train_once(spec, ctx, k, key)
            return f"{key} trained{' by another run meanwhile' if info.get('made_by') else ''}, in {self.store.root}"
        return f"{key} in the store already ({entry.path})"

    def _run_points(self) -> dict:
        self.runs = list(self.finished)
        for index, spec in enumerate(self.specs):
            if index < len(self.finished):
                continue
            ctx = self.context(spec)
            kept = self.resume and (self.out_dir / "recipe.resolved.toml").is_file()  # a resumed run keeps its env.json
            if index == len(self.finished) and not kept and self.world.is_main:
                self.write_header(ctx)
            if len(self.specs) > 1:
                ctx.console.print(f"[bold]run {index + 1}/{len(self.specs)}[/bold]: {spec.id}")
            self.runs.append(self.run_point(index, spec))
            if self.world.is_main:
                self.trackers.log_results(point_results(self.runs[-1]))
                write_results(self.out_dir, self.payload(complete=index == len(self.specs) - 1))
                self.folder.finish_run(index)
        if self.world.is_main:
            from rtk.services.plots import plot_run

            self.folder.tidy()
            plot_run(self.out_dir, console=self.console)  # plot.png of a sweep; a failure only warns
        return self.payload(complete=True)

    def table(self):
        return results_table(self.runs, title=f"{self.recipe.raw.get('run', {}).get('name', self.recipe.path.stem)}")

    def report(self, console) -> None:
        """The results table, then every flag of every run on its own line, then where results are
        (rank 0 only under torchrun). A shard that did not gather the sweep says where its points
        are; a --sources-only run, what happened to each source."""
        if not self.world.is_main:
            return
        if self.sources_only:
            for line in self.source_lines:
                console.print(escape(line), highlight=False, soft_wrap=True)
            return
        last = f"results: {self.out_dir / 'results.json'}"
        if self.sharded and not self.collected:
            done = sum(self.folder.point_result(i).is_file() for i in range(len(self.specs)))
            last = (f"points: {self.folder.sweep_file.parent} ({done} of {len(self.specs)} done; `rtk status"
                    f" {self.out_dir}`, then `rtk collect {self.out_dir}` once every point is done)")
        shards.print_report(console, self.runs, self.table().title, last, self.out_dir)

