"""The source stage: build the source model, then take it from the source store, train it into the
store, or load its weights file (once per distinct source of a sweep).

A trained source lives in the store (rtk.services.store) under its key (rtk.config.source_key):
a run whose source is there loads it and trains nothing, and says so in its results. A missing one
is trained under the store's lock for its key, so that a second run that needs it at the same
time waits and then reuses it. Training keeps its resumable train-state checkpoint in the run
folder (``--resume`` continues it), deleted once the weights are in the store.
"""
from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from datetime import datetime
from pathlib import Path

import torch

from rtk.config.schema import EvalConfig
from rtk.config.source_key import canonical, data_label, identity, source_key
from rtk.config.spec import RunSpec
from rtk.data import DataSplits
from rtk.errors import RtkError
from rtk.config.source_key import file_sha256
from rtk.evaluation.robust_accuracy import evaluate
from rtk.importing import fetch, local_file
from rtk.models import load_weights, read_state_dict, save_weights
from rtk.services import distributed
from rtk.services.state import RunFolder
from rtk.services.store import Entry, SourceStore
from rtk.stages.context import RunContext
from rtk.stages.datasets import Datasets
from rtk.stages.training import fit


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy

        numpy.random.seed(seed)
    except ImportError:
        pass


def group_of(spec: RunSpec) -> str:
    """Sweep points with the same source share it (cheap: weights files by path, not content)."""
    return canonical(identity(spec.source, hash_files=False))


def architecture(source, num_classes: int):
    """The source's network, untrained: [source] model's, or the one its importer builds."""
    if source.imported is not None:
        build = source.model.build if source.model is not None else None
        return source.imported.importer.build().build(build, num_classes)
    return source.model.build(num_classes=num_classes)


def accuracy(model, data, ctx: RunContext, batch_size: int = 512) -> float:
    return evaluate(model, data, [], ctx, EvalConfig(batch_size=batch_size))["metrics"]["clean"]


def plugin_versions() -> dict[str, str]:
    """The distributions that provide rtk plugins, with their versions."""
    from importlib.metadata import entry_points

    return {ep.dist.name: ep.dist.version for ep in entry_points(group="rtk") if ep.dist is not None}


def stored_info(entry: Entry, run_dir) -> dict:
    """A source's entry in results.json: where it is, what it measured, and whether it was reused
    (made by another run; a resumed run that trained it before its interruption did not reuse it)."""
    info = entry.info
    reused = info.get("run_dir") != str(Path(run_dir).resolve())
    found = {"key": entry.key, "reused": reused, "store": str(entry.path), "clean": info.get("clean"),
             "final_loss": info.get("final_loss"), "train_seconds": info.get("train_seconds")}
    if reused:
        found["made_by"] = {k: info.get(k) for k in ("recipe", "point", "run_dir", "created")}
    if info.get("defined_by"):
        found["defined_by"] = info["defined_by"]
    if info.get("imported"):
        found["imported"] = {k: v for k, v in info["imported"].items() if k != "options"}
    return found


class SourceStage:
    def __init__(self, specs: list[RunSpec], datasets: Datasets, folder: RunFolder, recipe_path,
                 store: SourceStore | None = None, environment=dict):
        self.datasets, self.folder, self.recipe_path = datasets, folder, recipe_path
        self.store = store or SourceStore()
        self.environment = environment  # the run's env.json contents, recorded with what it trains
        self.trained: dict[str, tuple[dict, dict]] = {}  # group -> (state dict, info)
        groups = dict.fromkeys(group_of(spec) for spec in specs)
        self.index = {group: k for k, group in enumerate(groups)}  # stable train-state names

    def model(self, spec: RunSpec, ctx: RunContext):
        """The source model of ``spec`` and its info (the run's "source" entry): a copy of an earlier
        sweep point's with the same source, or built, then loaded from the store or its weights file,
        or trained into the store."""
        source, group = spec.source, group_of(spec)
        if group in self.trained:
            state, info = self.trained[group]
            model = self.build(spec, ctx, state)
            model.load_state_dict(state)
            return model, info
        if source.imported is not None:
            model, info = self.imported(spec, ctx)
        elif source.trained:
            model, info = self.stored(spec, ctx, self.index[group])
        else:
            weights = read_state_dict(source.weights) if source.weights is not None else None
            model = self.build(spec, ctx, weights or {})
            info = {}
            if weights is not None:
                load_weights(model, source.weights, state=weights)
                info["weights"] = str(source.weights)
        self.trained[group] = ({k: v.detach().clone() for k, v in model.state_dict().items()}, info)
        return model, info

    def build(self, spec: RunSpec, ctx: RunContext, known: dict, data: DataSplits | None = None):
        seed_everything(spec.source.seed)
        num_classes = self.num_classes(spec, data, known)
        return ctx.fast_model(architecture(spec.source, num_classes).to(ctx.device))

    def num_classes(self, spec: RunSpec, data: DataSplits | None, weights: dict) -> int:
        """[source] num_classes, else the source dataset's class count, else the rows of the weights' head."""
        found = spec.source.num_classes or (data.num_classes if data else None)
        head = weights.get("head.weight")
        if found is None and head is not None:
            found = head.shape[0]
        if found is None:
            raise RtkError(f"{self.recipe_path}: [source] num_classes: cannot infer the source's class count;"
                           " set num_classes")
        return found

    def imported(self, spec: RunSpec, ctx: RunContext):
        """An imported source: from the store when it holds this file's conversion, else fetched
        (downloaded once into the store), converted by its importer and stored."""
        imp, world = spec.source.imported, distributed.world()
        if imp.location == "self":  # the importer downloads its file: the key is its format and options
            key = source_key(spec.source)
            entry = self.store.get(key)
            if entry is None and world.is_main:
                with self.store.lock(key):
                    entry = self.store.get(key) or self.convert(spec, ctx, None, key)
            distributed.barrier()
            entry = entry or self.store.get(key)
            return self.load(spec, ctx, entry), stored_info(entry, self.folder.root)
        if imp.content is None:
            local = local_file(imp, self.store.root)
            imp.content = file_sha256(local) if local is not None else None
        entry = self.store.get(source_key(spec.source)) if imp.content or imp.sha256 else None
        if entry is None:
            if world.is_main:
                path = fetch(imp, self.store.root, progress=ctx.show_progress)
                imp.content = file_sha256(path)
                key = source_key(spec.source)
                with self.store.lock(key):
                    entry = self.store.get(key) or self.convert(spec, ctx, path, key)
            distributed.barrier()
            if not world.is_main:
                imp.content = file_sha256(local_file(imp, self.store.root))
                entry = self.store.get(source_key(spec.source))
        return self.load(spec, ctx, entry), stored_info(entry, self.folder.root)

    def convert(self, spec: RunSpec, ctx: RunContext, path: Path | None, key: str) -> Entry:
        source, imp = spec.source, spec.source.imported
        importer = imp.importer.build()
        importer.downloads = self.store.root / "downloads"  # where an importer that fetches itself puts files
        contents = importer.read(path)
        num_classes = source.num_classes or importer.num_classes(contents)
        if num_classes is None:
            raise RtkError(f"{self.recipe_path}: [source] num_classes: the {imp.format} checkpoint does not say how"
                           " many classes its head has; set num_classes")
        seed_everything(source.seed)
        model = importer.build(source.model.build if source.model is not None else None, num_classes)
        importer.convert(contents, model)
        del contents
        info = {"imported": {"format": imp.format, imp.location: imp.where, "sha256": imp.content,
                             "options": imp.options}, "num_classes": num_classes,
                "model": source.model.name if source.model is not None else imp.format,
                "data": "-", "objective": f"import ({imp.format})", "recipe": str(self.recipe_path),
                "point": spec.id, "run_dir": str(Path(self.folder.root).resolve()),
                "created": datetime.now().isoformat(timespec="seconds"), "env": self.environment(),
                "plugins": plugin_versions(), "identity": identity(source)}
        entry = self.store.publish(key, lambda out: save_weights(model, out), info)
        ctx.console.print(f"source {key}: imported the {imp.describe()}; stored in {entry.path}", highlight=False,
                          soft_wrap=True)
        return entry

    def stored(self, spec: RunSpec, ctx: RunContext, k: int):
        """The trained source from the store, trained and added first when missing."""
        key = source_key(spec.source)
        entry = self.store.get(key)
        if entry is not None:
            return self.load(spec, ctx, entry), stored_info(entry, self.folder.root)
        return self.train_once(spec, ctx, k, key)

    def load(self, spec: RunSpec, ctx: RunContext, entry: Entry):
        state = read_state_dict(entry.weights)
        model = self.build(spec, ctx, state)
        load_weights(model, entry.weights, state=state)
        return model

    def train_once(self, spec: RunSpec, ctx: RunContext, k: int, key: str):
        """Train source ``key`` into the store, unless another process does it first: then wait
        for it and reuse it. Every rank of a distributed run trains; rank 0 holds the lock."""
        world = distributed.world()

        def waiting(holder: str) -> None:
            ctx.console.print(f"source {key}: {holder} is training it; waiting to reuse it", highlight=False,
                              soft_wrap=True)

        with self.store.lock(key, waiting) if world.is_main else contextlib.nullcontext():
            found = self.store.get(key) if world.is_main else None  # stored while this run waited
            flag = distributed.broadcast_tensor(torch.tensor([float(found is None)]) if world.is_main else None, 0)
            if float(flag[0]) == 0.0:
                distributed.barrier()
                entry = found or self.store.get(key)
                return self.load(spec, ctx, entry), stored_info(entry, self.folder.root)
            model, entry = self.train(spec, ctx, k, key)
            distributed.barrier()  # rank 0 has published it before any rank goes on
            info = stored_info(entry, self.folder.root) if entry is not None else {"key": key, "reused": False}
            return model, info

    def train(self, spec: RunSpec, ctx: RunContext, k: int, key: str) -> tuple[object, Entry | None]:
        """Train the source and publish it (rank 0); the model, and its entry on rank 0."""
        source = spec.source
        data = self.datasets.get(source.data)
        model = self.build(spec, ctx, {}, data)
        started = time.perf_counter()
        # The seed and autocast of the recipe that defines the source (a selected source keeps its own).
        train_ctx = dataclasses.replace(ctx, run=dataclasses.replace(ctx.run, seed=source.seed, amp=source.amp),
                                        curve_stage=f"source {key}")
        label = data_label(identity(source, hash_files=False)["data"])
        history = fit(model, data.train, source.objective.build(), source.train, train_ctx,
                      description=f"source {key} ({source.objective.name} on {label})",
                      checkpoint=self.folder.train_state("source", k))
        seconds = time.perf_counter() - started
        info = {"clean": accuracy(model, data.test, ctx), "final_loss": history[-1] if history else None,
                "train_seconds": round(seconds, 3), "train_size": len(data.train), "test_size": len(data.test),
                "num_classes": getattr(model, "num_classes", None), "model": source.model.name, "data": label,
                "objective": source.objective.name, "epochs": source.train.epochs, "identity": identity(source),
                "recipe": str(self.recipe_path), "point": spec.id, "defined_by": source.origin,
                "run_dir": str(Path(self.folder.root).resolve()),
                "created": datetime.now().isoformat(timespec="seconds"), "env": self.environment(),
                "plugins": plugin_versions()}
        if not distributed.world().is_main:
            return model, None
        entry = self.store.publish(key, lambda path: save_weights(model, path), info)
        self.folder.remove_training("source", k)
        ctx.console.print(f"source {key}: trained in {seconds:.1f} s (clean {info['clean']:.3f}); stored in"
                          f" {entry.path}", highlight=False, soft_wrap=True)
        return model, entry
