"""Recipes and configs: what plugin authors import to declare options (torch-free).

``from rtk.config import option, TrainConfig, DatasetConfig, HeadOptions, BatchNormOptions``
"""
from rtk.config.fields import option
from rtk.config.schema import (BatchNormOptions, DatasetConfig, EvalConfig, HeadInit, HeadOptions, RunConfig,
                               TrainConfig)

__all__ = ["option", "TrainConfig", "DatasetConfig", "RunConfig", "EvalConfig", "HeadOptions", "BatchNormOptions",
           "HeadInit"]
