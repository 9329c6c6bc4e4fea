"""The datasets of a run, each loaded once however many sweep points use it."""
from __future__ import annotations

import json

from rtk.config.fields import to_table
from rtk.config.spec import ComponentSpec
from rtk.data import DataSplits, apply_options
from rtk.errors import RtkError


def allow_downloads(specs) -> None:
    """--download: every dataset of the run that can fetch its files may (``download = true``)."""
    for spec in specs:
        for data in (spec.source.data, spec.target):
            if data is not None and hasattr(data.config, "download"):
                object.__setattr__(data.config, "download", True)


def load_dataset(spec: ComponentSpec) -> DataSplits:
    data = spec.build()
    if not isinstance(data, DataSplits):
        raise RtkError(f"{spec.component.describe()} returned {type(data).__name__}, not rtk.data.DataSplits")
    return apply_options(data, spec.config)


class Datasets:
    """Loaded datasets by (name, options): a sweep loads each distinct dataset table once."""

    def __init__(self):
        self.loaded: dict[str, DataSplits] = {}

    def get(self, spec: ComponentSpec) -> DataSplits:
        key = json.dumps([spec.name, to_table(spec.config)], sort_keys=True, default=str)
        if key not in self.loaded:
            self.loaded[key] = load_dataset(spec)
        return self.loaded[key]

    def clear(self) -> None:
        self.loaded.clear()
