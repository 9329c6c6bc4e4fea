"""timm backbones under the model contract (Wightman, "PyTorch Image Models",
github.com/huggingface/pytorch-image-models).

The body is the timm model with its classifier removed (``reset_classifier(0)``); the
features z are ``forward_head(forward_features(x), pre_logits=True)``, i.e. exactly what the
original classifier saw, and the head is a separate Linear (a copy of the original classifier
when weights were loaded and the class count matches, fresh otherwise). Preprocessing inside
the model: bilinear resize to the input size, then mean/std normalization, both defaulting to
the model's ``pretrained_cfg``.

Blocks come from timm's own layer grouping (``group_matcher`` with ``group_parameters``, the
grouping timm uses for layer-wise LR decay), so the list is generic across architectures. A
group is mapped to the largest submodules whose parameters all lie in it; a group that spans
several submodules (Swin's patch merging + first block of a stage, a ViT's last block + final
norm) therefore yields one block per submodule, in order. The stem group belongs to no block
(like the init conv of a CIFAR WRN).

Weights: only local files are read by rtk, through rtk.models.read_state_dict (safetensors
or tensor-only torch files; nothing is unpickled), then handed to timm's pretrained loader
(``pretrained_cfg_overlay=dict(state_dict=...)``) so its checkpoint filters (position
embedding resampling, input-channel adaptation) apply. ``pretrained=True`` without a file
uses the local Hugging Face cache when it has the weights, fails at once when the hub is
offline or unreachable, and otherwise lets timm download.
"""
from __future__ import annotations

import difflib
import os
import re
import socket
import threading
import urllib.request
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

import torch
from torch import nn

from rtk.errors import RecipeError, UnknownComponentError, WeightsError
from rtk.models import Normalize, Resize, RtkModel, load_weights, read_state_dict

_RTK_PREFIXES = ("body.", "head.", "preprocess.")


class TimmBody(nn.Module):
    """A classifier-less timm model mapping images to the features its classifier sees."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def resolve_name(name: str | None) -> str:
    """Check ``name`` ("arch" or "arch.tag") against timm; unknown names list close matches."""
    import timm
    from timm.models import split_model_name_tag

    if not name:
        raise UnknownComponentError('source model "timm/*" needs a timm model name, e.g. "timm/resnet18"')
    arch, tag = split_model_name_tag(name)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(f'timm/{c}' for c in close)}? " if close else ""
        raise UnknownComponentError(f'unknown timm model "{name}"; {hint}timm.list_models() lists all architectures')
    if tag and name not in timm.list_pretrained(f"{arch}.*"):
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        raise UnknownComponentError(f'timm model "{arch}" has no pretrained tag "{tag}";'
                                    f' tags: {", ".join(tags) or "(none)"}')
    return name


def _hub_offline() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    if any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return True
    return bool(constants.HF_HUB_OFFLINE)


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub (or the proxy in use) opens within ``timeout`` s.

    A thread bounds DNS resolution too, which socket timeouts do not cover; this replaces
    huggingface_hub's ~45 s of retries when there is no network.
    """
    url = urlparse(_hub_endpoint())
    proxy = urllib.request.getproxies().get(url.scheme)
    target = urlparse(proxy if "://" in proxy else f"http://{proxy}") if proxy else url
    host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    if not host:
        return False
    ok: list[bool] = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


def cached_hub_file(cfg: dict) -> str | None:
    """The model's weights file in the local Hugging Face cache, if already downloaded."""
    hub_id = cfg.get("hf_hub_id")
    if not hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo, _, revision = hub_id.partition("@")
    names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
    for filename in names:
        path = try_to_load_from_cache(repo, filename, cache_dir=os.environ.get("HF_HUB_CACHE") or None,
                                      revision=revision or None)
        if isinstance(path, str):
            return path
    return None


def _classifier_names(cfg: dict) -> list[str]:
    names = cfg.get("classifier") or []
    return [names] if isinstance(names, str) else list(names)


def _stem_parameters(model: nn.Module, matcher) -> set[str]:
    if not isinstance(matcher, dict) or not matcher.get("stem"):
        return set()
    spec = matcher["stem"]
    specs = spec if isinstance(spec, (list, tuple)) else [spec]
    patterns = [s[0] if isinstance(s, (list, tuple)) else s for s in specs]
    return {n for n, _ in model.named_parameters() if any(re.match(p, n) for p in patterns)}


def timm_block_names(model: nn.Module) -> list[str]:
    """Ordered block paths (deepest last) of a classifier-less timm model, from timm's grouping."""
    from timm.models._manipulate import group_parameters

    matcher = model.group_matcher(coarse=False)
    groups = group_parameters(model, matcher)
    stem = _stem_parameters(model, matcher)
    if not stem and not isinstance(matcher, dict) and groups:
        stem = set(groups[min(groups)])  # callable matchers number the stem first
    params_of = {path: {f"{path}.{p}" if path else p for p, _ in module.named_parameters()}
                 for path, module in model.named_modules()}
    names: list[str] = []
    for _, group in sorted(groups.items()):
        members = set(group) - stem
        for param in group:
            owner = param.rpartition(".")[0]
            if param in stem or not owner:  # loose root parameters (tokens, embeddings) are stem-like
                continue
            while True:
                parent = owner.rpartition(".")[0]
                if not parent or not params_of[parent] <= members:
                    break
                owner = parent
            if not any(owner == n or owner.startswith(n + ".") for n in names):
                names.append(owner)
    return names


def _copy_classifier(classifier: nn.Module, feature_dim: int, num_classes: int) -> nn.Linear | None:
    weight = getattr(classifier, "weight", None)
    if weight is None or weight.shape[0] != num_classes or weight[0].numel() != feature_dim:
        return None
    if not isinstance(classifier, (nn.Linear, nn.Conv2d)) or (
            isinstance(classifier, nn.Conv2d) and weight.shape[2:] != (1, 1)):
        return None
    head = nn.Linear(feature_dim, num_classes, bias=classifier.bias is not None)
    with torch.no_grad():
        head.weight.copy_(weight.reshape(num_classes, feature_dim))
        if classifier.bias is not None:
            head.bias.copy_(classifier.bias)
    return head


def timm_model(name: str, num_classes: int, *, pretrained: bool = False, weights: str | Path | None = None,
               input_size: int | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
               in_chans: int = 3, model_args: dict[str, Any] | None = None) -> RtkModel:
    """Build timm model ``name`` ("arch" or "arch.tag") as an RtkModel with ``num_classes`` outputs."""
    import timm
    from timm.models import get_pretrained_cfg

    name = resolve_name(name)
    cfg_obj = get_pretrained_cfg(name)
    cfg = cfg_obj.to_dict() if cfg_obj is not None else {}
    default_size = tuple((cfg.get("input_size") or (3, 224, 224))[-2:])
    size = (input_size, input_size) if input_size else default_size
    kwargs = dict(model_args or {}, in_chans=in_chans)
    if cfg.get("fixed_input_size") and size != default_size:
        kwargs["img_size"] = size  # ViT/Swin-style models fix their grid at construction

    state, source, rtk_format = None, None, False
    if weights is not None:
        state, source = read_state_dict(weights), str(weights)
        rtk_format = bool(state) and all(k.startswith(_RTK_PREFIXES) for k in state)
    elif pretrained:
        cached = cached_hub_file(cfg)
        if cached:
            state, source = read_state_dict(cached), cached
        elif _hub_offline() or not hub_reachable():
            raise WeightsError(
                f'timm model "{name}": pretrained weights are not in the local Hugging Face cache and the hub is'
                ' unreachable (offline); set weights = "path/to/model.safetensors" (a timm state dict) or'
                " pretrained = false"
            )

    loaded = (state is not None and not rtk_format) or (pretrained and weights is None)
    try:
        if state is not None and not rtk_format:
            classifiers = [c for c in _classifier_names(cfg) if f"{c}.weight" in state]
            ckpt_classes = state[f"{classifiers[0]}.weight"].shape[0] if classifiers else 0
            model = timm.create_model(name, pretrained=True, num_classes=ckpt_classes,
                                      pretrained_cfg_overlay=dict(state_dict=state, num_classes=ckpt_classes), **kwargs)
        elif loaded:
            model = timm.create_model(name, pretrained=True, **kwargs)
        else:
            model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        if not model_args:
            raise
        raise RecipeError(f'timm model "{name}": timm.create_model rejected model_args {model_args}:'
                          f" {_one_line(exc)}") from None
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        if not loaded:
            raise
        where = f"weights {source}" if source else "weights from the Hugging Face hub"
        raise WeightsError(f'timm model "{name}": cannot load {where}: {_one_line(exc)}') from None

    classifier = model.get_classifier()
    feature_dim = (getattr(classifier, "in_features", None) or getattr(model, "head_hidden_size", None)
                   or model.num_features)
    head = _copy_classifier(classifier, feature_dim, num_classes) if loaded else None
    if head is None:
        head = nn.Linear(feature_dim, num_classes)
    model.reset_classifier(0)

    if mean is None or std is None:
        cfg_mean, cfg_std = cfg.get("mean") or (0.485, 0.456, 0.406), cfg.get("std") or (0.229, 0.224, 0.225)
        if len(cfg_mean) != in_chans:  # timm sums the stem weights for other channel counts; average the stats
            cfg_mean = [sum(cfg_mean) / len(cfg_mean)] * in_chans
            cfg_std = [sum(cfg_std) / len(cfg_std)] * in_chans
        mean = cfg_mean if mean is None else mean
        std = cfg_std if std is None else std
    body = TimmBody(model)
    blocks = [f"model.{n}" for n in timm_block_names(model)]
    rtk_model = RtkModel(body, head, feature_dim, blocks, nn.Sequential(Resize(size), Normalize(mean, std)))
    if rtk_format:
        head_weight = state.get("head.weight")
        if head_weight is not None and head_weight.shape[0] != num_classes:
            rtk_model.reset_head(head_weight.shape[0])
        load_weights(rtk_model, weights)
        if rtk_model.num_classes != num_classes:
            rtk_model.reset_head(num_classes)
    return rtk_model


def from_config(config, num_classes: int, variant: str | None = None) -> RtkModel:
    """The ``timm/*`` factory: timm model ``variant`` with rtk_plugins.timm_models.TimmConfig's options."""
    return timm_model(variant, num_classes, pretrained=config.pretrained, weights=config.timm_weights,
                      input_size=config.input_size, mean=config.mean, std=config.std,
                      in_chans=config.in_chans, model_args=config.model_args)
