"""The transfer stage: the source model adapted to the target by the [transfer] strategy, with the
[transfer.objective] when the recipe names one.

The target model is saved before its evaluation starts, with a pending marker holding its
source info, training seconds and class counts (rtk.services.state): a resumed run rebuilds it
from those two files instead of training again. The strategy's own ``fit`` calls keep
resumable train-state checkpoints, deleted once the target model is saved.
"""
from __future__ import annotations

import time

from rtk.config.spec import RunSpec
from rtk.models import load_weights, read_state_dict, save_weights
from rtk.services.state import RunFolder
from rtk.stages.context import RunContext
from rtk.stages.source import SourceStage, architecture, seed_everything


class TransferStage:
    def __init__(self, source: SourceStage, folder: RunFolder):
        self.source, self.folder = source, folder

    def target_model(self, index: int, spec: RunSpec, ctx: RunContext, target) -> tuple[object, dict, float]:
        """The model to evaluate, its source info, and the seconds spent on it: trained and
        transferred now, or, when resuming, rebuilt from the checkpoint saved before evaluation."""
        resumed = self.resumed(index, spec, ctx)
        if resumed is not None:
            return resumed
        started = time.perf_counter()
        model, source_info = self.source.model(spec, ctx)
        source_classes = model.num_classes
        if spec.transfer is not None:
            model = self.transfer(model, spec, target, ctx)
        seconds = time.perf_counter() - started
        if ctx.world.is_main:
            # Saved before evaluation, so an interrupted evaluation resumes without training again.
            save_weights(model, self.folder.target_weights(index))
            self.folder.pending(index).save({"source": source_info, "seconds": seconds,
                                             "num_classes": getattr(model, "num_classes", None),
                                             "source_classes": source_classes})
            self.folder.remove_training("transfer", index)
        return ctx.fast_model(model), source_info, seconds

    @staticmethod
    def transfer(model, spec: RunSpec, target, ctx: RunContext):
        seed_everything(spec.run.seed + 1)
        strategy = spec.transfer.build()
        objective = spec.transfer_objective.build() if spec.transfer_objective else None
        ctx.train_stage = "transfer"  # so that the strategy's fit calls keep resumable checkpoints
        ctx.curve_stage = f"transfer {spec.id}"
        try:
            return strategy.transfer(model, target, ctx, objective)
        finally:
            ctx.train_stage = ctx.curve_stage = None

    def resumed(self, index: int, spec: RunSpec, ctx: RunContext) -> tuple[object, dict, float] | None:
        """What target_model returns, rebuilt from run ``index``'s saved target model; None when
        not resuming or it was not saved."""
        weights = self.folder.target_weights(index)
        info = self.folder.pending(index).load() if weights.is_file() else None
        if info is None:
            return None
        state = read_state_dict(weights)
        if spec.transfer is not None and "source_classes" in info:
            # The strategy rebuilds what it changed (MLP head, wrapped blocks) before loading.
            model = architecture(spec.source, info["source_classes"])
            model = spec.transfer.build().rebuild(model, info["num_classes"])
        else:
            head = state.get("head.weight")
            model = architecture(spec.source, head.shape[0] if head is not None else info["num_classes"])
        load_weights(model, weights, state=state)
        return ctx.fast_model(model.to(ctx.device)), info.get("source", {}), info.get("seconds", 0.0)
