"""MLflow tracker: a run in an MLflow tracking store, through ``MlflowClient`` (never MLflow's
global active run, so several rtk runs in one process stay apart).

Defaults: tracking_uri = $MLFLOW_TRACKING_URI, else the SQLite store ``sqlite:///OUT/mlflow.db``
(MLflow 3 refuses its plain file store unless MLFLOW_ALLOW_FILE_STORE=true); experiment = the
recipe's run name, created when missing; run_name = the run folder's name. An experiment this
tracker creates in a SQLite store keeps its artifacts beside the database, in
<db folder>/mlflow-artifacts/<run id>/artifacts/ (MLflow's own default, ./mlruns, depends on the
working folder); other stores (a server, Databricks) place them as they are configured to.

What goes where: parameters (the flattened recipe) as params, keys made valid for MLflow
(characters other than letters, digits, ``_ - . space / :`` become ``_``) and values cut at
MLflow's limit; curves as metrics ``<stage>/<metric>`` at the optimizer step; results as metrics
``results/<point>/<metric>``; files as artifacts at the run's artifact root; the end as status
FINISHED or FAILED. View with ``mlflow ui --backend-store-uri sqlite:///OUT/mlflow.db``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from rtk.errors import RtkError
from rtk.tracking import Tracker

# MLflow's limits (mlflow.utils.validation): key length, param value length, entries per log_batch call.
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
_INVALID_KEY_CHARACTERS = re.compile(r"[^\w\-. /:]")
ARTIFACTS_FOLDER = "mlflow-artifacts"


def build_tracker(config, out_dir: Path, run_name: str) -> MlflowTracker:
    """The MLflow tracker of the run in ``out_dir`` (defaults in the module's docstring)."""
    out_dir = Path(out_dir).resolve()
    tracking_uri = config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(out_dir)
    return MlflowTracker(tracking_uri, experiment=config.experiment or run_name,
                         run_name=config.run_name or out_dir.name)


def default_tracking_uri(out_dir: Path) -> str:
    """The SQLite store of a run folder: ``sqlite:///OUT/mlflow.db`` (an absolute path)."""
    return f"sqlite:///{(Path(out_dir).resolve() / 'mlflow.db').as_posix()}"


def sqlite_artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment of a SQLite store keeps its artifacts: a folder beside the database;
    None (the store's own choice) for every other kind of store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(unquote(tracking_uri[len("sqlite:///"):].split("?")[0]))
    return (database.parent / ARTIFACTS_FOLDER).resolve().as_uri()


def mlflow_key(key: str) -> str:
    """``key`` as a valid MLflow param or metric name: other characters become ``_``, and the
    path-like spellings MLflow rejects (``a//b``, ``./a``, ``a/..``, a leading ``/``) are tidied."""
    parts = [_INVALID_KEY_CHARACTERS.sub("_", part) for part in key.split("/")]
    parts = ["__" if part == ".." else part for part in parts if part not in ("", ".")]
    return "/".join(parts)[:MAX_KEY_LENGTH] or "_"


def _unique_keys(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` under valid MLflow keys; two keys that become the same get suffixes ``_2``, ``_3``."""
    unique: dict[str, Any] = {}
    for key, value in values.items():
        name, n = mlflow_key(key), 1
        while name in unique:
            n += 1
            name = f"{mlflow_key(key)[:MAX_KEY_LENGTH - 4]}_{n}"
        unique[name] = value
    return unique


def param_text(value: Any) -> str:
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return text[:MAX_PARAM_VALUE_LENGTH]


@contextlib.contextmanager
def quiet_store_setup():
    """Keep MLflow from printing its database set-up ("Creating initial MLflow database tables")."""
    loggers = [logging.getLogger(name) for name in ("mlflow.store.db.utils", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


class MlflowTracker(Tracker):
    """One MLflow run in ``experiment`` of the store at ``tracking_uri``, created when the run starts."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.client: MlflowClient | None = None
        self.run_id: str | None = None

    def start(self, info: dict[str, Any]) -> None:
        with quiet_store_setup():
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            experiment_id = self._experiment_id()
        tags = {f"rtk.{key}": str(info[key])[:MAX_PARAM_VALUE_LENGTH]
                for key in ("recipe", "profile", "out_dir") if info.get(key) is not None}
        run = self.client.create_run(experiment_id, run_name=self.run_name, tags=tags)
        self.run_id = run.info.run_id

    def _experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is None:
            try:
                return self.client.create_experiment(
                    self.experiment, artifact_location=sqlite_artifact_location(self.tracking_uri))
            except MlflowException:  # another process (a shard) created it meanwhile
                experiment = self.client.get_experiment_by_name(self.experiment)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            raise RtkError(f'MLflow experiment "{self.experiment}" is deleted in {self.tracking_uri}; restore it'
                           " (mlflow experiments restore) or choose another one (experiment = ...)")
        return experiment.experiment_id

    def log_params(self, params: dict[str, Any]) -> None:
        entries = [Param(key, param_text(value)) for key, value in _unique_keys(params).items()]
        for batch in _chunks(entries, PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=batch)

    def _log_numbers(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        entries = [Metric(key, value, now, step) for key, value in _unique_keys(values).items()]
        for batch in _chunks(entries, METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch)

    def log_metrics(self, metrics: dict[str, float], step: int, stage: str) -> None:
        self._log_numbers({f"{stage}/{name}": value for name, value in metrics.items()}, step)

    def log_results(self, results: dict[str, float]) -> None:
        self._log_numbers({f"results/{key}": value for key, value in results.items()}, 0)

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: str = "finished") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "FINISHED" if status == "finished" else "FAILED")
        self.run_id = None
