"""Built-in experiment trackers (rtk.tracking): TensorBoard, MLflow, Weights & Biases.

Each sends a run's parameters, curves, results and files to a tracking tool besides its folder
(``rtk run --tracker NAME``, ``[run] trackers``). By default all three write inside the run folder
OUT and never reach the network:

- ``tensorboard``: event files in OUT/tensorboard/ (``tensorboard --logdir OUT/tensorboard``);
- ``mlflow``: the SQLite store OUT/mlflow.db and artifacts in OUT/mlflow-artifacts/<run id>/artifacts/
  (``mlflow ui --backend-store-uri sqlite:///OUT/mlflow.db``), or the store $MLFLOW_TRACKING_URI names;
- ``wandb``: an offline run in OUT/wandb/offline-run-<time>-<id>/ (``wandb sync`` uploads it).

The libraries are imported only when a tracker is built (the modules beside this one), so listing
plugins stays fast. TensorBoard and W&B are extras of rtk (``pip install "rtk[wandb]"``); MLflow is
installed after rtk (``pip install mlflow``: its requests clashes with torchattacks' pin, see pyproject.toml).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import rtk
from rtk.config import option


@dataclass
class TensorBoardConfig:
    """TensorBoard event files (torch.utils.tensorboard). Default: log_dir = OUT/tensorboard."""

    log_dir: str | None = option(None, path=True, key=False, help=(
        "folder of the event files (default: OUT/tensorboard, inside the run folder)"))


@dataclass
class MlflowConfig:
    """An MLflow run (through MlflowClient, so several runs in one process stay apart). Defaults:
    tracking_uri = $MLFLOW_TRACKING_URI, else sqlite:///OUT/mlflow.db; experiment = the recipe's run
    name; run_name = the run folder's name."""

    tracking_uri: str | None = option(None, key=False, help=(
        "MLflow tracking URI (http://host:5000, sqlite:///path/mlflow.db, databricks, ...); default:"
        " $MLFLOW_TRACKING_URI, else the SQLite store OUT/mlflow.db with artifacts in OUT/mlflow-artifacts"))
    experiment: str | None = option(None, key=False, help=(
        "experiment the run goes into, created when missing (default: the recipe's run name)"))
    run_name: str | None = option(None, key=False, help="name of the MLflow run (default: the run folder's name)")


@dataclass
class WandbConfig:
    """A Weights & Biases run, offline unless mode = "online". Defaults: project = "rtk",
    mode = "offline", dir = OUT (the run goes to OUT/wandb/), entity = your default entity."""

    project: str = option("rtk", key=False, help="W&B project")
    mode: Literal["offline", "online"] = option("offline", key=False, help=(
        'offline writes OUT/wandb/offline-run-* only (upload later with `wandb sync`); online needs'
        " `wandb login` and network access"))
    dir: str | None = option(None, path=True, key=False, help=(
        "folder that receives the wandb/ folder of the run (default: OUT, the run folder)"))
    entity: str | None = option(None, key=False, help="W&B user or team (default: your default entity)")


@rtk.hookimpl
def register_trackers(register):
    register("tensorboard", "rtk_plugins.trackers.tensorboard:build_tracker", config=TensorBoardConfig,
             summary="TensorBoard event files in OUT/tensorboard: curves, results, params (text and hparams)",
             requires="tensorboard", extra="tensorboard")
    register("mlflow", "rtk_plugins.trackers.mlflow_tracker:build_tracker", config=MlflowConfig,
             summary="an MLflow run: params, metrics, results, files; store $MLFLOW_TRACKING_URI or OUT/mlflow.db",
             requires="mlflow", extra=None)  # no extra: see pyproject.toml
    register("wandb", "rtk_plugins.trackers.wandb_tracker:build_tracker", config=WandbConfig,
             summary="a Weights & Biases run, offline in OUT/wandb by default (upload with `wandb sync`)",
             requires="wandb", extra="wandb")
