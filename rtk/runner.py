"""Run a recipe: source -> transfer -> evaluate -> certify, for each sweep point.

Everything is validated before the first stage starts; the output folder is created only when
the first run has finished, and every file in it is written atomically.
"""
from __future__ import annotations

import json
import platform
import random
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

import rtk
from rtk.configs import to_table
from rtk.context import RunContext, resolve_device
from rtk.data import DataSplits, apply_options
from rtk.errors import RtkError
from rtk.evaluation import evaluate, select_indices
from rtk.models import load_weights, read_state_dict, save_weights
from rtk.recipe import Recipe, paper_for
from rtk.registry import Registry
from rtk.results import atomic_write_text, results_table, write_results
from rtk.spec import ComponentSpec, RunSpec, resolve
from rtk.training import fit


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy

        numpy.random.seed(seed)
    except ImportError:
        pass


def environment(device: torch.device, seed: int) -> dict:
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
        "torch_threads": torch.get_num_threads(), "seed": seed, "argv": sys.argv,
        "started": datetime.now().isoformat(timespec="seconds"),
    }


def load_dataset(spec: ComponentSpec) -> DataSplits:
    data = spec.build()
    if not isinstance(data, DataSplits):
        raise RtkError(f"{spec.component.describe()} returned {type(data).__name__}, not rtk.data.DataSplits")
    return apply_options(data, spec.config)


def accuracy(model, data, ctx: RunContext, batch_size: int = 512) -> float:
    return evaluate(model, data, [], ctx, batch_size)["metrics"]["clean"]


class Runner:
    def __init__(self, recipe: Recipe, registry: Registry, out_dir: Path | None = None, *,
                 show_progress: bool = True, console=None, overwrite: bool = False):
        self.recipe = recipe
        self.registry = registry
        self.specs: list[RunSpec] = resolve(recipe, registry)  # validates every sweep point up front
        name = self.specs[0].run.name
        self.out_dir = Path(out_dir) if out_dir else Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
        if (self.out_dir / "results.json").exists() and not overwrite:
            raise RtkError(f"{self.out_dir} already holds results.json; choose another --out or pass --overwrite")
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise RtkError(f"--out {self.out_dir} is a file, not a folder")
        self.show_progress = show_progress
        self.console = console
        self.datasets: dict[str, DataSplits] = {}
        self.sources: dict[str, tuple[dict, dict]] = {}  # source table -> (state dict, info)
        self.runs: list[dict] = []

    def context(self, spec: RunSpec) -> RunContext:
        ctx = RunContext(device=resolve_device(spec.run.device), seed=spec.run.seed, show_progress=self.show_progress,
                         out_dir=self.out_dir)
        if self.console is not None:
            ctx.console = self.console
        return ctx

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
        if num_classes is None and source.weights is not None:
            head = read_state_dict(source.weights).get("head.weight")
            num_classes = head.shape[0] if head is not None else None
        if num_classes is None:
            raise RtkError(f"{self.recipe.path}: [source] num_classes: cannot infer the source's class count; set num_classes")
        seed_everything(spec.run.seed)
        model = source.model.build(num_classes=num_classes).to(ctx.device)
        if key in self.sources:
            state, info = self.sources[key]
            model.load_state_dict(state)
            return model, info
        info = {}
        if source.weights is not None:
            load_weights(model, source.weights)
            info["weights"] = str(source.weights)
        if data is not None:
            objective = source.objective.build()
            history = fit(model, data.train, objective, source.train, ctx, description=f"source ({source.objective.name})")
            info.update(clean=accuracy(model, data.test, ctx), final_loss=history[-1] if history else None)
            checkpoint = self.out_dir / "checkpoints" / f"source-{len(self.sources)}.safetensors"
            save_weights(model, checkpoint)
            info["checkpoint"] = str(checkpoint.relative_to(self.out_dir))
        self.sources[key] = ({k: v.detach().clone() for k, v in model.state_dict().items()}, info)
        return model, info

    def run_point(self, index: int, spec: RunSpec) -> dict:
        ctx = self.context(spec)
        started = time.perf_counter()
        model, source_info = self.source_model(spec, ctx)
        target = self.dataset(spec.target) if spec.target else None
        if spec.transfer is not None:
            seed_everything(spec.run.seed + 1)
            strategy = spec.transfer.build()
            objective = spec.transfer_objective.build() if spec.transfer_objective else None
            model = strategy.transfer(model, target, ctx, objective)
        metrics, extra = {}, {}
        if target is not None:
            if model.num_classes < target.num_classes:
                raise RtkError(f"the model has {model.num_classes} outputs but [target] has {target.num_classes} classes; add a [transfer] strategy")
            indices = select_indices(len(target.test), spec.eval.n, spec.eval.subset, spec.eval.subset_seed)
            attacks = [(a.label, a.build()) for a in spec.attacks]
            result = evaluate(model, target.test, attacks, ctx, spec.eval.batch_size, indices)
            metrics = result["metrics"]
            extra["n_eval"] = result["n"]
            if spec.certify is not None:
                certifier = spec.certify.build()
                extra["certify"] = certifier.certify(model, target.test.subset(indices), ctx)
        checkpoint = self.out_dir / "checkpoints" / f"run-{index}.safetensors"
        save_weights(model, checkpoint)
        run = {"id": spec.id, "params": spec.params, "metrics": metrics,
               "paper": paper_for(self.recipe, spec.params), **extra,
               "checkpoint": str(checkpoint.relative_to(self.out_dir)),
               "seconds": round(time.perf_counter() - started, 2)}
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
        atomic_write_text(self.out_dir / "env.json", json.dumps(environment(ctx.device, ctx.seed), indent=2) + "\n")

    def prepare(self) -> None:
        """Load every dataset before anything is written, so missing data fails with an empty --out."""
        for spec in self.specs:
            for data in (spec.source.data, spec.target):
                if data is not None:
                    self.dataset(data)

    def run(self) -> dict:
        self.prepare()
        for index, spec in enumerate(self.specs):
            ctx = self.context(spec)
            if index == 0:
                self.write_header(ctx)
            if len(self.specs) > 1:
                ctx.console.print(f"[bold]run {index + 1}/{len(self.specs)}[/bold]: {spec.id}")
            self.runs.append(self.run_point(index, spec))
            write_results(self.out_dir, self.payload(complete=index == len(self.specs) - 1))
        return self.payload(complete=True)

    def table(self):
        return results_table(self.runs, title=f"{self.recipe.raw.get('run', {}).get('name', self.recipe.path.stem)}")
