"""The source stage: build the source model, then train it (once per distinct [source] table of a
sweep) or load its weights file.

A trained source's weights go to the run folder's checkpoints and its info after them (the
layout is rtk.services.state's): a resumed run that finds the info loads the weights and never
trains that source again. An interrupted training continues from its train-state checkpoint,
which is deleted once the weights are saved.
"""
from __future__ import annotations

import json
import random

import torch

from rtk.config.schema import EvalConfig
from rtk.config.spec import RunSpec
from rtk.data import DataSplits
from rtk.errors import RtkError
from rtk.evaluation.robust_accuracy import evaluate
from rtk.models import load_weights, read_state_dict, save_weights
from rtk.services.state import RunFolder
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


def source_key(spec: RunSpec) -> str:
    """The [source] table of a sweep point: points with the same one share their source."""
    return json.dumps(spec.raw.get("source"), sort_keys=True, default=str)


def accuracy(model, data, ctx: RunContext, batch_size: int = 512) -> float:
    return evaluate(model, data, [], ctx, EvalConfig(batch_size=batch_size))["metrics"]["clean"]


class SourceStage:
    def __init__(self, specs: list[RunSpec], datasets: Datasets, folder: RunFolder, recipe_path):
        self.datasets, self.folder, self.recipe_path = datasets, folder, recipe_path
        self.trained: dict[str, tuple[dict, dict]] = {}  # source table -> (state dict, info)
        keys = dict.fromkeys(source_key(spec) for spec in specs)
        self.index = {key: k for k, key in enumerate(keys)}  # stable checkpoint names

    def model(self, spec: RunSpec, ctx: RunContext):
        """The source model of ``spec`` and its info (the run's "source" entry): a copy of an earlier
        sweep point's with the same [source], or built, then loaded from its weights file and/or trained."""
        source, key = spec.source, source_key(spec)
        data = self.datasets.get(source.data) if source.data else None
        # Read the weights file once: for its class count and to load it (not again for a trained source).
        weights = read_state_dict(source.weights) if source.weights is not None and key not in self.trained else None
        known = weights if weights is not None else self.trained.get(key, ({}, {}))[0]
        num_classes = self.num_classes(spec, data, known)
        seed_everything(spec.run.seed)
        model = ctx.fast_model(source.model.build(num_classes=num_classes).to(ctx.device))
        if key in self.trained:
            state, info = self.trained[key]
            model.load_state_dict(state)
            return model, info
        info = {}
        if source.weights is not None:
            load_weights(model, source.weights, state=weights)
            info["weights"] = str(source.weights)
        if data is not None:
            info = self.train(model, spec, data, ctx, self.index[key], info)
        self.trained[key] = ({k: v.detach().clone() for k, v in model.state_dict().items()}, info)
        return model, info

    def num_classes(self, spec: RunSpec, data: DataSplits | None, weights: dict) -> int:
        """[source] num_classes, else the source dataset's class count, else the rows of the weights' head."""
        found = spec.source.num_classes or (data.num_classes if data else None)
        if found is None and spec.source.weights is not None:
            head = weights.get("head.weight")
            found = head.shape[0] if head is not None else None
        if found is None:
            raise RtkError(f"{self.recipe_path}: [source] num_classes: cannot infer the source's class count;"
                           " set num_classes")
        return found

    def train(self, model, spec: RunSpec, data: DataSplits, ctx: RunContext, k: int, info: dict) -> dict:
        """Train source ``k`` on ``data`` and save it; its info. A resumed run that finished it loads it."""
        marker = self.folder.source_info(k)
        finished = marker.load()
        if finished is not None:  # its weights and info were saved before the interruption
            load_weights(model, self.folder.source_weights(k))
            return finished
        source = spec.source
        history = fit(model, data.train, source.objective.build(), source.train, ctx,
                      description=f"source ({source.objective.name})", checkpoint=self.folder.train_state("source", k))
        info.update(clean=accuracy(model, data.test, ctx), final_loss=history[-1] if history else None)
        weights = self.folder.source_weights(k)
        info["checkpoint"] = str(weights.relative_to(self.folder.root))
        if ctx.world.is_main:
            save_weights(model, weights)
            self.folder.remove_training("source", k)
            marker.save(info)  # after the weights: marks them complete
        return info
