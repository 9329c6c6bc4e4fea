"""Recipes from Python: ``rtk.load_recipe`` and ``rtk.run`` (what ``rtk validate`` and ``rtk run`` call),
and ``rtk.Results`` (a run folder's results.json).

Nothing here imports torch until a recipe runs.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:
    from rtk.config.recipe import Recipe
    from rtk.stages.runner import Runner

__all__ = ["load_recipe", "run", "Results"]


def _overrides(values: Mapping[str, Any] | Iterable[str] | None) -> list[str]:
    """``--set`` strings from a dict of Python values (``{"transfer.lambda_d": 0.01}``) or
    "KEY=VALUE" strings; a value is written as TOML, so it parses back to itself."""
    from rtk.config.selection import inline

    if values is None:
        return []
    if isinstance(values, Mapping):
        return [f"{key}={inline(value)}" for key, value in values.items()]
    if isinstance(values, str):
        return [values]
    return [str(item) for item in values]


def load_recipe(path: str | Path, set: Mapping[str, Any] | Iterable[str] | None = None,  # noqa: A002 (as --set)
                profile: str | None = None, *, validate: bool = True) -> "Recipe":
    """Read the recipe at ``path``, apply ``[profile.NAME]`` and the ``set`` overrides (dotted keys,
    as ``rtk run --set``) and validate every sweep point against the installed plugins.

    Raises ``rtk.errors.RtkError`` (one line naming the file, table and key) on any problem.
    ``validate=False`` skips checking the components (faster; ``rtk.run`` checks them anyway).

    Example::

        recipe = rtk.load_recipe("recipes/quickstart.toml", set={"run.seeds": [0, 1, 2]}, profile="smoke")
        recipe.points()   # one entry per sweep point and seed
    """
    from rtk.config.recipe import load_recipe as read

    recipe = read(path, profile, _overrides(set))
    if validate:  # every sweep point against the registry, and its [paper] rows
        from rtk.config.spec import resolve
        from rtk.registry import default_registry

        resolve(recipe, default_registry())
    return recipe


def _with(recipe: "Recipe", overrides: list[str]) -> "Recipe":
    """``recipe`` with more ``--set`` overrides applied (a copy)."""
    import dataclasses

    from rtk.config.recipe import apply_overrides

    raw = copy.deepcopy(recipe.raw)
    apply_overrides(raw, overrides)
    return dataclasses.replace(recipe, raw=raw, overrides=[*recipe.overrides, *overrides])


def prepare(recipe: "Recipe | str | Path", out: str | Path | None = None, *, seeds: Iterable[int] | None = None,
            trackers: Iterable[str] = (), store: str | Path | None = None, resume: bool = False,
            overwrite: bool = False, deterministic: bool = False, download: bool = False,
            shard: tuple[int, int] | None = None, sources_only: bool = False,
            source: tuple[int, int] | None = None, progress: bool = True, console=None, registry=None) -> "Runner":
    """The Runner of ``rtk.run`` (and ``rtk run``), validated and ready; nothing has run yet."""
    from rtk.registry import default_registry
    from rtk.services.store import SourceStore
    from rtk.stages.runner import Runner

    if not hasattr(recipe, "raw"):
        recipe = load_recipe(recipe, validate=False)
    if seeds is not None:
        recipe = _with(recipe, [f"run.seeds=[{', '.join(str(int(s)) for s in seeds)}]"])
    if resume and out is None:
        from rtk.errors import RtkError

        raise RtkError("resume needs out, the folder of the interrupted run")
    return Runner(recipe, registry or default_registry(), Path(out) if out is not None else None,
                  show_progress=progress, console=console, overwrite=overwrite, resume=resume,
                  deterministic=deterministic, store=SourceStore(Path(store) if store is not None else None),
                  download=download, shard=shard, sources_only=sources_only, source=source,
                  trackers=tuple(trackers))


def run(recipe: "Recipe | str | Path", out: str | Path | None = None, *, seeds: Iterable[int] | None = None,
        trackers: Iterable[str] = (), store: str | Path | None = None, resume: bool = False, overwrite: bool = False,
        deterministic: bool = False, download: bool = False, quiet: bool = False) -> "Results":
    """Run a recipe (every sweep point, each seed) as ``rtk run`` does, and return its results.

    ``recipe``: from :func:`load_recipe`, or a path. ``out``: the run folder (default
    ``runs/NAME-TIMESTAMP``); it receives results.json, results.csv, metrics.jsonl, plot.png and the
    checkpoints, exactly as ``rtk run --out`` writes them. ``seeds`` as ``--seeds``, ``trackers`` as
    ``--tracker`` (e.g. ``["tensorboard"]``), ``store`` as ``--store`` (default ``$RTK_HOME``),
    ``quiet=True`` prints nothing (else the plan and progress go to stderr).

    Example::

        results = rtk.run(rtk.load_recipe("recipes/quickstart.toml", profile="smoke"), out="runs/qs")
        results.table()          # the table rtk run prints
        results.to_pandas()      # one row per run (pandas installed)
    """
    from rich.console import Console

    console = Console(stderr=True, quiet=quiet)
    runner = prepare(recipe, out, seeds=seeds, trackers=trackers, store=store, resume=resume, overwrite=overwrite,
                     deterministic=deterministic, download=download, progress=not quiet, console=console)
    payload = runner.run()
    results = runner.out_dir / "results.json"
    return Results.load(runner.out_dir) if results.is_file() else Results(runner.out_dir, payload)


class Results:
    """A run's results (its results.json): ``runs`` (one dict per sweep point and seed: id, params,
    metrics, intervals, paper...), ``summary`` (per point: mean, std and 95% interval of each metric
    over the seeds), ``out_dir``.

    Example::

        results = rtk.Results.load("runs/quickstart-20261204-070000")
        results.metric("robust")     # {run id: value}
        results.to_pandas()
    """

    def __init__(self, out_dir: Path | None, payload: dict):
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.payload = payload

    @classmethod
    def load(cls, run_dir: str | Path) -> "Results":
        """The results of the run folder ``run_dir`` (its results.json)."""
        from rtk.errors import RtkError

        path = Path(run_dir) / "results.json"
        try:
            return cls(Path(run_dir), json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise RtkError(f"{run_dir} has no results.json; give the folder of a finished rtk run") from None
        except (OSError, ValueError) as exc:
            raise RtkError(f"cannot read {path}: {exc}") from None

    @property
    def runs(self) -> list[dict]:
        return list(self.payload.get("runs", []))

    @property
    def summary(self) -> list[dict]:
        if "summary" in self.payload:
            return list(self.payload["summary"])
        from rtk.services.stats import summarize

        return summarize(self.runs)

    @property
    def name(self) -> str:
        return str(self.payload.get("recipe", "results"))

    def metric(self, name: str) -> dict[str, float | None]:
        """``{run id: value}`` of one metric (``"clean"``, an attack's label, ``"robust"``, ``"acr"``...)."""
        from rtk.services.results import run_metrics

        return {run["id"]: run_metrics(run).get(name) for run in self.runs}

    def rows(self) -> list[dict]:
        """One flat dict per run: id, seed, the swept parameters, then every metric."""
        from rtk.services.results import run_metrics

        rows = []
        for run in self.runs:
            row = {"id": run["id"]}
            if "point" in run:
                row.update(point=run["point"], seed=run.get("seed"))
            for key, value in run.get("params", {}).items():
                row[key] = json.dumps(value) if isinstance(value, (dict, list)) else value
            row.update(run_metrics(run))
            rows.append(row)
        return rows

    def to_pandas(self):
        """``rows()`` as a pandas DataFrame (needs pandas: ``pip install pandas``)."""
        try:
            import pandas
        except ImportError:
            from rtk.errors import RtkError

            raise RtkError('to_pandas() needs pandas, which is not installed: pip install "rtk[pandas]"') from None
        return pandas.DataFrame(self.rows())

    def table(self):
        """The results table ``rtk run`` prints (a rich Table; display it or ``rich.print`` it)."""
        from rtk.services.results import results_table

        return results_table(self.runs, title=self.name)

    def __repr__(self) -> str:
        import io

        from rich.console import Console

        console = Console(width=100, file=io.StringIO())
        console.print(self.table())
        return console.file.getvalue()

    def __len__(self) -> int:
        return len(self.runs)
