"""rtk: adversarially robust transfer learning toolkit.

Plugins implement hooks with ``@rtk.hookimpl`` and register components (source models,
datasets, attacks, objectives, transfer strategies, certifiers) through a ``register``
callback; see :mod:`rtk.hookspecs`.
"""
import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("rtk")

__all__ = ["__version__", "hookimpl"]
