"""Checkpoint importers: the published robust checkpoints the papers start from, read safely
(rtk.importing.safe_load: tensors and the few globals a format needs, nothing else) and loaded
into an rtk model whose logits equal the original network's, normalisation included.

Formats (``[source.import] format = ...``):
- ``madrylab-robustness``: MadryLab's robustness / robust-models-transfer ``.ckpt`` (Engstrom et
  al., github.com/MadryLab/robustness, robustness/train.py): ``model`` holds
  ``module.model.*`` (the network), ``module.attacker.model.*`` (a copy, dropped) and
  ``module.normalizer.new_mean`` / ``new_std`` (kept).
- ``locuslab-smoothing``: Cohen et al., "Certified Adversarial Robustness via Randomized
  Smoothing" (arXiv:1902.02918), github.com/locuslab/smoothing code/train.py: ``arch`` and a
  ``state_dict`` of Sequential(NormalizeLayer, DataParallel(net)) (keys ``1.module.*``); the
  normalisation constants come from the dataset (code/datasets.py).
- ``free-at``: Shafahi et al., "Adversarial Training for Free!" (arXiv:1904.12843),
  github.com/mahyarnajibi/FreeAdversarialTraining main_free.py: torchvision ResNet-50 under
  ``state_dict`` with ``module.`` keys, ImageNet normalisation applied outside the model.
- ``simclr-converted``: SimCLR (Chen et al., arXiv:2002.05709) TF checkpoints converted by
  github.com/tonylins/simclr-converter: ``state_dict`` with torchvision ResNet-50 names, no
  ``fc.bias``, inputs in [0, 1] without normalisation.
- ``ares``: ARES robust Swin-B / ViT-B (github.com/thu-ml/ares, robust_training): bare timm
  state dicts (either Swin key layout), ImageNet normalisation outside.
- ``module``: any ``nn.Module`` from ``"package.module:factory"`` with keyword arguments and the
  name of its head layer (a user's own code).
- ``robustbench``: a RobustBench model by name (github.com/RobustBench/robustbench; the optional
  extra ``rtk[robustbench]``, which pins timm 1.0.9).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import rtk
from rtk.config import option


@dataclass
class TorchvisionResNetImport:
    """A torchvision-layout ResNet checkpoint loaded into [source] model (a timm ResNet, e.g.
    timm/resnet50, whose parameter names are torchvision's)."""


@dataclass
class LocuslabImport:
    """Cohen et al.'s checkpoints. Default: dataset = "imagenet" (the normalisation constants)."""

    dataset: Literal["imagenet", "cifar10"] = option("imagenet", help=(
        "whose normalisation constants the checkpoint's NormalizeLayer used (code/datasets.py): imagenet "
        "(0.485, 0.456, 0.406) / (0.229, 0.224, 0.225), or cifar10 (0.4914, 0.4822, 0.4465) / "
        "(0.2023, 0.1994, 0.2010)"))


@dataclass
class AresImport:
    """ARES robust timm models. Default: ImageNet normalisation."""

    mean: list[float] = option(default_factory=lambda: [0.485, 0.456, 0.406], help="normalisation mean applied outside")
    std: list[float] = option(default_factory=lambda: [0.229, 0.224, 0.225], help="normalisation std applied outside")


@dataclass
class ModuleImport:
    """Any nn.Module: ``factory = "package.module:function"`` builds it, the checkpoint's state dict
    loads into it, ``head`` names its final classifier layer. Defaults: no normalisation, the state
    dict at the top of the file (or under ``state_key``), no prefix stripped."""

    factory: str = option(help=(
        '"package.module:function" that returns the nn.Module, e.g. "torchvision.models:resnet50"'))
    head: str = option(help='dotted name of the final classifier layer, e.g. "fc" or "head.fc"')
    kwargs: dict[str, Any] = option(default_factory=dict, help="keyword arguments of the factory")
    state_key: str | None = option(None, help='the entry of the file that holds the state dict, e.g. "state_dict"')
    strip_prefix: str = option("", help='a prefix to drop from every key, e.g. "module."')
    mean: list[float] | None = option(None, help=(
        "normalisation mean the network expects outside (none: inputs in [0, 1])"))
    std: list[float] | None = option(None, help="normalisation std the network expects outside")


@dataclass
class RobustBenchImport:
    """A RobustBench zoo model by name (robustbench.utils.load_model)."""

    name: str = option(help='the model name in the RobustBench leaderboard, e.g. "Wong2020Fast"')
    dataset: Literal["cifar10", "cifar100", "imagenet"] = option("cifar10", help="the leaderboard's dataset")
    threat_model: Literal["Linf", "L2", "corruptions"] = option("Linf", help="the leaderboard's threat model")
    head: str = option("fc", help='dotted name of the final classifier layer (e.g. "fc", "linear", "logits")')


@rtk.hookimpl
def register_importers(register):
    register("madrylab-robustness", "rtk_plugins.importers.torchvision_resnets:MadryLab",
             config=TorchvisionResNetImport,
             summary="MadryLab robustness / robust-models-transfer .ckpt (module.model.*, normalizer kept)")
    register("locuslab-smoothing", "rtk_plugins.importers.torchvision_resnets:Locuslab", config=LocuslabImport,
             summary="Cohen et al.'s randomized-smoothing checkpoint.pth.tar (1.module.*, dataset normalisation)")
    register("free-at", "rtk_plugins.importers.torchvision_resnets:FreeAT", config=TorchvisionResNetImport,
             summary="FreeAdversarialTraining model_best.pth.tar (torchvision ResNet-50, module.*, ImageNet norm.)")
    register("simclr-converted", "rtk_plugins.importers.torchvision_resnets:SimCLR", config=TorchvisionResNetImport,
             summary="SimCLR ResNet-50 converted by simclr-converter (state_dict, no head bias, no normalisation)")
    register("ares", "rtk_plugins.importers.timm_state:Ares", config=AresImport,
             summary="ARES robust Swin-B / ViT-B: a bare timm state dict (old or new Swin layout)")
    register("module", "rtk_plugins.importers.module_factory:ModuleFactory", config=ModuleImport, builds_model=True,
             summary='any nn.Module from "package.module:factory", its head layer named')
    register("robustbench", "rtk_plugins.importers.module_factory:RobustBench", config=RobustBenchImport,
             builds_model=True, fetches_itself=True,
             summary="a RobustBench zoo model by name (optional extra rtk[robustbench])")
