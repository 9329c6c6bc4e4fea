"""Resolve a recipe's sweep point into components with validated configs (a RunSpec).

Every error names the recipe file, the table and key, the component and its plugin, and the
valid choices, so that ``rtk validate`` can point at the exact line to fix.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtk.config.fields import ConfigValueError, build_config
from rtk.errors import RecipeError, UnknownComponentError
from rtk.config.recipe import Recipe, SweepPoint, paper_for
from rtk.registry import KINDS, Component, Registry
from rtk.config.schema import EvalConfig, RunConfig, TrainConfig


@dataclass
class ComponentSpec:
    component: Component
    config: Any
    variant: str | None
    table: str
    label: str = ""

    @property
    def name(self) -> str:
        return self.component.name if self.variant is None else f"{self.component.name[:-1]}{self.variant}"

    def build(self, **kwargs):
        if self.variant is not None:
            kwargs["variant"] = self.variant
        return self.component.factory(self.config, **kwargs)


@dataclass
class SourceSpec:
    model: ComponentSpec | None  # None: the importer builds the network ([source.import], builds_model)
    weights: Path | None = None
    num_classes: int | None = None
    data: ComponentSpec | None = None
    train: TrainConfig | None = None
    objective: ComponentSpec | None = None
    # The [run] seed and training autocast of the recipe that defines the source (another recipe's,
    # for a source selected from it): they change its weights, so they are part of its store key.
    seed: int = 0
    amp: str = "off"
    origin: str | None = None  # "RECIPE (sweep point id)" for a source selected from another recipe
    imported: Any = None  # [source.import]: an rtk.importing.ImportSpec

    @property
    def trained(self) -> bool:
        """Trained here on [source.data] (and kept in the source store)."""
        return self.data is not None


@dataclass
class RunSpec:
    id: str
    params: dict[str, Any]
    raw: dict
    run: RunConfig
    source: SourceSpec
    target: ComponentSpec | None
    transfer: ComponentSpec | None
    transfer_objective: ComponentSpec | None
    eval: EvalConfig
    attacks: list[ComponentSpec] = field(default_factory=list)
    certify: ComponentSpec | None = None
    cases: list[str] = field(default_factory=list)  # the ids of the point's [[sweep.cases]]
    group: str | None = None  # with [run] seeds: the point id its seeds share (rtk.config.recipe.SweepPoint)
    trackers: list[ComponentSpec] = field(default_factory=list)  # [run] trackers (rtk.tracking)


class Resolver:
    def __init__(self, recipe: Recipe, registry: Registry, chain: tuple[Path, ...] = ()):
        from rtk.config.selection import Selection

        self.recipe = recipe
        self.registry = registry
        self.selection = Selection(self, chain)

    def fail(self, table: str, message: str) -> RecipeError:
        return self.recipe.error(table, message)

    def table(self, raw: dict, key: str, required: bool = False) -> dict | None:
        value = raw.get(key)
        if value is None:
            if required:
                raise self.fail(key, "is missing")
            return None
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, got {type(value).__name__}")
        return value

    def plain(self, cls, table: dict | None, name: str, also_valid=()):
        try:
            return self._fix_paths(build_config(cls, table or {}, also_valid))
        except ConfigValueError as exc:
            prefix = f"{exc.key}: " if exc.key and "unknown key" not in str(exc) else ""
            raise self.fail(name, f"{prefix}{exc}") from None

    def component(self, kind: str, table: dict, name: str, selector: str, reserved=()) -> ComponentSpec:
        if selector not in table:
            raise self.fail(name, f'missing key "{selector}": the {KINDS[kind][1]} to use; choices:'
                                  f' {", ".join(self.registry.names(kind))}')
        chosen = table[selector]
        if not isinstance(chosen, str):
            raise self.fail(name, f"{selector}: expected the name of a {KINDS[kind][1]} (a string), got {chosen!r}")
        try:
            component, variant = self.registry.resolve(kind, chosen)
        except UnknownComponentError as exc:
            raise self.fail(name, f"{selector}: {exc}") from None
        options = {k: v for k, v in table.items() if k != selector and k not in reserved}
        try:
            config = build_config(component.config, options, (selector, *reserved))
        except ConfigValueError as exc:
            prefix = f"{exc.key}: " if exc.key and "unknown key" not in str(exc) else ""
            raise self.fail(name, f"{prefix}{exc} ({component.describe()})") from None
        label = table.get("label", "") if "label" in reserved else ""
        return ComponentSpec(component, self._fix_paths(config), variant, name, label)

    def _fix_paths(self, config):
        """Resolve relative file and folder options against the recipe's folder."""
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if isinstance(value, str) and value and (f.metadata.get("path") or f.name in ("root", "weights")):
                path = Path(value).expanduser()
                if not path.is_absolute():
                    object.__setattr__(config, f.name, str(self.recipe.folder / path))
        return config

    def source(self, raw: dict, run: RunConfig) -> SourceSpec:
        table = self.table(raw, "source", required=True)
        if "recipe" in table:
            return self.selection.select(table)
        reserved = ("weights", "num_classes", "data", "train", "objective", "label", "import")
        imported = self.imported(table) if "import" in table else None
        if imported is not None and "model" not in table and imported.importer.component.trait("builds_model"):
            model = None  # the importer builds the network itself
        else:
            model = self.component("model", table, "source", "model", reserved)
        spec = SourceSpec(model, seed=run.seed, amp=run.amp, imported=imported)
        if imported is not None and (table.get("data") is not None or table.get("train") is not None):
            raise self.fail("source", "an imported source is not trained here; drop [source.data] and [source.train]"
                                      " (fine-tune it with a [transfer] strategy)")
        weights = table.get("weights")
        if weights is not None:
            if not isinstance(weights, str):
                raise self.fail("source", f"weights: expected a file path (string), got {weights!r}")
            spec.weights = (self.recipe.folder / Path(weights).expanduser())
            if not spec.weights.is_file():
                raise self.fail("source", f"weights: file {spec.weights} does not exist; give a safetensors or torch"
                                          " weights file, or drop weights and add [source.train] to train the source"
                                          " here")
        num_classes = table.get("num_classes")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise self.fail("source", f"num_classes: expected a positive integer, got {num_classes!r}")
        spec.num_classes = num_classes
        data, train = self.table(table, "data"), self.table(table, "train")
        if (data is None) != (train is None):
            raise self.fail("source", "training a source needs both [source.data] (dataset) and [source.train]"
                                      " (epochs, lr, ...); give both or neither")
        if data is not None:
            spec.data = self.component("dataset", data, "source.data", "dataset")
            spec.train = self.plain(TrainConfig, train, "source.train")
            objective = self.table(table, "objective") or {"name": "natural"}
            spec.objective = self.component("objective", objective, "source.objective", "name")
        elif self.table(table, "objective") is not None:
            raise self.fail("source.objective", "has no effect without [source.data] and [source.train]")
        return spec

    def imported(self, table: dict):
        """[source.import]: a published checkpoint (rtk.importing). A ``weights`` file takes its place
        (``--set source.weights=PATH``: the checkpoint converted by hand); None then."""
        from rtk.importing import ImportSpec, parse_import

        found = self.table(table, "import")
        if table.get("weights") is not None:
            return None
        if "format" not in found:
            raise self.fail("source.import", 'missing key "format": the checkpoint importer; choices: '
                                             f'{", ".join(self.registry.names("importer"))}')
        importer = self.component("importer", found, "source.import", "format", ("path", "url", "hub", "sha256",
                                                                                  "revision"))
        try:
            location, options = parse_import(found, self.recipe.folder, importer.component.trait("fetches_itself"))
        except ValueError as exc:
            raise self.fail("source.import", str(exc)) from None
        plain = dataclasses.asdict(importer.config)
        return ImportSpec(importer.name, location["location"], location["where"], location["sha256"],
                          location["revision"], plain, importer)

    def run_config(self, raw: dict) -> RunConfig:
        """[run] without ``trackers`` (resolved by ``trackers``)."""
        table = {k: v for k, v in (self.table(raw, "run") or {}).items() if k != "trackers"}
        return self.plain(RunConfig, table, "run", ("trackers",))

    def trackers(self, raw: dict) -> list[ComponentSpec]:
        """[run] trackers: a list of names or tables ``{name = "mlflow", experiment = "x"}``."""
        from rtk.tracking import tracker_tables

        value = (self.table(raw, "run") or {}).get("trackers")
        tables = tracker_tables(value, f"{self.recipe.path}: [run] trackers")
        specs = [self.component("tracker", table, f"run.trackers.{i}", "name") for i, table in enumerate(tables)]
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise self.fail("run", f"trackers: {names} names a tracker twice; list each once")
        return specs

    def point(self, point: SweepPoint) -> RunSpec:
        raw = point.raw
        run = self.run_config(raw)
        source = self.source(raw, run)
        if point.group is not None and source.origin is not None and source.trained:
            source.seed = run.seed  # --seeds repeats the selected source too: it is trained here, once per seed
        target_table = self.table(raw, "target")
        target = self.component("dataset", target_table, "target", "dataset") if target_table is not None else None
        transfer_table = self.table(raw, "transfer")
        transfer = objective = None
        if transfer_table is not None:
            if target is None:
                raise self.fail("transfer", "needs a [target] dataset to transfer to")
            transfer = self.component("strategy", transfer_table, "transfer", "strategy", ("objective",))
            objective_table = self.table(transfer_table, "objective")
            if objective_table is not None:
                if not transfer.component.trait("takes_objective"):
                    takers = [n for n in self.registry.names("strategy")
                              if self.registry.get("strategy", n).trait("takes_objective")]
                    raise self.fail("transfer.objective", f'strategy "{transfer.name}" does not train with an'
                                    " objective, so it would ignore this table; drop [transfer.objective], or use a"
                                    f' strategy that takes one: {", ".join(takers) or "none installed"}')
                objective = self.component("objective", objective_table, "transfer.objective", "name")
        eval_table = dict(self.table(raw, "eval") or {})
        attack_tables = eval_table.pop("attacks", [])
        if not isinstance(attack_tables, list) or not all(isinstance(t, dict) for t in attack_tables):
            raise self.fail("eval", "attacks must be an array of tables ([[eval.attacks]])")
        evaluation = self.plain(EvalConfig, eval_table, "eval", ("attacks",))
        attacks = [self.component("attack", t, f"eval.attacks.{i}", "name", ("label",))
                   for i, t in enumerate(attack_tables)]
        labels = {}
        for spec in attacks:
            if not isinstance(spec.label, str):
                raise self.fail(spec.table, f"label: expected a string, got {spec.label!r}")
            spec.label = spec.label or spec.name
            if spec.label in ("clean", "robust") or spec.label in labels:
                raise self.fail(spec.table, f'label "{spec.label}" is already used; give each attack a distinct label'
                                            ' (e.g. label = "PGD-20")')
            labels[spec.label] = spec
        certify_table = self.table(raw, "certify")
        certify = (self.component("certifier", certify_table, "certify", "certifier") if certify_table is not None
                   else None)
        if target is None and (attacks or certify):
            raise self.fail("target", "is missing: evaluation and certification need a [target] dataset")
        return RunSpec(point.id, point.params, raw, run, source, target, transfer, objective, evaluation, attacks,
                       certify, point.cases, point.group, self.trackers(raw))


def resolve(recipe: Recipe, registry: Registry) -> list[RunSpec]:
    """Validate every sweep point of ``recipe`` against the registry; return one RunSpec each."""
    resolver = Resolver(recipe, registry)
    specs = [resolver.point(point) for point in recipe.points()]
    for spec in specs:  # a malformed [paper] must fail before training, not when the first run reports
        paper_for(recipe, spec.params, spec.cases)
    return specs
