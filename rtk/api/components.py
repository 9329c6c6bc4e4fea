"""Components from Python: registered attacks and models built with validated options, sources
from the source store, and the registry's listing (what ``rtk list-plugins`` shows).

Everything goes through the default registry (rtk.registry.default_registry; swap it within a
block with ``rtk.registry.using(registry)``), so option names, defaults and error messages are
those of recipes. Importing this module loads neither torch nor any plugin: they are imported
when a function needs them.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtk.errors import RtkError, UnknownComponentError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from rtk.config.spec import ComponentSpec
    from rtk.services.store import Entry, SourceStore

__all__ = ["ComponentInfo", "ConfiguredAttack", "attack", "components", "dataset", "model", "options", "source",
           "sources"]


# ----------------------------------------------------------------------------- shared with rtk.api.evaluation


def _registry():
    from rtk.registry import default_registry

    return default_registry()


def _resolve(kind: str, name: Any, what: str):
    """(component, variant) of the registered ``name``, or an RtkError naming ``what`` was asked for."""
    if not isinstance(name, str) or not name:
        raise RtkError(f"{what}: expected the name of a registered {kind} (a string), got {name!r}; see"
                       f' rtk.components("{kind}")')
    try:
        return _registry().resolve(kind, name)
    except UnknownComponentError as exc:
        raise UnknownComponentError(f"{what}: {exc}") from None


def _config(component, options: dict, what: str):
    """``component``'s config built from ``options`` and checked as a recipe table is; relative file
    and folder options resolved against the working directory (a recipe's: its own folder)."""
    from rtk.config.fields import ConfigValueError, build_config

    try:
        config = build_config(component.config, options)
    except ConfigValueError as exc:
        prefix = f"{exc.key}: " if exc.key and "unknown key" not in str(exc) else ""
        raise RtkError(f"{what}: {prefix}{exc} ({component.describe()}; see"
                       f' rtk.options("{component.name}", kind="{component.kind}"))') from None
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, str) and value and (f.metadata.get("path") or f.name in ("root", "weights")):
            object.__setattr__(config, f.name, str(Path(value).expanduser().absolute()))
    return config


def _spec(kind: str, name: str, options: dict, what: str, label: str = "") -> ComponentSpec:
    """The rtk.config.spec.ComponentSpec a recipe table {name, **options} would give."""
    from rtk.config.spec import ComponentSpec

    component, variant = _resolve(kind, name, what)
    return ComponentSpec(component, _config(component, options, what), variant, what, label)


@contextlib.contextmanager
def _seeded(seed: int | None):
    """Torch seeded with ``seed`` within the block (None: left alone), the caller's RNG state restored after."""
    import torch

    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ----------------------------------------------------------------------------- attacks


class ConfiguredAttack:
    """A registered attack built with its validated config (what ``attack`` returns).

    Call it as ``adversarial = atk(model, images, labels)``: the model in eval mode (each
    submodule's mode restored after), images in [0, 1] on the model's device; the output is checked
    to lie in [0, 1] and within the attack's ball, as an evaluation checks it. ``rtk.evaluate``
    takes it in ``attacks=[...]`` (its sanity checks included). Attributes: ``name``, ``label``,
    ``options`` (as given), ``config`` (the validated dataclass), ``norm``, ``eps``,
    ``threat_model`` and ``attack`` (the plugin's own object).

    Example::

        >>> pgd = rtk.attack("pgd", eps="8/255", steps=10)
        >>> adversarial = pgd(model, images, labels)
        >>> pgd.norm, round(pgd.eps, 4)
        ('Linf', 0.0314)
    """

    def __init__(self, spec: ComponentSpec, options: dict):
        self.spec = spec
        self.options = dict(options)
        self.attack = spec.build()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def label(self) -> str:
        return self.spec.label or self.spec.name

    @property
    def config(self):
        return self.spec.config

    @property
    def norm(self) -> str | None:
        return getattr(self.attack, "norm", None)

    @property
    def eps(self) -> float | None:
        return getattr(self.attack, "eps", None)

    @property
    def threat_model(self) -> str:
        return f"{self.norm} eps={self.eps:g}" if isinstance(self.eps, (int, float)) else str(self.norm)

    def diagnostics(self) -> list[dict]:
        """What the attack itself noticed while running (AutoAttack's checks), as flags."""
        diagnostics = getattr(self.attack, "diagnostics", None)
        return list(diagnostics()) if callable(diagnostics) else []

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from rtk.evaluation.robust_accuracy import check_threat_model

        adversarial = self.attack(model, images, labels)
        check_threat_model(self.label, self.attack, images, adversarial)
        return adversarial

    def __repr__(self) -> str:
        given = "".join(f", {k}={v!r}" for k, v in self.options.items())
        label = f", label={self.label!r}" if self.label != self.name else ""
        return f"rtk.attack({self.name!r}{given}{label})  # {self.threat_model}"


def attack(name: str, **options) -> ConfiguredAttack:
    """The registered attack ``name`` built with ``options`` (its config's fields; every other one
    keeps the default the attack documents: ``rtk.options(name)`` lists them). ``label="..."``
    names it in evaluation results (default: its name). Floats accept exact fractions, e.g.
    ``eps="8/255"``. A bad name or option raises RtkError naming it.

    Example::

        >>> atk = rtk.attack("pgd", eps="8/255", steps=10)        # Linf PGD-10 (default 20 steps)
        >>> adversarial = atk(model, images, labels)             # images in [0, 1]
        >>> rtk.evaluate(model, "cifar10", attacks=[atk, rtk.attack("square", eps="8/255")])
    """
    label = options.pop("label", "")
    if not isinstance(label, str):
        raise RtkError(f'attack "{name}": label: expected a string, got {label!r}')
    return ConfiguredAttack(_spec("attack", name, options, f'attack "{label or name}"', label), options)


# ----------------------------------------------------------------------------- models


def dataset(name: str, **options):
    """The registered dataset ``name`` with recipe options (``classes``, ``per_class``, ``val_fraction``,
    ``image_size``, ``channels``, ``root``...), loaded exactly as a recipe's ``[target]`` is: an
    ``rtk.data.DataSplits`` with ``train``, ``test`` (and ``val`` when there is one), images in [0, 1].
    Datasets read local files and never download unless ``download=True``.

    Example::

        >>> data = rtk.dataset("digits", classes=[5, 6, 7, 8, 9], image_size=32, channels=3)
        >>> images, labels = data.train.take(torch.arange(64))
        >>> images.shape, data.num_classes, len(data.test)
        (torch.Size([64, 3, 32, 32]), 5, 269)
    """
    from rtk.stages.datasets import load_dataset

    return load_dataset(_spec("dataset", name, dict(options), f'dataset "{name}"'))


def _head_rows(state: dict) -> int | None:
    head = state.get("head.weight")
    return int(head.shape[0]) if head is not None and head.ndim == 2 else None


def model(name: str, num_classes: int | None = None, weights: str | Path | None = None, *, seed: int | None = 0,
          device: str = "cpu", **options) -> nn.Module:
    """The registered architecture ``name`` (``"small-cnn"``, ``"wrn-28-10"``, ``"timm/resnet18"``)
    built with ``options`` (its config's fields: ``rtk.options(name)``), in eval mode on ``device``
    (default ``"cpu"``). It follows rtk's model contract: images in [0, 1] in, logits out, the
    normalisation inside, and ``features``, ``head``, ``blocks``.

    ``weights``: a safetensors or tensor-only torch file loaded strictly (never unpickled); default
    None, the initialisation. ``num_classes``: the head's outputs (default: read from the weights'
    ``head.weight``; required without weights). ``seed`` (default 0) seeds the initialisation as a
    run seeds it, leaving the caller's random state alone; None draws from torch's global RNG.

    Example::

        >>> net = rtk.model("small-cnn", num_classes=5, weights="digits.safetensors", channels=[8, 16])
        >>> net(images).shape                                    # images (N, 1, 8, 8) in [0, 1]
        torch.Size([N, 5])
    """
    from rtk.models import load_weights, read_state_dict
    from rtk.stages.context import resolve_device

    component, variant = _resolve("model", name, "model")
    config = _config(component, options, f'model "{name}"')
    state = read_state_dict(weights) if weights is not None else None
    if num_classes is None:
        num_classes = _head_rows(state) if state is not None else None
        if num_classes is None:
            where = f"the weights {weights} have no 2-d head.weight" if state is not None else "no weights are given"
            raise RtkError(f'model "{name}": pass num_classes ({where} to read the class count from)')
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise RtkError(f'model "{name}": num_classes: expected a positive integer, got {num_classes!r}')
    with _seeded(seed):
        net = component.factory(config, num_classes=num_classes, **({"variant": variant} if variant else {}))
    if state is not None:
        load_weights(net, weights, state=state)
    return net.to(resolve_device(device)).eval()


# ----------------------------------------------------------------------------- the source store


def _store(store: str | Path | SourceStore | None) -> SourceStore:
    from rtk.services.store import SourceStore

    return store if isinstance(store, SourceStore) else SourceStore(store)


def _summary(entry: Entry) -> dict:
    info = entry.info
    return {"key": entry.key, "model": info.get("model"), "data": info.get("data"), "objective": info.get("objective"),
            "clean": info.get("clean"), "num_classes": info.get("num_classes"), "created": info.get("created"),
            "path": str(entry.path), "corrupt": info.get("_problem")}


def sources(store: str | Path | SourceStore | None = None) -> list[dict]:
    """The entries of the source store (``store``: a folder or rtk.services.store.SourceStore; default
    ``$RTK_HOME``, else ``~/.cache/rtk``), oldest first, as ``rtk sources`` lists them: dicts with
    key, model, data, objective, clean, num_classes, created, path and corrupt (why the entry's
    info.json is unreadable, else None). Listing does not hash the weights; ``source(key)`` does.

    Example::

        >>> [s["key"] for s in rtk.sources() if s["objective"] == "pgd-at"]
        ['5009383294552c87']
    """
    return [_summary(e) for e in _store(store).entries()]


def _described(entries: list[Entry], limit: int = 5) -> str:
    shown = ", ".join(f"{e.key} ({e.info.get('model', '?')} on {e.info.get('data', '?')},"
                      f" {e.info.get('objective', '?')})" for e in entries[:limit])
    return shown + (f" and {len(entries) - limit} more" if len(entries) > limit else "")


def _find(store: SourceStore, prefix: str | None, where: dict) -> Entry:
    """The one entry whose key is ``prefix`` or starts with it and whose info matches ``where``."""
    entries = store.entries()
    if prefix is not None:
        if not isinstance(prefix, str) or not prefix:
            raise RtkError(f"source: expected a key or a prefix of one (a string), got {prefix!r}")
        exact = [e for e in entries if e.key == prefix]
        entries = exact or [e for e in entries if e.key.startswith(prefix)]
    entries = [e for e in entries if all(e.info.get(k) == v or str(e.info.get(k)) == str(v) for k, v in where.items())]
    asked = ", ".join([*([f'"{prefix}"'] if prefix else []), *(f"{k}={v!r}" for k, v in where.items())])
    asked = asked or "no key and no filter"
    if len(entries) == 1:
        return entries[0]
    if len(entries) > 1:
        raise RtkError(f"source: {asked} matches {len(entries)} sources: {_described(entries)}; give more of the key")
    every = store.entries()
    known = f"its sources: {_described(every)}" if every else "it is empty (rtk run RECIPE trains sources into it)"
    raise RtkError(f"source: no source matches {asked} in the store {store.root}; {known}")


def _builder(identity: dict, num_classes: int):
    """The untrained network of a stored source, built as the run that reuses it builds it."""
    registry = _registry()

    def build_model(num_classes: int):
        found = identity.get("model")
        component, variant = registry.resolve("model", found["name"])
        # A file option is recorded by its content's hash: the stored weights replace whatever it held.
        kept = {k: v for k, v in found["options"].items() if not (isinstance(v, dict) and set(v) == {"sha256"})}
        config = _config(component, kept, f'source model "{found["name"]}"')
        return component.factory(config, num_classes=num_classes, **({"variant": variant} if variant else {}))

    imported = identity.get("import")
    if imported is None:
        return lambda: build_model(num_classes)
    component, variant = registry.resolve("importer", imported["format"])
    importer = component.factory(_config(component, imported.get("options") or {}, "source import"),
                                 **({"variant": variant} if variant else {}))
    return lambda: importer.build(build_model if identity.get("model") else None, num_classes)


def source(key_or_prefix: str | None = None, *, store: str | Path | SourceStore | None = None, device: str = "cpu",
           **where) -> nn.Module:
    """A source model from the source store, loaded as a run that reuses it loads it: the weights'
    sha256 checked against info.json (a corrupt entry raises an error naming ``rtk sources rm
    KEY``), the architecture rebuilt from the entry's recorded identity, the weights loaded
    strictly. In eval mode on ``device`` (default ``"cpu"``), with the entry's info.json as
    ``model.rtk_info`` (``key``, ``path``, ``model``, ``data``, ``objective``, ``clean``, ...).

    ``key_or_prefix``: the entry's key or a unique prefix of it; ``where``: info fields the entry
    must have (``model="small-cnn"``, ``objective="pgd-at"``, ``data="digits[0,1,2,3,4]"``); exactly
    one entry must match, else the error lists the candidates. ``store``: a folder or a
    SourceStore (default ``$RTK_HOME``, else ``~/.cache/rtk``).

    Example::

        >>> net = rtk.source("5009383294")                       # a prefix of the key
        >>> net = rtk.source(model="small-cnn", objective="pgd-at")
        >>> net.rtk_info["clean"], net.rtk_info["key"]
        (0.93, '5009383294552c87')
    """
    from rtk.models import load_weights, read_state_dict
    from rtk.services.store import StoreError
    from rtk.stages.context import resolve_device

    where_store = _store(store)
    entry = where_store.get(_find(where_store, key_or_prefix, where).key)  # re-hashes: StoreError when corrupt
    identity = entry.info.get("identity")
    if not isinstance(identity, dict) or ("model" not in identity and "import" not in identity):
        raise StoreError(f"source store entry {entry.key} ({entry.path}): info.json records no identity to rebuild"
                         f" the network from; load its weights with rtk.model(NAME, weights={str(entry.weights)!r})")
    state = read_state_dict(entry.weights)
    num_classes = identity.get("num_classes") or _head_rows(state) or entry.info.get("num_classes")
    if not num_classes:
        raise StoreError(f"source store entry {entry.key}: cannot tell its class count (no num_classes, no"
                         " head.weight)")
    with _seeded(identity.get("seed", 0)):
        net = _builder(identity, int(num_classes))()
    load_weights(net, entry.weights, state=state)
    net.rtk_info = {**entry.info, "key": entry.key, "path": str(entry.path)}
    return net.to(resolve_device(device)).eval()


# ----------------------------------------------------------------------------- the registry's listing


@dataclass
class ComponentInfo:
    """One registered component: ``kind`` ("attack", "model", ...), ``name``, the ``plugin`` that
    registers it (with its ``distribution`` and ``version``), its one-line ``summary`` and its
    ``options``: one dict per config field (name, type, default, min, max, help).

    Example::

        >>> info = next(c for c in rtk.components("attack") if c.name == "pgd")
        >>> info.plugin, [option["name"] for option in info.options][:3]
        ('rtk_plugins.attacks', ['norm', 'eps', 'steps'])
    """

    kind: str
    name: str
    plugin: str
    summary: str
    distribution: str = ""
    version: str = ""
    options: list[dict] = field(default_factory=list, repr=False)


def _info(component) -> ComponentInfo:
    from rtk.config.fields import describe

    plugin = component.plugin
    return ComponentInfo(component.kind, component.name, plugin.name, component.summary, plugin.distribution,
                         plugin.version, describe(component.config))


def components(kind: str | None = None) -> list[ComponentInfo]:
    """Every registered component, or those of ``kind`` (``"model"``, ``"dataset"``, ``"attack"``,
    ``"objective"``, ``"strategy"``, ``"certifier"``, ``"importer"``, ``"tracker"``; default None:
    all), sorted by kind and name, as ``rtk list-plugins`` lists them.

    Example::

        >>> [c.name for c in rtk.components("certifier")]
        ['cohen']
        >>> {c.name: c.plugin for c in rtk.components("attack")}["pgd"]
        'rtk_plugins.attacks'
    """
    from rtk.registry import KINDS

    if kind is not None and kind not in KINDS:
        raise RtkError(f'components: unknown kind "{kind}"; kinds: {", ".join(KINDS)}')
    return [_info(c) for c in _registry().all() if kind is None or c.kind == kind]


def options(name: str, kind: str | None = None) -> list[dict]:
    """The options of component ``name`` (``kind`` picks one where two kinds share the name):
    one dict per config field, with name, type, default, min, max and help, as ``rtk list-plugins
    --options NAME`` shows them. A ``prefix/*`` component answers for its variants
    (``"timm/resnet18"``).

    Example::

        >>> {o["name"]: o["default"] for o in rtk.options("pgd")}["steps"]
        20
    """
    import difflib

    from rtk.config.fields import describe
    from rtk.registry import KINDS

    if kind is not None and kind not in KINDS:
        raise RtkError(f'options: unknown kind "{kind}"; kinds: {", ".join(KINDS)}')
    registry = _registry()
    kinds = list(KINDS) if kind is None else [kind]
    matches = []
    for k in kinds:
        with contextlib.suppress(UnknownComponentError):
            matches.append(registry.resolve(k, name)[0])
    if not matches:
        names = sorted({c.name for c in registry.all() if c.kind in kinds})
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise UnknownComponentError(f'options: no component named "{name}"; {hint}rtk.components() lists them')
    if len(matches) > 1:
        kinds = " and as ".join(f"an {c.kind}" if c.kind[0] in "aeio" else f"a {c.kind}" for c in matches)
        raise RtkError(f'options: "{name}" is registered as {kinds}; pick one with kind="{matches[0].kind}"')
    return describe(matches[0].config)
