"""Evaluate and certify any classifier from Python: ``rtk.evaluate`` and ``rtk.certify``.

The numbers are those ``rtk eval`` and ``rtk run`` write: the same code (rtk.evaluation.robust_accuracy
with the sanity checks, rtk.stages.certify with the registered certifier), the same configs and
the same seeds, without a run folder. A model is any ``nn.Module`` that maps images in [0, 1]
(N, C, H, W) to logits, its normalisation inside (rtk's model contract, rtk.models), so that
attacks and smoothing noise act in pixel space. Importing this module loads neither torch nor any
plugin: they are imported when a function runs.

Beside it: rtk.api.reports (EvaluationResult, CertificationResult, re-exported here), rtk.api.inputs
(the data adapters) and rtk.api.attack_lists (the ``attacks`` argument, parsed and built).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from rtk.api.attack_lists import attack_entries
from rtk.api.components import ConfiguredAttack, attack  # re-exported: rtk.attack is defined beside the builders
from rtk.api.inputs import EvaluationData, evaluation_data
from rtk.api.reports import CertificationResult, EvaluationResult, metric_intervals  # re-exported: rtk maps them here
from rtk.errors import RtkError

if TYPE_CHECKING:
    from torch import nn

    from rtk.stages.context import RunContext

__all__ = ["CertificationResult", "ConfiguredAttack", "EvaluationResult", "attack", "certify", "evaluate"]


# ----------------------------------------------------------------------------- model, context, output


def _context(seed: int, device: str, progress: bool, out) -> RunContext:
    """The run context of ``rtk eval --seed SEED --device DEVICE``, without a run folder unless ``out``."""
    from rtk.config.fields import ConfigValueError, build_config
    from rtk.config.schema import RunConfig
    from rtk.services import distributed
    from rtk.stages.context import RunContext, resolve_device

    try:
        run = build_config(RunConfig, {"seed": seed, "device": device})
    except ConfigValueError as exc:
        raise RtkError(f"{exc.key}: {exc}") from None
    resolved = resolve_device(run.device)
    distributed.init(resolved)  # a no-op outside torchrun, as in the runner
    out_dir = Path(out).expanduser() if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    return RunContext(device=distributed.local_device(resolved), run=run, show_progress=progress, out_dir=out_dir)


def _prepared(model, found: EvaluationData, ctx: RunContext):
    """``model`` on the context's device, checked on one example: a Tensor of logits, (1, classes)."""
    import torch

    from rtk.models import model_mode

    if not isinstance(model, torch.nn.Module):
        raise RtkError(f"model: expected a torch nn.Module mapping images in [0, 1] to logits, got"
                       f" {type(model).__name__}")
    model = ctx.fast_model(model.to(ctx.device))
    if len(found.test) == 0:
        raise RtkError("data: no examples to evaluate")
    images, labels = found.test.take(torch.arange(1))
    devices = [ctx.device] if ctx.device.type == "cuda" else []
    # Forked: a random forward pass must not move the streams the evaluation draws from.
    with torch.random.fork_rng(devices=devices), model_mode(model, train=False), torch.no_grad():
        try:
            logits = model(ctx.to_device(images))
        except (RuntimeError, ValueError, TypeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise RtkError(f"model: it fails on the data's images, shape {tuple(images.shape)}: {first}") from exc
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise RtkError(f"model: it returned {shape} for one image; it must return logits of shape (N, classes)")
    classes = max(found.num_classes or 0, int(labels.max()) + 1)
    if logits.shape[1] < classes:
        raise RtkError(f"model: it has {logits.shape[1]} outputs but the data has {classes} classes")
    return model


def _written(out, name: str, payload: dict) -> None:
    """``payload`` as JSON in ``out``/``name``, written atomically so a crash leaves no half file."""
    from rtk.services.state import atomic_write_text

    atomic_write_text(Path(out).expanduser() / name, json.dumps(payload, indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------- evaluate, certify


def evaluate(model: nn.Module, data, attacks=("pgd",), *, eps: float | str | None = None, norm: str | None = None,
             steps: int | None = None, n: int | None = None, subset: str = "first", batch_size: int = 256,
             data_options: dict | None = None, split: str = "test", attack_order: str = "independent",
             sanity: bool = True, sanity_n: int = 100, per_class: bool = False, seed: int = 0, device: str = "auto",
             progress: bool = True, out: str | Path | None = None) -> EvaluationResult:
    """Clean, per-attack and robust accuracy of ``model`` on ``data``, with the sanity checks: the
    numbers ``rtk eval`` writes for the same options (same code, configs and seeds).

    ``model``: any ``nn.Module`` mapping images in [0, 1] (N, C, H, W) to logits, its
    normalisation inside (rtk.models.Normalize); moved to ``device`` (default ``"auto"``: CUDA when
    available) and run in eval mode (each submodule's mode restored after).

    ``data``: a dataset name (built through the registry with ``data_options``, e.g.
    ``{"classes": [5, 6, 7, 8, 9]}``; ``split`` picks "test" (default), "val" or "train"), a torch
    Dataset of (image, label) pairs (images float in [0, 1] or uint8), or a DataLoader (its batches
    concatenated; with ``subset="first"``, reading stops once ``n`` examples are in).

    ``attacks`` (default ``("pgd",)``; ``()`` for clean accuracy only): names, ``(name, {options})``
    pairs, dicts ``{"name": ..., "label": ..., **options}``, ``rtk.attack(...)`` objects, or any
    callable ``attack(model, images, labels)`` with ``norm`` and ``eps``. ``eps`` (``"8/255"``
    fractions are exact), ``norm`` and ``steps`` go to every registered attack that has the option
    and does not set it itself. ``n`` (default all), ``subset`` ("first", "random", "stride"),
    ``batch_size`` (256), ``attack_order`` ("independent", "sequential"), ``sanity`` (True),
    ``sanity_n`` (100), ``per_class`` (False): as ``[eval]`` in a recipe. ``seed`` (0): the run seed
    the attacks' randomness comes from. ``progress``: progress bars on a terminal. ``out``: a
    folder to write evaluation.json into (default None: nothing is written).

    Example::

        >>> result = rtk.evaluate(net, "digits", data_options={"classes": [5, 6, 7, 8, 9]},
        ...                       attacks=["pgd", ("fgsm", {"label": "FGSM"})], eps=0.1, n=100)
        >>> result.metrics
        {'clean': 0.93, 'pgd': 0.41, 'FGSM': 0.55, 'robust': 0.4}
        >>> result.intervals["robust"], result.flags
        ((0.303..., 0.503...), [])
    """
    from rtk.config.fields import ConfigValueError, build_config
    from rtk.config.schema import EvalConfig
    from rtk.evaluation.robust_accuracy import evaluate as evaluate_model

    table = {"n": n, "subset": subset, "batch_size": batch_size, "attack_order": attack_order, "sanity": sanity,
             "sanity_n": sanity_n, "per_class": per_class}
    try:
        config = build_config(EvalConfig, {k: v for k, v in table.items() if v is not None})
    except ConfigValueError as exc:
        raise RtkError(f"{exc.key}: {exc}") from None
    values = {k: v for k, v in (("eps", eps), ("norm", norm), ("steps", steps)) if v is not None}
    entries = attack_entries(attacks, values)
    ctx = _context(seed, device, progress, out)
    found = evaluation_data(data, data_options, split, n, subset)
    model = _prepared(model, found, ctx)
    result = evaluate_model(model, found.test, [(label, a) for label, a, _ in entries], ctx, config,
                            num_classes=found.num_classes,
                            sanity_attacks=[s for _, _, s in entries if s is not None])
    metrics, count = result["metrics"], result["n"]
    evaluation = EvaluationResult(metrics, count, list(result["flags"]),
                                  metric_intervals(metrics, count),
                                  [label for label, _, _ in entries], result["attack_order"],
                                  correct=result["correct"], indices=result["indices"])
    if config.per_class:
        evaluation.per_class = result["per_class"]
        classes = len(next(iter(result["per_class"].values())))
        evaluation.class_names = found.class_names or [str(c) for c in range(classes)]
    if out is not None:
        _written(out, "evaluation.json", evaluation.to_dict())
    return evaluation


def _certifier_options(component, options: dict | None, keywords: dict, defaults: dict) -> dict:
    """``options`` with the keyword arguments (sigma, n) the certifier has added; a keyword set
    both ways to different values is an error, a keyword the certifier lacks too (unless left at
    its default)."""
    if options is not None and not isinstance(options, dict):
        raise RtkError(f'options: expected a dict of certifier options, e.g. {{"n0": 100}}, got {options!r}')
    found = dict(options or {})
    fields = {f.name for f in dataclasses.fields(component.config)}
    for key, value in keywords.items():
        if value is None:
            continue
        if key not in fields:
            if value != defaults[key]:
                raise RtkError(f'{key}: certifier "{component.name}" has no {key} option; see'
                               f' rtk.options("{component.name}", kind="certifier")')
        elif key in found and value != defaults[key] and found[key] != value:
            raise RtkError(f"{key}: given as {key}={value!r} and in options ({found[key]!r}); give it once")
        else:
            found.setdefault(key, value)
    return found


def certify(model: nn.Module, data, *, sigma: float | str = 0.25, n: int | None = None, certifier: str = "cohen",
            options: dict | None = None, n_examples: int | None = None, subset: str = "first",
            data_options: dict | None = None, split: str = "test", seed: int = 0, device: str = "auto",
            progress: bool = True, out: str | Path | None = None) -> CertificationResult:
    """Provable robustness of ``model`` on ``data`` through the registered ``certifier`` (default
    ``"cohen"``: randomized smoothing, Cohen et al., arXiv:1902.02918): the numbers a recipe's
    ``[certify]`` table gives for the same options.

    ``sigma`` (default 0.25) and ``n`` (noise samples; default None, the certifier's: 100,000 for
    cohen) go to the certifier; ``options`` holds its others (cohen: n0 100, alpha 0.001,
    batch_size 1000, skip 1, max_examples, radii, seed, mode; ``rtk.options("cohen")``).
    ``n_examples`` (default all) and ``subset`` ("first", "random", "stride") choose the examples
    as ``[eval] n`` and ``subset`` do. ``model``, ``data``, ``data_options``, ``split``, ``seed``,
    ``device``, ``progress``: as in ``evaluate``. ``out``: a folder for the certifier's files
    (cohen: certify-0.tsv, certify-0.png) and certification.json (default None: nothing is written).

    Example::

        >>> result = rtk.certify(net, "digits", sigma=0.25, n=1000, n_examples=100,
        ...                      options={"n0": 100, "batch_size": 500})
        >>> result.metrics["certified_accuracy@0.5"], result.metrics["acr"]
        (0.62, 0.48)
        >>> result.rows[0]
        {'index': 0, 'label': 5, 'prediction': 5, 'radius': 0.71, 'correct': True, ...}
    """
    from rtk.api.components import _resolve, _spec
    from rtk.evaluation.certifier import Certifier
    from rtk.evaluation.robust_accuracy import select_indices
    from rtk.stages.certify import certify as certify_model

    if n_examples is not None and (isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 1):
        raise RtkError(f"n_examples: expected a positive integer, got {n_examples!r}")
    if subset not in ("first", "random", "stride"):
        raise RtkError(f'subset: "{subset}" is not one of first, random, stride')
    component, _ = _resolve("certifier", certifier, "certifier")
    table = _certifier_options(component, options, {"sigma": sigma, "n": n}, {"sigma": 0.25, "n": None})
    spec = _spec("certifier", certifier, table, f'certifier "{certifier}"')
    built = spec.build()
    ctx = _context(seed, device, progress, out)
    found = evaluation_data(data, data_options, split, n_examples, subset)
    model = _prepared(model, found, ctx)
    indices = select_indices(len(found.test), n_examples, subset, 0)  # subset_seed 0, as [eval] by default
    rows = None
    if isinstance(built, Certifier):
        rows, summarize = [], built.summarize

        def keep_rows(done: list[dict], context) -> dict:  # the rows, renumbered to the data's indices
            rows.extend(done)
            return summarize(done, context)

        built.summarize = keep_rows
    with ctx.autocast("eval"):
        summary = certify_model(built, model, found.test, indices, ctx) or {}
    flags = [{"name": "certify-sample-size", "message": str(w), "source": "rtk"} for w in summary.get("warnings", [])]
    metrics, count = dict(summary.get("metrics", {})), int(summary.get("n", len(indices)))
    result = CertificationResult(metrics, count, spec.name, summary, flags, rows, metric_intervals(metrics, count))
    if out is not None:
        _written(out, "certification.json", result.to_dict())
    return result
