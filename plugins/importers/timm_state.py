"""Bare timm state dicts: the ARES robust Swin-B / ViT-B (github.com/thu-ml/ares, robust_training;
ares/model/imagenet_cls.py loads them strictly into ``timm.create_model(name)`` and puts the ImageNet
mean/std in front), loaded into a ``[source] model = "timm/NAME"`` rtk model.

The file's keys go through the checkpoint filter of the model's own timm module
(``timm.models.swin_transformer.checkpoint_filter_fn``, ``vision_transformer``'s, ...): for Swin it
turns the old key layout (patch merging at the end of a stage, ``layers.{i}.downsample``, the
classifier at ``head.*``, the ``relative_position_index`` / ``attn_mask`` buffers) into the new one
(timm >= 0.9: ``layers.{i+1}.downsample``, ``head.fc.*``), and leaves a new-layout file as it is, so
both layouts load. The classifier (the pretrained_cfg's ``classifier``: ``head.fc`` for Swin, ``head``
for ViT) becomes the rtk head, everything else ``body.model.*``; the normalisation of the config
becomes the model's ``preprocess`` Normalize.
"""
from __future__ import annotations

import sys
from typing import Any

import torch

from rtk.errors import RtkError, WeightsError
from rtk.importing import Importer
from rtk_plugins.importers.module_factory import load_into, rtk_layout


def _bare_state(contents: Any, what: str) -> dict:
    """The state dict in the file: the file itself, or its ``state_dict`` / ``model`` entry (a
    training checkpoint), with a DataParallel ``module.`` prefix removed."""
    state = contents
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{what} is not a timm state dict (a mapping of parameter names to tensors)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


class Ares(Importer):
    """Format ``ares``: a bare timm state dict, ImageNet normalisation (the config's) outside."""

    what = "ARES checkpoint"

    def num_classes(self, contents: Any) -> int | None:
        state = _bare_state(contents, self.what)
        for key in ("head.fc.weight", "head.weight"):
            weight = state.get(key)
            if weight is not None and weight.ndim == 2:
                return int(weight.shape[0])
        return None

    def convert(self, contents: Any, model) -> None:
        from rtk.models import Normalize

        timm_model = getattr(getattr(model, "body", None), "model", None)
        if timm_model is None or not hasattr(timm_model, "pretrained_cfg"):
            raise RtkError('format "ares" loads a timm state dict into a timm model; set [source] model ='
                           ' "timm/NAME" (e.g. "timm/swin_base_patch4_window7_224")')
        state = _bare_state(contents, self.what)
        filter_fn = getattr(sys.modules.get(type(timm_model).__module__), "checkpoint_filter_fn", None)
        if filter_fn is not None:
            try:
                state = filter_fn(state, timm_model)
            except Exception as exc:  # a file for another architecture trips the filter before the load
                first = " ".join(str(exc).split())[:200] or type(exc).__name__
                raise WeightsError(f"{self.what} does not fit timm's {type(timm_model).__name__} ({first});"
                                   " check [source] model") from None
        classifier = timm_model.pretrained_cfg.get("classifier") or "head"
        classifier = classifier if isinstance(classifier, str) else classifier[0]
        norms = [m for m in model.preprocess.modules() if isinstance(m, Normalize)]
        if not norms:
            raise RtkError("the timm model has no Normalize in its preprocess to take the ARES normalisation")
        mean, std = self.config.mean, self.config.std
        if len(mean) != len(std) or len(mean) != norms[-1].mean.numel():
            raise RtkError(f"[source.import] mean and std need one value per channel ({norms[-1].mean.numel()}),"
                           f" got {len(mean)} and {len(std)}")
        with torch.no_grad():
            norms[-1].mean.copy_(torch.tensor(mean, dtype=torch.float32).view_as(norms[-1].mean))
            norms[-1].std.copy_(torch.tensor(std, dtype=torch.float32).view_as(norms[-1].std))
        load_into(model, rtk_layout(state, classifier, body="body.model."), self.what)
