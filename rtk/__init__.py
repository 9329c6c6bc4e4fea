"""rtk: adversarially robust transfer learning toolkit.

From Python (each name is imported on first use, so ``import rtk`` loads neither torch nor a plugin)::

    import rtk

    results = rtk.run(rtk.load_recipe("recipes/quickstart.toml", profile="smoke"))
    results.table()
    report = rtk.evaluate(my_model, "digits", attacks=["pgd"], eps=0.1, n=200)
    robust_source = rtk.source("6ccae361")          # a source from the store, by key prefix

- recipes: :func:`load_recipe`, :func:`run`, :class:`Results`;
- models and data: :func:`evaluate`, :func:`certify`, :func:`attack`, :func:`model`, :func:`source`,
  :func:`sources`, :func:`dataset`;
- the registry: :func:`components`, :func:`options`;
- plugins: ``@rtk.hookimpl`` marks hook implementations (see :mod:`rtk.hookspecs`);
  :class:`rtk.tracking.Tracker` is the base of trackers.
"""
import importlib

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("rtk")

# name -> the module that defines it, imported when the name is first used
_LAZY = {
    "load_recipe": "rtk.api.recipes", "run": "rtk.api.recipes", "Results": "rtk.api.recipes",
    "evaluate": "rtk.api.evaluation", "certify": "rtk.api.evaluation",
    "EvaluationResult": "rtk.api.evaluation", "CertificationResult": "rtk.api.evaluation",
    "attack": "rtk.api.components", "ConfiguredAttack": "rtk.api.components",
    "model": "rtk.api.components", "source": "rtk.api.components", "sources": "rtk.api.components",
    "dataset": "rtk.api.components", "components": "rtk.api.components", "options": "rtk.api.components",
    "ComponentInfo": "rtk.api.components",
    "RtkError": "rtk.errors",
}

__all__ = ["__version__", "hookimpl", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rtk' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
