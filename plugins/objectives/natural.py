"""The ``natural`` objective: rtk's cross-entropy on clean images (its config has no options)."""
from __future__ import annotations

from rtk.stages.training import CrossEntropy


def natural(config) -> CrossEntropy:
    return CrossEntropy()
