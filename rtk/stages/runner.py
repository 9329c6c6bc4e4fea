"""Run a recipe: source -> transfer -> evaluate -> certify, for each sweep point.

Everything is validated before the first stage starts; nothing is written to the output folder
before every dataset has loaded, and every file in it is written atomically.

Resuming (``resume=True``): runs already in an incomplete results.json are kept; a run whose
target checkpoint was saved (it is saved before evaluation starts) is not trained again, and its
evaluation continues after the last batch saved in ``eval-state/run-<i>.safetensors``. An
interrupted training continues from ``train-state/<source|transfer>-<i>.pt`` (see rtk.services.checkpoints),
which is deleted once the stage's weights are saved in ``checkpoints/``.

Under ``torchrun --nproc_per_node=N -m rtk run RECIPE`` every rank runs this same code: training
splits each global batch across ranks, evaluation and feature extraction share out whole batches,
per-example certifiers (rtk.evaluation.certifier.Certifier) share out examples (see rtk.services.distributed); only
rank 0 writes files or prints (the other ranks' consoles are quiet), and results equal a
single-process run's. A distributed run does not save evaluation or certification progress
mid-way (an interrupted one restarts that stage when resumed).
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import platform
import random
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

import rtk
from rtk.services import distributed
from rtk.evaluation.certifier import Certifier
from rtk.config.fields import to_table
from rtk.services.checkpoints import remove_train_states
from rtk.stages.context import RunContext, resolve_device
from rtk.data import DataSplits, apply_options
from rtk.errors import RtkError
from rtk.evaluation.robust_accuracy import EvalState, evaluate, select_indices
from rtk.services.locking import OutputLock
from rtk.models import load_weights, read_state_dict, save_weights
from rtk.config.recipe import Recipe, paper_for
from rtk.registry import Registry
from rtk.services.results import atomic_write_text, results_table, write_results
from rtk.evaluation.sanity import SanityAttack
from rtk.config.spec import ComponentSpec, RunSpec, resolve
from rtk.stages.training import fit


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy

        numpy.random.seed(seed)
    except ImportError:
        pass


def environment(device: torch.device, seed: int, deterministic: bool = False) -> dict:
    import importlib.metadata as md

    versions = {}
    for dist in ("torch", "torchvision", "timm", "torchattacks", "pyautoattack", "numpy", "scipy"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    return {
        "rtk": rtk.__version__, "python": sys.version.split()[0], "platform": platform.platform(),
        "versions": versions, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(), "seed": seed, "argv": sys.argv, "deterministic": deterministic,
        "started": datetime.now().isoformat(timespec="seconds"), "world_size": distributed.world().size,
    }


def load_dataset(spec: ComponentSpec) -> DataSplits:
    data = spec.build()
    if not isinstance(data, DataSplits):
        raise RtkError(f"{spec.component.describe()} returned {type(data).__name__}, not rtk.data.DataSplits")
    return apply_options(data, spec.config)


def accuracy(model, data, ctx: RunContext, batch_size: int = 512) -> float:
    return evaluate(model, data, [], ctx, batch_size)["metrics"]["clean"]


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


class Runner:
    def __init__(self, recipe: Recipe, registry: Registry, out_dir: Path | None = None, *,
                 show_progress: bool = True, console=None, overwrite: bool = False, resume: bool = False,
                 deterministic: bool = False):
        self.recipe = recipe
        self.registry = registry
        self.specs: list[RunSpec] = resolve(recipe, registry)  # validates every sweep point up front
        self.world = distributed.init(resolve_device(self.specs[0].run.device))
        if not self.world.is_main:  # rank 0 alone prints; the others would repeat every line
            show_progress, console = False, Console(quiet=True)
        name = self.specs[0].run.name
        self.out_dir = Path(out_dir) if out_dir else Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise RtkError(f"--out {self.out_dir} is a file, not a folder")
        if resume and overwrite:
            raise RtkError("--resume continues the results in --out and --overwrite replaces them; pass one of them")
        self.resume = resume
        self.overwrite = overwrite
        self.deterministic = deterministic
        self.show_progress = show_progress
        self.console = console
        self.datasets: dict[str, DataSplits] = {}
        self.sources: dict[str, tuple[dict, dict]] = {}  # source table -> (state dict, info)
        keys = [json.dumps(spec.raw.get("source"), sort_keys=True, default=str) for spec in self.specs]
        self.source_index = {key: i for i, key in enumerate(dict.fromkeys(keys))}  # stable checkpoint names
        self.runs: list[dict] = []
        if self.world.is_main:  # rank 0 takes the lock; another rank would find it taken
            OutputLock(self.out_dir).check()  # refuse a folder another run is writing before reading its results
        self.finished: list[dict] = self.check_resume() if resume else []
        if not resume and (self.out_dir / "results.json").exists() and not overwrite:
            raise RtkError(f"{self.out_dir} already holds results.json; choose another --out, pass --overwrite,"
                           " or --resume to continue an interrupted run")
        distributed.barrier()  # every rank has read --out before rank 0 can write to it

    def check_resume(self) -> list[dict]:
        """The runs an interrupted run in --out finished; refuses a complete or different run."""
        results, resolved = self.out_dir / "results.json", self.out_dir / "recipe.resolved.toml"
        if resolved.is_file():
            import tomllib

            import tomli_w

            try:
                saved = tomllib.loads(resolved.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise RtkError(f"cannot resume: {resolved} is unreadable ({exc})") from None
            where = first_difference(saved, tomllib.loads(tomli_w.dumps(self.recipe.raw)))
            if where:
                raise RtkError(f"cannot resume: {self.out_dir} holds a different recipe ({where} differs from its"
                               " recipe.resolved.toml); resume with the same recipe, --set and --profile, or choose another --out")
        if not results.is_file():
            return []
        try:
            payload = json.loads(results.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RtkError(f"cannot resume: {results} is unreadable ({exc}); choose another --out or pass --overwrite") from None
        if payload.get("complete"):
            raise RtkError(f"{self.out_dir} already holds complete results; nothing to resume (pass --overwrite to run again)")
        runs = payload.get("runs", [])
        if [r.get("id") for r in runs] != [s.id for s in self.specs[:len(runs)]]:
            raise RtkError(f"cannot resume: the runs in {results} are not this recipe's sweep points; choose another --out")
        return runs

    def context(self, spec: RunSpec, index: int = 0) -> RunContext:
        run = spec.run
        ctx = RunContext(device=distributed.local_device(resolve_device(run.device)), seed=run.seed,
                         show_progress=self.show_progress, out_dir=self.out_dir, checkpoint_dir=self.out_dir / "train-state",
                         resume=self.resume, run_index=index, amp=run.amp, eval_amp=run.eval_amp,
                         channels_last=run.channels_last, workers=run.workers, pin_memory=run.pin_memory,
                         non_blocking=run.non_blocking, feature_cache_mb=run.feature_cache_mb)
        if self.console is not None:
            ctx.console = self.console
        return ctx

    @staticmethod
    def fast_model(model, spec: RunSpec):
        """The [run] fast paths that act on the model: channels_last weights, compiled forward.
        nn.Module.compile compiles in place, so state dicts, ``features`` and ``head`` are untouched."""
        if spec.run.channels_last:
            model.to(memory_format=torch.channels_last)
        if spec.run.compile and not getattr(model, "_rtk_compiled", False):
            model.compile()
            model._rtk_compiled = True
        return model

    def certify(self, certifier, model, test, indices: torch.Tensor, ctx: RunContext):
        """The certifier's results on the test examples ``indices`` (on rank 0; None on the others).
        A per-example Certifier's rows are renumbered from positions in that subset to test-set
        indices before it summarises them, so its per-example file names the images themselves.
        Under torchrun each rank certifies a strided shard, without a progress log (ctx.out_dir
        None: only rank 0 writes), and rank 0 summarises the gathered rows; any other certifier
        runs on rank 0 alone."""
        data = test.subset(indices)
        if not isinstance(certifier, Certifier):
            return certifier.certify(model, data, ctx) if self.world.is_main else None
        if self.world.distributed:
            shard = certifier.certify_examples(model, data, dataclasses.replace(ctx, out_dir=None),
                                               indices=distributed.shard_indices(len(data)))
            rows = [row for part in distributed.gather_objects(shard) for row in part]
        else:
            rows = certifier.certify_examples(model, data, ctx)
        if not self.world.is_main:
            return None
        rows = sorted(({**row, "index": int(indices[row["index"]])} for row in rows), key=lambda r: r["index"])
        return certifier.summarize(rows, ctx)

    def dataset(self, spec: ComponentSpec) -> DataSplits:
        key = json.dumps([spec.name, to_table(spec.config)], sort_keys=True, default=str)
        if key not in self.datasets:
            self.datasets[key] = load_dataset(spec)
        return self.datasets[key]

    def source_model(self, spec: RunSpec, ctx: RunContext):
        """Build the source model; train it (once per distinct [source] table) or load its weights."""
        source = spec.source
        key = json.dumps(spec.raw.get("source"), sort_keys=True, default=str)
        data = self.dataset(source.data) if source.data else None
        num_classes = source.num_classes or (data.num_classes if data else None)
        # Read the weights file once: for its class count and to load it (not again for a cached source).
        weights = read_state_dict(source.weights) if source.weights is not None and key not in self.sources else None
        if num_classes is None and source.weights is not None:
            head = (weights if weights is not None else self.sources[key][0]).get("head.weight")
            num_classes = head.shape[0] if head is not None else None
        if num_classes is None:
            raise RtkError(f"{self.recipe.path}: [source] num_classes: cannot infer the source's class count; set num_classes")
        seed_everything(spec.run.seed)
        model = self.fast_model(source.model.build(num_classes=num_classes).to(ctx.device), spec)
        if key in self.sources:
            state, info = self.sources[key]
            model.load_state_dict(state)
            return model, info
        info = {}
        if source.weights is not None:
            load_weights(model, source.weights, state=weights)
            info["weights"] = str(source.weights)
        trained = self.out_dir / "checkpoints" / f"source-{self.source_index[key]}"
        if data is not None and self.resume and trained.with_suffix(".json").is_file():
            # Finished before the interruption: its weights and info were saved, so never train it again.
            load_weights(model, trained.with_suffix(".safetensors"))
            info = json.loads(trained.with_suffix(".json").read_text(encoding="utf-8"))
        elif data is not None:
            objective = source.objective.build()
            stage = f"source-{self.source_index[key]}"
            history = fit(model, data.train, objective, source.train, ctx, description=f"source ({source.objective.name})",
                          checkpoint=ctx.checkpoint_dir / f"{stage}.pt")
            info.update(clean=accuracy(model, data.test, ctx), final_loss=history[-1] if history else None)
            checkpoint = self.out_dir / "checkpoints" / f"source-{self.source_index[key]}.safetensors"
            info["checkpoint"] = str(checkpoint.relative_to(self.out_dir))
            if self.world.is_main:
                save_weights(model, checkpoint)
                remove_train_states(ctx.checkpoint_dir, stage)
                atomic_write_text(trained.with_suffix(".json"), json.dumps(info) + "\n")  # after the weights: marks them complete
        self.sources[key] = ({k: v.detach().clone() for k, v in model.state_dict().items()}, info)
        return model, info

    def state_paths(self, index: int) -> tuple[Path, Path, Path]:
        """(target checkpoint, pending-run info, evaluation state) of run ``index``."""
        state = self.out_dir / "eval-state"
        return (self.out_dir / "checkpoints" / f"run-{index}.safetensors", state / f"run-{index}.json",
                state / f"run-{index}.safetensors")

    def target_model(self, index: int, spec: RunSpec, ctx: RunContext, target) -> tuple[object, dict, float]:
        """The model to evaluate, its source info, and the seconds spent on it: trained and
        transferred now, or, when resuming, rebuilt from the checkpoint saved before evaluation."""
        checkpoint, pending, _ = self.state_paths(index)
        if self.resume and pending.is_file() and checkpoint.is_file():
            try:
                info = json.loads(pending.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise RtkError(f"cannot resume: {pending} is unreadable ({type(exc).__name__}); delete it to train this run again") from None
            state = read_state_dict(checkpoint)
            if spec.transfer is not None and "source_classes" in info:
                # The strategy rebuilds what it changed (MLP head, wrapped blocks) before loading.
                model = spec.source.model.build(num_classes=info["source_classes"])
                model = spec.transfer.build().rebuild(model, info["num_classes"])
            else:
                head = state.get("head.weight")
                model = spec.source.model.build(num_classes=head.shape[0] if head is not None else info["num_classes"])
            load_weights(model, checkpoint, state=state)
            return self.fast_model(model.to(ctx.device), spec), info.get("source", {}), info.get("seconds", 0.0)
        started = time.perf_counter()
        model, source_info = self.source_model(spec, ctx)
        source_classes = model.num_classes
        if spec.transfer is not None:
            seed_everything(spec.run.seed + 1)
            strategy = spec.transfer.build()
            objective = spec.transfer_objective.build() if spec.transfer_objective else None
            ctx.train_stage = "transfer"  # so that the strategy's fit calls keep resumable checkpoints
            try:
                model = strategy.transfer(model, target, ctx, objective)
            finally:
                ctx.train_stage = None
        seconds = time.perf_counter() - started
        if self.world.is_main:
            # Saved before evaluation, so an interrupted evaluation resumes without training again.
            save_weights(model, checkpoint)
            atomic_write_text(pending, json.dumps({"source": source_info, "seconds": seconds,
                                                   "num_classes": getattr(model, "num_classes", None),
                                                   "source_classes": source_classes}) + "\n")
            remove_train_states(ctx.checkpoint_dir, f"transfer-{index}")
        return self.fast_model(model, spec), source_info, seconds

    def run_point(self, index: int, spec: RunSpec) -> dict:
        ctx = self.context(spec, index)
        target = self.dataset(spec.target) if spec.target else None
        model, source_info, seconds = self.target_model(index, spec, ctx, target)
        started = time.perf_counter()
        metrics, extra = {}, {}
        if target is not None:
            if model.num_classes < target.num_classes:
                raise RtkError(f"the model has {model.num_classes} outputs but [target] has {target.num_classes} classes; add a [transfer] strategy")
            config = spec.eval
            indices = select_indices(len(target.test), config.n, config.subset, config.subset_seed)
            attacks = [(a.label, a.build()) for a in spec.attacks]
            sanity = [SanityAttack.of(a) for a in spec.attacks] if config.sanity and config.sanity_n > 0 else None
            state = EvalState(self.state_paths(index)[2], self.resume,
                              {"attack_configs": [[a.name, to_table(a.config)] for a in spec.attacks]})
            result = evaluate(model, target.test, attacks, ctx, config.batch_size, indices, order=config.attack_order,
                              per_class=config.per_class, num_classes=target.num_classes, sanity_attacks=sanity,
                              sanity_n=config.sanity_n, state=state)
            metrics = result["metrics"]
            extra.update(n_eval=result["n"], attack_order=config.attack_order)
            if config.per_class:
                extra["per_class"] = result["per_class"]
                extra["class_names"] = target.class_names or [str(c) for c in range(target.num_classes)]
            extra["flags"] = result["flags"]
            if spec.certify is not None:
                certifier = spec.certify.build()
                with ctx.autocast("eval"):
                    extra["certify"] = self.certify(certifier, model, target.test, indices, ctx)
                # A certifier's warnings (a sample too small to reach a radius) are flags of the run.
                extra["flags"] = list(extra["flags"]) + [{"name": "certify-sample-size", "message": str(w), "source": "rtk"}
                                                         for w in (extra["certify"] or {}).get("warnings", [])]
        run = {"id": spec.id, "params": spec.params, "metrics": metrics,
               "paper": paper_for(self.recipe, spec.params), **extra,
               "checkpoint": str(self.state_paths(index)[0].relative_to(self.out_dir)),
               "seconds": round(seconds + time.perf_counter() - started, 2)}
        if source_info:
            run["source"] = source_info
        return run

    def payload(self, complete: bool) -> dict:
        return {"recipe": self.recipe.raw.get("run", {}).get("name", self.recipe.path.stem),
                "recipe_path": str(self.recipe.path), "profile": self.recipe.profile,
                "overrides": self.recipe.overrides, "rtk_version": rtk.__version__,
                "complete": complete, "runs": self.runs}

    def write_header(self, ctx: RunContext) -> None:
        import tomli_w

        self.out_dir.mkdir(parents=True, exist_ok=True)
        resolved = dict(self.recipe.raw)
        atomic_write_text(self.out_dir / "recipe.resolved.toml",
                          f"# {self.recipe.path} resolved (profile: {self.recipe.profile}, --set: {self.recipe.overrides})\n"
                          + tomli_w.dumps(resolved))
        atomic_write_text(self.out_dir / "env.json", json.dumps(environment(ctx.device, ctx.seed, self.deterministic), indent=2) + "\n")

    def prepare(self) -> None:
        """Load every dataset before anything is written, so missing data fails with an empty --out."""
        for spec in self.specs:
            for data in (spec.source.data, spec.target):
                if data is not None:
                    self.dataset(data)

    def run(self) -> dict:
        result = self._run_deterministic() if self.deterministic else self._run()
        # Not in a finally: after an error on one rank the others sit in a collective, and torchrun
        # ends them; a barrier here would only hang. Models and tensors go first, or gloo can abort
        # the process at exit.
        if self.world.distributed:
            self.sources.clear()
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

    def _run(self) -> dict:
        self.prepare()
        lock = OutputLock(self.out_dir) if self.world.is_main else contextlib.nullcontext()
        with lock:  # taken after prepare(), so a run whose data fails leaves no folder
            if not (self.resume or self.overwrite) and (self.out_dir / "results.json").exists():  # a run that finished meanwhile
                raise RtkError(f"{self.out_dir} already holds results.json; choose another --out, pass --overwrite,"
                               " or --resume to continue an interrupted run")
            distributed.barrier()  # no rank checks results.json after rank 0 wrote it
            return self._run_points()

    def _run_points(self) -> dict:
        self.runs = list(self.finished)
        for index, spec in enumerate(self.specs):
            if index < len(self.finished):
                continue
            ctx = self.context(spec)
            header = index == len(self.finished) and not (self.resume and (self.out_dir / "recipe.resolved.toml").is_file())
            if header and self.world.is_main:
                self.write_header(ctx)  # a resumed run keeps the env.json of its start
            if len(self.specs) > 1:
                ctx.console.print(f"[bold]run {index + 1}/{len(self.specs)}[/bold]: {spec.id}")
            self.runs.append(self.run_point(index, spec))
            if not self.world.is_main:
                continue
            write_results(self.out_dir, self.payload(complete=index == len(self.specs) - 1))
            _, pending, state = self.state_paths(index)
            pending.unlink(missing_ok=True)
            EvalState(state).remove()
        if self.world.is_main:
            for state in (self.out_dir / "eval-state", self.out_dir / "train-state", self.out_dir / "feature-cache"):
                if state.is_dir() and not any(state.iterdir()):
                    state.rmdir()
            from rtk.services.plots import plot_run

            plot_run(self.out_dir, console=self.console)  # plot.png of a sweep; a failure only warns
        return self.payload(complete=True)

    def table(self):
        return results_table(self.runs, title=f"{self.recipe.raw.get('run', {}).get('name', self.recipe.path.stem)}")

    def report(self, console) -> None:
        """The results table, then every flag of every run on its own line, then where results are
        (rank 0 only under torchrun)."""
        if not self.world.is_main:
            return
        console.print(self.table())
        for run in self.runs:
            for flag in run.get("flags", []):
                where = f"{run['id']}: " if len(self.runs) > 1 else ""
                attack = f" ({flag['attack']})" if flag.get("attack") else ""
                console.print(f"[yellow]flag[/yellow] {escape(where)}[bold]{escape(str(flag.get('name', '?')))}[/bold]"
                              f"{escape(attack)}: {escape(str(flag.get('message', '')))}", highlight=False, soft_wrap=True)
        console.print(f"results: {self.out_dir / 'results.json'}")
