"""What the built-in strategies (rtk_plugins.transfer, .lwf, .cartl) share beyond rtk's TransferStrategy."""
from __future__ import annotations

from rtk.errors import RtkError
from rtk.stages.strategy import TransferStrategy


class Strategy(TransferStrategy):
    """A strategy built from its config alone, as its registered "module:Class" factory is called."""

    def __init__(self, config):
        self.config = config


def refuse_objective(objective, reason: str) -> None:
    """The run-time side of ``takes_objective=False`` (``rtk validate`` already rejects the recipe's
    table): an RtkError when a caller passes an objective anyway."""
    if objective is not None:
        raise RtkError(f"[transfer.objective]: {reason}")
