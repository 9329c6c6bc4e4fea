"""Experiment trackers: where a run's parameters, curves and results go besides its folder.

A tracker is a component (``register_trackers`` hook, kind ``tracker``) chosen with ``rtk run
--tracker NAME`` (repeatable) or ``[run] trackers = ["tensorboard", {name = "mlflow", experiment =
"rtk"}]``. Its factory gets its config and ``out_dir`` (the run folder) and returns a
:class:`Tracker`; the Runner calls it, on rank 0 only, in this order:

1. ``start(info)``: the run begins (``info``: name, recipe, profile, out_dir, points);
2. ``log_params(params)``: the resolved recipe flattened to dotted keys (``transfer.lambda_d``),
   values str/int/float/bool (lists as their TOML text);
3. ``log_metrics(metrics, step, stage)``: each record of metrics.jsonl (per epoch, and every
   ``[run] log_every`` steps of long epochs): ``stage`` names the training (``"source/<key>"`` or
   ``"transfer/<point id>"``), ``step`` the optimizer step, ``metrics`` the numbers (loss, lr,
   clean_acc, val_robust_acc, examples_per_s, ...);
4. ``log_results(results)``: after every point, its final numbers flattened as
   ``"<point id>/<metric>"``; at the end also the seed summaries (``"<point>/<metric>/mean"``);
5. ``log_artifact(path)``: results.json, results.csv, metrics.jsonl, plot.png, recipe.resolved.toml;
6. ``finish(status)``: ``"finished"`` or ``"failed"``.

A tracker that raises is warned about once and dropped; the run goes on (its folder holds everything).
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

# The pip extra of rtk that installs each built-in tracker's library; none for MLflow, installed after
# rtk with `pip install mlflow` (pyproject.toml says why).
TRACKER_EXTRAS = {"tensorboard": "tensorboard", "mlflow": None, "wandb": "wandb"}


class Tracker:
    """Base class of trackers: every method is optional (a no-op here)."""

    def start(self, info: dict[str, Any]) -> None:
        pass

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int, stage: str) -> None:
        pass

    def log_results(self, results: dict[str, float]) -> None:
        pass

    def log_artifact(self, path: Path) -> None:
        pass

    def finish(self, status: str = "finished") -> None:
        pass


def flatten(table: Any, prefix: str = "") -> dict[str, Any]:
    """A nested recipe as ``{"dotted.key": scalar}``; lists of scalars become their TOML text,
    lists of tables are numbered (``eval.attacks.0.eps``)."""
    flat: dict[str, Any] = {}
    if isinstance(table, dict):
        for key, value in table.items():
            flat.update(flatten(value, f"{prefix}{key}."))
    elif isinstance(table, list) and any(isinstance(v, (dict, list)) for v in table):
        for i, value in enumerate(table):
            flat.update(flatten(value, f"{prefix}{i}."))
    elif isinstance(table, list):
        flat[prefix[:-1]] = "[" + ", ".join(repr(v) if isinstance(v, str) else str(v) for v in table) + "]"
    elif table is not None:
        flat[prefix[:-1]] = table
    return flat


def numbers(values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of ``values`` (booleans and strings left out)."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class Trackers:
    """The trackers of one run, called together; one that fails is warned about and dropped."""

    def __init__(self, trackers: list[tuple[str, Tracker]], warn=None):
        self.trackers = list(trackers)
        self.warn = warn or (lambda message: None)

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def _each(self, method: str, *args) -> None:
        for name, tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # a tracker must not lose the run: its folder holds everything
                self.warn(f"tracker {name}: {method} failed ({type(exc).__name__}: {exc}); it is dropped for the"
                          " rest of the run")
                self.trackers.remove((name, tracker))

    def start(self, info: dict) -> None:
        self._each("start", info)

    def log_params(self, params: dict) -> None:
        self._each("log_params", params)

    def log_metrics(self, metrics: dict, step: int, stage: str) -> None:
        values = numbers(metrics)
        if values:
            self._each("log_metrics", values, int(step), stage)

    def log_results(self, results: dict) -> None:
        values = numbers(results)
        if values:
            self._each("log_results", values)

    def log_artifact(self, path: Path) -> None:
        if Path(path).is_file():
            self._each("log_artifact", Path(path))

    def finish(self, status: str = "finished") -> None:
        self._each("finish", status)
        self.trackers.clear()


def tracker_tables(value: Any, origin: str = "[run] trackers") -> list[dict]:
    """``[run] trackers`` as tables ``{"name": ..., options...}``: a name alone is a table without options."""
    from rtk.errors import RecipeError

    if value is None:
        return []
    if not isinstance(value, list):
        raise RecipeError(f'{origin}: expected a list of tracker names or tables, e.g. ["tensorboard", "mlflow"]')
    tables = []
    for item in value:
        if isinstance(item, str):
            tables.append({"name": item})
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            tables.append(dict(item))
        else:
            raise RecipeError(f'{origin}: {item!r} is neither a tracker name nor a table with a name,'
                              ' e.g. {name = "mlflow", experiment = "rtk"}')
    return tables


def tracker_specs(recipe_specs: list, names: tuple[str, ...] | list[str], registry) -> list:
    """The trackers of a run: ``[run] trackers`` of the recipe, then those named on the command line
    (``--tracker NAME``; one already in the recipe is not added twice), each checked now: an unknown
    name or a tracker whose library is missing stops the run before it starts."""
    import importlib.util

    from rtk.config.spec import ComponentSpec
    from rtk.errors import RtkError, UnknownComponentError

    specs = list(recipe_specs)
    for name in names:
        if any(spec.name == name for spec in specs):
            continue
        try:
            component, variant = registry.resolve("tracker", name)
        except UnknownComponentError as exc:
            raise RtkError(f"--tracker {name}: {exc}") from None
        specs.append(ComponentSpec(component, component.config(), variant, "--tracker"))
    for spec in specs:
        module = spec.component.trait("requires")
        if module and importlib.util.find_spec(module) is None:
            extra = spec.component.trait("extra")
            how = f'pip install "rtk[{extra}]"' if extra else f"pip install {module}"
            raise RtkError(f'tracker "{spec.name}" needs the {module} package, which is not installed: {how}')
    return specs


def start_trackers(specs: list, out_dir: Path, run_name: str, warn) -> Trackers:
    """Build the trackers (each factory gets its config, the run folder and the run name)."""
    return Trackers([(spec.name, spec.build(out_dir=Path(out_dir), run_name=run_name)) for spec in specs], warn)


def point_results(run: dict) -> dict[str, float]:
    """A finished point's numbers for the trackers: ``"<point id>/<metric>"``."""
    from rtk.services.results import run_metrics

    return {f"{run['id']}/{name}": value for name, value in numbers(run_metrics(run)).items()}


def summary_results(summary: list[dict]) -> dict[str, float]:
    """The seed summaries of results.json: ``"<point>/<metric>/mean"`` and ``/std``."""
    flat = {}
    for entry in summary or []:
        for name, stats in (entry.get("metrics") or {}).items():
            for what in ("mean", "std"):
                if isinstance(stats, dict) and stats.get(what) is not None:
                    flat[f"{entry.get('point')}/{name}/{what}"] = stats[what]
    return flat


ARTEFACTS = ("results.json", "results.csv", "metrics.jsonl", "plot.png", "recipe.resolved.toml")


@contextlib.contextmanager
def tracked(trackers: Trackers, specs: list, recipe, out_dir: Path, points: list[str], warn):
    """Start ``specs``' trackers into ``trackers`` (the dispatcher the run's metrics log already
    holds) with the run's info and flattened recipe; on leaving, the seed summaries of
    results.json and the artefacts, then ``finish``; ``finish("failed")`` when the block raises."""
    name = str(recipe.raw.get("run", {}).get("name", recipe.path.stem))
    trackers.trackers[:] = start_trackers(specs, out_dir, name, warn).trackers
    trackers.warn = warn
    trackers.start({"name": name, "recipe": str(recipe.path), "profile": recipe.profile,
                    "overrides": recipe.overrides, "out_dir": str(out_dir), "points": points})
    trackers.log_params(flatten(recipe.raw))
    try:
        yield trackers
    except BaseException:
        trackers.finish("failed")
        raise
    results = Path(out_dir) / "results.json"
    if results.is_file():
        with contextlib.suppress(OSError, ValueError):
            trackers.log_results(summary_results(json.loads(results.read_text("utf-8")).get("summary")))
    for artefact in ARTEFACTS:
        trackers.log_artifact(Path(out_dir) / artefact)
    trackers.finish("finished")
