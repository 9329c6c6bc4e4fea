"""Components collected from the plugins' ``register_*`` hooks, looked up by kind and name."""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Callable

from rtk.errors import PluginError, UnknownComponentError
from rtk.plugins import PluginInfo, load_plugins

# kind -> (hook name, human name)
KINDS: dict[str, tuple[str, str]] = {
    "model": ("register_source_models", "source model"),
    "dataset": ("register_datasets", "dataset"),
    "attack": ("register_attacks", "attack"),
    "objective": ("register_objectives", "objective"),
    "strategy": ("register_transfer_strategies", "transfer strategy"),
    "certifier": ("register_certifiers", "certifier"),
    "importer": ("register_importers", "checkpoint importer"),
    "tracker": ("register_trackers", "tracker"),
}


# What a component of each kind may declare when it registers, with the defaults.
TRAITS: dict[str, dict[str, Any]] = {
    "model": {},
    # The published size of the dataset: (training images, classes); the plan of a dry run shows
    # it when the files are not on this machine yet.
    "dataset": {"sizes": None},
    "attack": {
        # The config fields the sanity checks may change, by role: {"eps": field, "steps": field,
        # "restarts": field}. A role left out is never varied (its check is skipped).
        "sanity_fields": {},
        # A score-based attack without gradients: the reference the white-box attacks are compared with.
        "black_box": False,
    },
    "objective": {},
    # Whether the importer builds the network itself ("module:factory" models, RobustBench), so
    # that [source] model is not needed; whether it downloads its own file (RobustBench), so that
    # [source.import] may name no path, url or hub (its downloads go to ``importer.downloads``).
    "importer": {"builds_model": False, "fetches_itself": False},
    # Whether the strategy trains with [transfer.objective]; rtk validate rejects one it would ignore.
    "strategy": {"takes_objective": False},
    "certifier": {},
    # The module a tracker imports and the pip extra of rtk that installs it (checked before a run starts).
    "tracker": {"requires": None, "extra": None},
}


@dataclass(frozen=True)
class EmptyConfig:
    """A component without options."""


def load_factory(target: str) -> Callable[..., Any]:
    """The callable that ``"package.module:Name"`` names, imported now (not when it was registered)."""
    module_name, _, attribute = target.partition(":")
    try:
        value = importlib.import_module(module_name)
        for part in attribute.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f'cannot import the factory "{target}": {exc}') from None
    return value


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    target: Callable[..., Any] | str  # a factory, or "package.module:Name" imported when first built
    config: type
    summary: str
    plugin: PluginInfo
    traits: dict = dataclasses.field(default_factory=dict)

    @property
    def factory(self) -> Callable[..., Any]:
        """The factory; a lazy ``"package.module:Name"`` is imported here, so listing and
        validating recipes import none of the plugins' heavy code."""
        return load_factory(self.target) if isinstance(self.target, str) else self.target

    def trait(self, name: str):
        """What the component declared when it registered (``TRAITS`` lists each kind's)."""
        return self.traits.get(name, TRAITS[self.kind][name])

    @property
    def wildcard(self) -> bool:
        return self.name.endswith("/*")

    @property
    def human_kind(self) -> str:
        return KINDS[self.kind][1]

    @property
    def provider(self) -> str:
        return f"{self.plugin.name} ({self.plugin.distribution} {self.plugin.version})"

    def describe(self) -> str:
        """How errors name the component: kind, name and the plugin that provides it."""
        return f'{self.human_kind} "{self.name}" (plugin {self.provider})'


class Registry:
    """Every component of every loaded plugin, by kind and name."""

    def __init__(self, pm, infos: dict[str, PluginInfo]):
        self.pm = pm
        self.infos = infos
        self.components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        for kind, (hook_name, _) in KINDS.items():
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                info = infos.get(impl.plugin_name, PluginInfo(impl.plugin_name, "?", "?"))
                impl.function(register=self._register_callback(kind, info))

    def _register_callback(self, kind: str, info: PluginInfo):
        def register(name: str, factory, config: type | None = None, summary: str = "", replace: bool = False,
                     **traits):
            if not isinstance(name, str) or not name:
                raise PluginError(f'plugin "{info.name}" registered a {KINDS[kind][1]} without a name')
            unknown = sorted(set(traits) - set(TRAITS[kind]))
            if unknown:
                valid = ", ".join(TRAITS[kind]) or "none"
                raise PluginError(f'plugin "{info.name}": {KINDS[kind][1]} "{name}" declares {", ".join(unknown)};'
                                  f" {KINDS[kind][1]} components may declare: {valid}")
            if isinstance(factory, str) and ":" not in factory:
                raise PluginError(f'plugin "{info.name}": factory of {KINDS[kind][1]} "{name}" must be a callable or'
                                  f' "package.module:Name", got "{factory}"')
            config = config or EmptyConfig
            if not dataclasses.is_dataclass(config):
                raise PluginError(f'plugin "{info.name}": config of {KINDS[kind][1]} "{name}" must be a dataclass')
            existing = self.components[kind].get(name)
            if existing is not None and not replace:
                raise PluginError(
                    f'{KINDS[kind][1]} "{name}" is registered twice: by {existing.provider} and by'
                    f" {info.name} ({info.distribution} {info.version}); rename one, pass replace=True"
                    " in the plugin that should win, or disable one with RTK_DISABLE_PLUGINS"
                )
            doc = "" if isinstance(factory, str) else factory.__doc__ or ""
            summary_line = (summary or doc).strip().splitlines()
            self.components[kind][name] = Component(kind, name, factory, config,
                                                    summary_line[0] if summary_line else "", info, traits)

        return register

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def all(self) -> list[Component]:
        return [c for kind in KINDS for _, c in sorted(self.components[kind].items())]

    def resolve(self, kind: str, name: str) -> tuple[Component, str | None]:
        """The component called ``name`` and, for ``prefix/*`` components, the variant."""
        table = self.components[kind]
        if name in table:
            return table[name], None
        prefix, sep, variant = name.partition("/")
        if sep and variant and f"{prefix}/*" in table:
            return table[f"{prefix}/*"], variant
        close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise UnknownComponentError(
            f'unknown {KINDS[kind][1]} "{name}"; {hint}run `rtk list-plugins --kind {kind}` to see all'
            f" ({len(table)} available)"
        )

    def get(self, kind: str, name: str) -> Component:
        return self.resolve(kind, name)[0]

    def factory(self, kind: str, name: str, options: dict | None = None, **kwargs) -> Callable[[], Any]:
        """A callable that builds the component ``name`` of ``kind`` from ``options`` (a recipe
        table's keys, checked now against its config, as a recipe is), its variant too for
        ``prefix/*`` components; ``kwargs`` go to the factory (a model's ``num_classes``)."""
        from rtk.config.fields import build_config

        component, variant = self.resolve(kind, name)
        config = build_config(component.config, options or {})
        variant_kwargs = {"variant": variant} if variant is not None else {}
        return lambda: component.factory(config, **kwargs, **variant_kwargs)

    def build(self, kind: str, name: str, options: dict | None = None, **kwargs):
        """The component ``name`` of ``kind`` built from ``options`` (see ``factory``)."""
        return self.factory(kind, name, options, **kwargs)()

    def find_any_kind(self, name: str) -> list[Component]:
        return [c for kind in KINDS for n, c in self.components[kind].items() if n == name]


_default: Registry | None = None


def default_registry() -> Registry:
    """The registry of all installed plugins, loaded once per process."""
    global _default
    if _default is None:
        _default = Registry(*load_plugins())
    return _default


@contextlib.contextmanager
def using(registry: Registry):
    """Make ``registry`` the default within the block (hermetic tests, embedding)."""
    global _default
    previous, _default = _default, registry
    try:
        yield registry
    finally:
        _default = previous


def registry_with(*plugins, entry_points: bool = True) -> Registry:
    """A registry of the installed plugins plus the given plugin objects (modules or classes)."""
    extra = []
    for plugin in plugins:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        extra.append((plugin, PluginInfo(name, "(test)", "0")))
    return Registry(*load_plugins(extra, entry_points=entry_points))
