"""Torchvision-layout ResNet checkpoints loaded into [source] model: a timm ResNet (``timm/resnet50``,
``timm/resnet18``, ...; timm's parameter names are torchvision's) or, for MadryLab's CIFAR ResNet-18,
rtk's ``resnet18`` (the same network under the same names: 3x3 stem, ``shortcut`` projections,
``linear`` head).

Each format says where the network's state dict sits in the file and which normalisation the
network saw; ``load_network`` maps it onto the rtk model (``body.model.*`` or ``body.*``, ``head.*``,
the normalisation into the model's ``Normalize`` buffers) and loads it strictly: every tensor of
the model, nothing else, shapes checked, else one WeightsError naming the first offending keys as
the checkpoint spells them. The rtk model then gives the original network's logits (normalisation
included) for inputs in [0, 1].

Allow-lists: none of the four formats needs a global beyond what ``torch.load(weights_only=True)``
accepts by default. Their files hold dicts, OrderedDicts (state dicts, with ``_metadata``), tensors
(torch.FloatStorage / LongStorage in the pre-1.6 format, CUDA locations mapped to the CPU), ints,
floats, strings, None and lists: the optimizer's and LR scheduler's state dicts and the
accuracies (0-dim or 1-element tensors in robustness's train.py and FreeAT's main_free.py) among
them. MadryLab's files are written with ``pickle_module=dill``, which pickles these types exactly
as pickle does. So ``allow = ()``: a file that asks for anything else is refused by name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from rtk.errors import WeightsError
from rtk.importing import Importer, mismatches, safe_load
from rtk.models import Normalize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# locuslab/smoothing code/datasets.py (not the 0.2470 / 0.2435 / 0.2616 of other code)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


def _names(keys, limit: int = 5) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _is_cifar_layout(state: dict) -> bool:
    """robustness's cifar_models ResNets: a ``linear`` head and ``shortcut`` projections."""
    return "linear.weight" in state or any(".shortcut." in k for k in state)


class Network:
    """A checkpoint's network: its state dict in torchvision's (or robustness CIFAR's) names, the
    checkpoint key of each entry, the normalisation it saw, and the torchvision architecture the
    file names (``arch``), if it names one."""

    def __init__(self, state: dict, origin: dict, mean, std, arch: str | None = None):
        self.state, self.origin, self.mean, self.std, self.arch = state, origin, mean, std, arch

    @property
    def head_rows(self) -> int | None:
        weight = self.state.get("fc.weight", self.state.get("linear.weight"))
        return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


def _normalize_layer(model: nn.Module) -> str | None:
    """The dotted name of the model's Normalize layer (its preprocessing), if it has one."""
    preprocess = getattr(model, "preprocess", None)
    if preprocess is None:
        return None
    found = [f"preprocess.{n}" if n else "preprocess" for n, m in preprocess.named_modules()
             if isinstance(m, Normalize)]
    return found[0] if len(found) == 1 else None


def load_network(model: nn.Module, net: Network, what: str, keep_head: bool = True) -> None:
    """Load ``net`` into the rtk ``model`` strictly, its normalisation into the model's Normalize
    layer; ``keep_head=False`` leaves the model's (fresh) head as it is and drops the file's."""
    own = model.state_dict()
    cifar = _is_cifar_layout(net.state)
    if "body.model.conv1.weight" in own:  # a timm ResNet: torchvision's names under body.model
        body, head = "body.model.", "fc."
        if cifar:
            raise WeightsError(f"{what} holds one of robustness's CIFAR networks (keys linear.*, layer*.shortcut.*),"
                               ' which a timm ResNet cannot hold; rtk has its CIFAR ResNet-18 only ([source] model ='
                               ' "resnet18"); for another CIFAR architecture use format = "module" with'
                               " robustness's cifar_models")
    elif "body.conv1.weight" in own and "body.layer1.0.conv1.weight" in own:  # rtk's CIFAR ResNet
        body, head = "body.", "linear."
        if not cifar:
            raise WeightsError(f"{what} holds an ImageNet (torchvision) ResNet, not the CIFAR ResNet-18 of"
                               ' [source] model; use a timm ResNet, e.g. [source] model = "timm/resnet50"')
    else:
        raise WeightsError(f"{what}: [source] model is not a ResNet with torchvision's parameter names; use a timm"
                           ' ResNet, e.g. [source] model = "timm/resnet50"')
    state, origin = {}, {}
    for key, value in net.state.items():
        if key.startswith(head):
            if not keep_head:
                continue
            name = "head." + key[len(head):]
        else:
            name = body + key
        state[name], origin[name] = value, net.origin.get(key, key)
    if not keep_head:
        for name, value in own.items():
            if name.startswith("head."):
                state[name] = value
    layer = _normalize_layer(model)
    if layer is None:
        if any(v != 0 for v in net.mean) or any(v != 1 for v in net.std):
            raise WeightsError(f"{what}: [source] model has no normalisation layer (rtk.models.Normalize) to hold the"
                               " checkpoint's mean and std")
    else:
        for part, values in (("mean", net.mean), ("std", net.std)):
            name = f"{layer}.{part}"
            values = torch.as_tensor(values, dtype=own[name].dtype).detach().reshape(-1)
            if values.numel() != own[name].numel():
                raise WeightsError(f"{what}: the checkpoint's normalisation has {values.numel()} channels, [source]"
                                   f" model {own[name].numel()}")
            state[name] = values.reshape(own[name].shape)
    for name, value in own.items():  # files older than torch 0.4.1 have no BatchNorm counters
        if name.endswith(".num_batches_tracked") and name not in state:
            state[name] = torch.zeros_like(value)
    _load_strict(model, own, state, origin, what, net)


def _load_strict(model: nn.Module, own: dict, state: dict, origin: dict, what: str, net: Network) -> None:
    problems = mismatches(own, state, origin, name_model_keys=True)
    if problems:
        hint = ""
        built = getattr(getattr(getattr(model, "body", None), "model", None), "pretrained_cfg", None) or {}
        if net.arch and net.arch != built.get("architecture"):
            hint = f'the checkpoint\'s arch is {net.arch}: [source] model = "timm/{net.arch}"'
        rows, weight = net.head_rows, own.get("head.weight")
        shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if (rows is not None and weight is not None and "head.weight" in state and rows != weight.shape[0]
                and len(shapes) == (2 if "head.bias" in state and "head.bias" in own else 1)):
            hint = (f"the checkpoint's head has {rows} classes, the model's {weight.shape[0]}: leave [source]"
                    " num_classes out; a transfer replaces the head anyway")
        raise WeightsError(f"{what} does not match [source] model: {'; '.join(problems)}"
                           + (f" ({hint})" if hint else ""))
    model.load_state_dict(state, strict=True)


class TorchvisionResNet(Importer):
    """A format whose file holds a torchvision-layout ResNet: subclasses say where (``network``)."""

    allow: tuple = ()
    format = "torchvision-resnet"
    keep_head = True

    def __init__(self, config=None):
        super().__init__(config)
        self.path: Path | None = None

    def what(self) -> str:
        return f"{self.format} checkpoint {self.path}" if self.path is not None else f"the {self.format} checkpoint"

    def read(self, path: Path) -> Any:
        self.path = Path(path)
        contents = safe_load(path, self.allow, what=f"{self.format} checkpoint")
        self.network(contents)  # refuses a file of another layout now, in one line
        return contents

    def refuse(self, reason: str) -> WeightsError:
        return WeightsError(f"{self.what()}: {reason}")

    def entry(self, contents: Any, *keys: str) -> dict:
        """The file's state dict under the first of ``keys`` present."""
        if not isinstance(contents, dict):
            raise self.refuse(f"expected a dict with {' or '.join(repr(k) for k in keys)}, found a"
                              f" {type(contents).__name__}")
        for key in keys:
            if key in contents:
                state = contents[key]
                if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                    raise self.refuse(f"{key!r} is not a state dict of tensors")
                return state
        raise self.refuse(f"expected a dict with {' or '.join(repr(k) for k in keys)}, found the keys"
                          f" {_names(map(str, contents))}")

    def network(self, contents: Any) -> Network:
        raise NotImplementedError

    def num_classes(self, contents: Any) -> int | None:
        return self.network(contents).head_rows

    def convert(self, contents: Any, model) -> None:
        load_network(model, self.network(contents), self.what(), keep_head=self.keep_head)


def _arch(contents: dict) -> str | None:
    arch = contents.get("arch")
    return arch if isinstance(arch, str) else None


def _without_prefix(state: dict, prefix: str) -> tuple[dict, dict]:
    """``state`` without ``prefix`` when every key has it, and each new key's original."""
    if state and all(k.startswith(prefix) for k in state):
        return _strip(state, prefix), {k[len(prefix):]: k for k in state}
    return dict(state), {k: k for k in state}


class MadryLab(TorchvisionResNet):
    """MadryLab robustness / robust-models-transfer (robustness/train.py): ``model`` (older files:
    ``state_dict``) is the state dict of DataParallel(AttackerModel): ``module.model.*`` is the
    network, ``module.normalizer.new_mean`` / ``new_std`` its normalisation (kept, as the model's),
    ``module.attacker.*`` a second reference to both (dropped). ImageNet networks go into a timm
    ResNet; the library's CIFAR ResNet-18 into rtk's ``resnet18``; other CIFAR networks are refused."""

    format = "madrylab-robustness"

    def network(self, contents: Any) -> Network:
        full = self.entry(contents, "model", "state_dict")
        wrapper = "module." if any(k.startswith("module.") for k in full) else ""
        state, origin, mean, std = {}, {}, None, None
        for key, value in full.items():
            inner = key[len(wrapper):] if key.startswith(wrapper) else key
            if inner.startswith("model."):
                state[inner[len("model."):]] = value
                origin[inner[len("model."):]] = key
            elif inner == "normalizer.new_mean":
                mean = value
            elif inner == "normalizer.new_std":
                std = value
            elif not inner.startswith("attacker."):
                state[key], origin[key] = value, key  # not robustness's: reported as not in the model
        if not any(k.startswith(f"{wrapper}model.") for k in full):
            raise self.refuse(f"no {wrapper}model.* entries (robustness's AttackerModel network); found"
                              f" {_names(full)}")
        if mean is None or std is None:
            raise self.refuse(f"no {wrapper}normalizer.new_mean / new_std (the network's normalisation)")
        return Network(state, origin, mean, std)


class Locuslab(TorchvisionResNet):
    """Cohen et al.'s randomized-smoothing checkpoints (locuslab/smoothing code/train.py): ``arch`` and
    the ``state_dict`` of Sequential(NormalizeLayer, DataParallel(resnet50)), keys ``1.module.*``;
    NormalizeLayer keeps its constants out of the file: config.dataset says which. The CIFAR
    architectures (cifar_resnet20 / 110) have no rtk counterpart and are refused."""

    format = "locuslab-smoothing"

    def network(self, contents: Any) -> Network:
        state = self.entry(contents, "state_dict")
        arch = contents.get("arch")
        if isinstance(arch, str) and arch.startswith("cifar_resnet"):
            depth = arch[len("cifar_resnet"):]
            raise self.refuse(f'arch {arch} (locuslab code/archs/cifar_resnet.py) has no rtk architecture; import it'
                              ' with format = "module", factory = "archs.cifar_resnet:resnet", kwargs = {depth = '
                              f'{depth}, num_classes = 10}}, state_key = "state_dict", strip_prefix = "1.", head ='
                              ' "fc" and the CIFAR-10 mean/std, with locuslab\'s code/ on PYTHONPATH')
        prefix = "1.module." if any(k.startswith("1.module.") for k in state) else "1."
        if not any(k.startswith(prefix) for k in state):
            raise self.refuse(f"no 1.module.* entries (Sequential(NormalizeLayer, DataParallel(net))); found"
                              f" {_names(state)}")
        network, origin = {}, {}
        for key, value in state.items():
            name = key[len(prefix):] if key.startswith(prefix) else key
            network[name], origin[name] = value, key
        dataset = getattr(self.config, "dataset", "imagenet")
        mean, std = (CIFAR10_MEAN, CIFAR10_STD) if dataset == "cifar10" else (IMAGENET_MEAN, IMAGENET_STD)
        return Network(network, origin, mean, std, _arch(contents))


class FreeAT(TorchvisionResNet):
    """FreeAdversarialTraining main_free.py (Shafahi et al.): ``state_dict`` of
    DataParallel(torchvision resnet50), keys ``module.*``; the ImageNet normalisation it applied
    outside the network becomes the model's."""

    format = "free-at"

    def network(self, contents: Any) -> Network:
        state, origin = _without_prefix(self.entry(contents, "state_dict"), "module.")
        return Network(state, origin, IMAGENET_MEAN, IMAGENET_STD, _arch(contents))


class SimCLR(TorchvisionResNet):
    """SimCLR ResNet-50 (1x) converted by tonylins/simclr-converter: ``state_dict`` with torchvision
    names. Its ``fc.weight`` is the supervised linear head, whose bias was never converted: the
    head is dropped and the rtk head stays freshly initialised. Inputs in [0, 1], no normalisation."""

    format = "simclr-converted"
    keep_head = False

    def network(self, contents: Any) -> Network:
        state, origin = _without_prefix(self.entry(contents, "state_dict"), "module.")
        stem = state.get("conv1.weight")
        if isinstance(stem, torch.Tensor) and stem.dim() == 4 and stem.shape[0] != 64:
            raise self.refuse(f"a SimCLR ResNet-50 {stem.shape[0] // 64}x widens the stem too, which no timm ResNet"
                              ' does; only the 1x model imports into timm/resnet50 (use format = "module" with'
                              " simclr-converter's resnet_wider.py for the others)")
        return Network(state, origin, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
