"""Any ``nn.Module`` as an rtk source: a user's ``"package.module:function"`` (format ``module``) or a
RobustBench zoo model by name (format ``robustbench``), wrapped in the model contract.

The wrapper (``wrap``): ``head`` is the module's layer named by the config (an ``nn.Linear``); ``body``
is the module itself with that layer replaced by ``nn.Identity``, so ``features(x)`` is exactly what
the head saw; ``preprocess`` is the normalisation the network expects outside (none for RobustBench,
whose models normalise inside); ``blocks`` are the module's top-level children that still hold
parameters once the head is replaced, in registration order (deepest last). This assumes that the
module's output is the head's output, as in torchvision's and timm's classifiers (checked against
RobustBench's network when one is imported).

Both formats build the network themselves (trait ``builds_model``), also when the converted weights
are loaded again from the store: ``build`` makes the bare wrapper (the factory's module, or
RobustBench's architecture without its weights), ``convert`` loads the weights into it.
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from rtk.errors import RecipeError, RtkError, WeightsError
from rtk.importing import Importer, mismatches, safe_load
from rtk.models import Normalize, RtkModel


def _names(keys, limit: int = 5) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def load_strict(model: nn.Module, state: dict, origin: dict, what: str, spell: Callable[[str], str] = str) -> None:
    """Load ``state`` (the model's key layout) into ``model``: every tensor of the model, and only
    those, with matching shapes; else one WeightsError naming the offending keys as the checkpoint
    spells them (``origin``: model key -> the checkpoint's key; ``spell``: the same for the model's
    keys the checkpoint lacks)."""
    problems = mismatches(model.state_dict(), state, origin, spell)
    if problems:
        raise WeightsError(f"{what} does not match the model: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


def load_factory(spec: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the callable (one-line errors when it does not import)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise RecipeError(f'[source.import] factory "{spec}": expected "package.module:function",'
                          ' e.g. "torchvision.models:resnet50"')
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or an error raised while the module runs
        raise RecipeError(f'[source.import] factory "{spec}": cannot import {module_name} ({_first_line(exc)});'
                          " install it or put it on PYTHONPATH") from None
    found: Any = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise RecipeError(f'[source.import] factory "{spec}": {module_name} has no attribute {attribute}')
        found = getattr(found, part)
    if not callable(found):
        raise RecipeError(f'[source.import] factory "{spec}": {attribute} is a {type(found).__name__}, not a'
                          " callable that returns an nn.Module")
    return found


def _linear_names(module: nn.Module) -> list[str]:
    return [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]


def wrap(module: nn.Module, head: str, mean=None, std=None, what: str = "the module") -> RtkModel:
    """``module`` as an RtkModel whose head is its layer ``head`` (see the module docstring)."""
    if not isinstance(module, nn.Module):
        raise RtkError(f"{what} is a {type(module).__name__}, not a torch nn.Module")
    if not head:
        raise RecipeError(f'{what}: head = "": name its final classifier layer, e.g. "fc"')
    try:
        layer = module.get_submodule(head)
    except AttributeError:
        layer = None
    if not isinstance(layer, nn.Linear):
        linears = _linear_names(module)
        kind = "has no layer" if layer is None else f"has a {type(layer).__name__}, not an nn.Linear, as"
        raise RtkError(f'{what} {kind} "{head}": name its final classifier layer with head = "..."'
                       f' (its nn.Linear layers: {", ".join(linears[-5:]) or "none"})')
    parent_name, _, leaf = head.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, leaf, nn.Identity())
    preprocess = Normalize(mean, std) if mean is not None else None
    return RtkModel(module, layer, layer.in_features, block_names(module), preprocess)


def _has_parameters(module: nn.Module, recurse: bool = True) -> bool:
    return any(True for _ in module.parameters(recurse=recurse))


def block_names(module: nn.Module) -> list[str]:
    """The children of ``module`` that hold parameters, in order; through a wrapper whose parameters
    all sit in one child (RobustBench's Sequential(normalize, model)), that child's children."""
    prefix = ""
    while True:
        holders = [(name, child) for name, child in module.named_children() if _has_parameters(child)]
        if len(holders) == 1 and not _has_parameters(module, recurse=False) and any(holders[0][1].children()):
            prefix, module = f"{prefix}{holders[0][0]}.", holders[0][1]
            continue
        return [prefix + name for name, _ in holders]


def rtk_layout(state: dict, head: str, body: str = "body.") -> tuple[dict, dict, Callable[[str], str]]:
    """A state dict of the original module -> the wrapper's keys (``head.*`` for the layer ``head``,
    ``body`` + key for the rest), the checkpoint's key of each new key, and the reverse spelling (for
    error messages)."""
    mapped, origin = {}, {}
    for key, value in state.items():
        new = f"head.{key[len(head) + 1:]}" if key.startswith(head + ".") else f"{body}{key}"
        mapped[new], origin[new] = value, key

    def spell(key: str) -> str:
        if key.startswith("head."):
            return f"{head}.{key[len('head.'):]}"
        return key[len(body):] if key.startswith(body) else key

    return mapped, origin, spell


def load_into(model: RtkModel, converted: tuple[dict, dict, Callable[[str], str]], what: str) -> None:
    """Load a checkpoint in the wrapper's layout (``rtk_layout``'s result) strictly; the preprocess
    buffers stay the model's. A head with another class count than the model's ([source] num_classes)
    is loaded, then replaced by a fresh one of the model's size."""
    mapped, origin, spell = converted
    mapped = dict(mapped)
    for key, value in model.state_dict().items():
        if key.startswith("preprocess."):
            mapped[key] = value
    wanted = model.num_classes
    rows = mapped.get("head.weight")
    if rows is not None and rows.ndim == 2 and rows.shape[0] != wanted and rows.shape[1] == model.feature_dim:
        model.reset_head(rows.shape[0])
    load_strict(model, mapped, origin, what, spell)
    if model.num_classes != wanted:
        model.reset_head(wanted)


def _class_count(model: RtkModel, num_classes: int) -> RtkModel:
    if model.num_classes != num_classes:
        model.reset_head(num_classes)
    return model


class ModuleFactory(Importer):
    """Format ``module``: a state dict (a tensor-only torch file) for the module a factory builds."""

    def __init__(self, config=None):
        super().__init__(config)
        if (config.mean is None) != (config.std is None):
            raise RecipeError("[source.import] mean and std: give both (the normalisation the network expects"
                              " outside) or neither")

    def describe(self) -> str:
        return f'the module checkpoint for "{self.config.factory}"'

    def module(self) -> nn.Module:
        factory = load_factory(self.config.factory)
        try:
            return factory(**dict(self.config.kwargs))
        except Exception as exc:
            raise RtkError(f'[source.import] factory "{self.config.factory}" failed with kwargs'
                           f" {dict(self.config.kwargs)}: {_first_line(exc)}") from None

    def build(self, build_source, num_classes: int) -> RtkModel:
        cfg = self.config
        model = wrap(self.module(), cfg.head, cfg.mean, cfg.std, what=f'the module of "{cfg.factory}"')
        return _class_count(model, num_classes)

    def state(self, contents: Any) -> dict:
        """The checkpoint's state dict: under ``state_key`` when set, ``strip_prefix`` removed."""
        cfg, state = self.config, contents
        if cfg.state_key:
            if not isinstance(state, dict) or cfg.state_key not in state:
                keys = _names(state) if isinstance(state, dict) else type(state).__name__
                raise WeightsError(f'{self.describe()} has no entry "{cfg.state_key}" (state_key); its entries:'
                                   f" {keys}")
            state = state[cfg.state_key]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            others = [k for k, v in state.items() if not isinstance(v, torch.Tensor)] if isinstance(state, dict) else []
            hint = (f"; it holds {_names(others)} besides tensors: set state_key to the entry that holds the state"
                    " dict" if others else "")
            raise WeightsError(f"{self.describe()} is not a mapping of names to tensors{hint}")
        if cfg.strip_prefix:
            state = {k[len(cfg.strip_prefix):] if k.startswith(cfg.strip_prefix) else k: v for k, v in state.items()}
        return state

    def num_classes(self, contents: Any) -> int | None:
        weight = self.state(contents).get(f"{self.config.head}.weight")
        return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None

    def convert(self, contents: Any, model: RtkModel) -> None:
        load_into(model, rtk_layout(self.state(contents), self.config.head), self.describe())


# --- RobustBench -------------------------------------------------------------------------------------

# robustbench 1.1.1's requirements that a usual rtk environment does not already meet (its wheel's METADATA)
ROBUSTBENCH_PINS = ("timm==1.0.9", "gdown==5.1.0")
ROBUSTBENCH_ADDS = ("pandas", "geotorch", "torchdiffeq")
CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
INPUT_SIZE = {"cifar10": 32, "cifar100": 32, "imagenet": 224}


def _robustbench(what: str):
    try:
        return importlib.import_module(what)
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] != "robustbench":
            raise RtkError(f"robustbench is installed but cannot import {exc.name} ({_first_line(exc)})") from None
        raise RtkError('format "robustbench" needs the optional extra: pip install "rtk[robustbench]" (robustbench'
                       f" 1.1.1 pins {' and '.join(ROBUSTBENCH_PINS)} (downgrading a newer timm) and adds"
                       f" {', '.join(ROBUSTBENCH_ADDS)}; give it its own environment if timm must stay newer)"
                       ) from None


def _by_value(table: dict, value: str):
    """robustbench's model_dicts are keyed by enums (BenchmarkDataset, ThreatModel): look up by value."""
    for key, found in table.items():
        if getattr(key, "value", key) == value:
            return found
    return None


class RobustBench(Importer):
    """Format ``robustbench``: ``robustbench.utils.load_model`` loads the zoo model (its own key fixes
    and normalisation inside); rtk wraps it and stores the converted weights.

    ``read``: the file a recipe names (path, url or hub: the ``{name}.pt`` robustbench would fetch
    from Google Drive) is opened with the tensor-only loader first, so robustbench never unpickles
    anything else; ``None`` (no file) leaves the download to robustbench, into the store's
    ``downloads/robustbench``. ``convert`` runs ``load_model`` on that file (or download) and copies
    the network's weights into the wrapper that ``build`` made from robustbench's architecture,
    without weights, which is also how a stored import is loaded again: no robustbench download then.
    """

    def describe(self) -> str:
        cfg = self.config
        return f"the RobustBench model {cfg.name} ({cfg.dataset}, {cfg.threat_model})"

    def read(self, path: Path | None) -> Path | None:
        if path is None:
            return None
        safe_load(path, self.allow, what="RobustBench checkpoint")  # refuses anything but tensors
        return Path(path)

    def num_classes(self, contents: Any) -> int | None:
        return CLASSES[self.config.dataset]

    def _timm_name(self) -> str:
        cfg = self.config
        return f"{cfg.name.lower().replace('-', '_')}_{cfg.dataset}_{cfg.threat_model.lower()}"

    def architecture(self) -> nn.Module:
        """The zoo network without weights (what load_model builds before it loads the file)."""
        cfg = self.config
        zoo = _robustbench("robustbench.model_zoo")
        import timm

        if timm.is_model(self._timm_name()):  # load_model's first branch: zoo models that timm serves
            return timm.create_model(self._timm_name(), num_classes=CLASSES[cfg.dataset], pretrained=False)
        models = _by_value(_by_value(zoo.model_dicts, cfg.dataset) or {}, cfg.threat_model) or {}
        if cfg.name not in models:
            import difflib

            close = difflib.get_close_matches(cfg.name, list(models), n=3, cutoff=0.5)
            raise RtkError(f'RobustBench has no model "{cfg.name}" for {cfg.dataset} {cfg.threat_model}'
                           f'{"; did you mean " + ", ".join(close) + "?" if close else ""}')
        if isinstance(models[cfg.name].get("gdrive_id"), list):
            raise RtkError(f"{self.describe()} is an ensemble of several checkpoints; rtk imports single networks")
        return models[cfg.name]["model"]()

    def build(self, build_source, num_classes: int) -> RtkModel:
        model = wrap(self.architecture(), self.config.head, what=self.describe())
        return _class_count(model, num_classes)

    def _load_model(self, path: Path | None) -> nn.Module:
        import tempfile

        cfg = self.config
        utils = _robustbench("robustbench.utils")
        with tempfile.TemporaryDirectory(prefix="rtk-robustbench-") as tmp:
            kwargs: dict = {}
            if path is None:
                from rtk.services.store import SourceStore

                downloads = getattr(self, "downloads", None) or SourceStore().root / "downloads"
                model_dir = Path(downloads) / "robustbench"
            else:  # robustbench finds {model_dir}/{dataset}/{threat_model}/{name}.pt and downloads nothing
                model_dir = Path(tmp)
                folder = model_dir / cfg.dataset / cfg.threat_model
                folder.mkdir(parents=True)
                (folder / f"{cfg.name}.pt").symlink_to(Path(path).resolve())
                kwargs["custom_checkpoint"] = str(path)  # the timm-served zoo models read it from there
            if "custom_checkpoint" not in inspect.signature(utils.load_model).parameters:
                kwargs.pop("custom_checkpoint", None)  # robustbench before 1.1.1
            try:
                net = utils.load_model(model_name=cfg.name, model_dir=str(model_dir), dataset=cfg.dataset,
                                       threat_model=cfg.threat_model, **kwargs)
            except Exception as exc:
                raise WeightsError(f"robustbench cannot load {self.describe()}: {_first_line(exc)}") from None
        return net.eval()

    def convert(self, contents: Path | None, model: RtkModel) -> None:
        net = self._load_model(contents)
        load_into(model, rtk_layout(net.state_dict(), self.config.head), self.describe())
        # The wrapper must compute what robustbench's network computes: its output is its head's, and
        # the wrapper's features are what that head sees.
        size = INPUT_SIZE[self.config.dataset]
        x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        seen: dict = {}
        hook = net.get_submodule(self.config.head).register_forward_hook(
            lambda module, args, output: seen.update(z=args[0], y=output))
        was = model.training
        try:
            with torch.no_grad():
                model.eval()
                expected, features = net(x), model.features(x)
        finally:
            hook.remove()
            model.train(was)
        if not (torch.allclose(expected, seen["y"], rtol=1e-4, atol=1e-5)
                and torch.allclose(features, seen["z"], rtol=1e-4, atol=1e-5)):
            raise RtkError(f'{self.describe()}: the network\'s output is not its layer "{self.config.head}"\'s output'
                           " (its forward does more after the head); rtk cannot split it into features and head")
