"""AutoAttack (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", arXiv:2003.01690) behind rtk's Attack contract.

Backends
--------
``pyautoattack`` (default) is the reference implementation: ``AutoAttack(model, norm, eps,
version, seed, device).run_standard_evaluation(images, labels, batch_size)``, and its adversarial
images are returned unchanged: an example no attack breaks comes back as the clean image, as
AutoAttack returns it. Two departures, neither of which changes an adversarial image:

- A fresh ``AutoAttack`` object per call. The reference sets ``fab.n_restarts = 1`` when it runs
  FAB-T and never restores it, so a reused object would run the untargeted FAB of ``plus`` (and
  of ``custom``) with 1 restart instead of 5 on every batch after the first.
- Models with fewer than 10 classes. The reference indexes the 9 highest non-true logits and
  crashes with IndexError; rtk runs APGD-T and FAB-T on the ``num_classes - 1`` possible
  targets, and skips APGD-T below 4 classes and APGD-DLR below 3 (their DLR losses read the
  3rd/4th largest logit). Flagged as ``autoattack:targets_clamped``, beside the reference's own
  ``autoattack:n_classes`` warning.

The global torch RNG state is restored after the call: every sub-attack reseeds torch with
``seed`` before it runs, which would otherwise reset the rest of the pipeline's random stream.

``torchattacks`` is torchattacks' port, run only with the reference's settings forced on its
sub-attack objects (its own defaults are not AutoAttack):

- APGD, APGD-T and FAB: ``steps = 100`` (torchattacks' default is 10).
- APGD-T and FAB-T: ``n_target_classes = min(9, num_classes - 1)`` (torchattacks uses
  ``n_classes - 1``, i.e. 99 targets on a 100-class model; the reference uses the top 9).
- Square: ``rescale_schedule = False`` (the reference builds Square with ``resc_schedule=False``;
  torchattacks rescales the p schedule to the query budget), 5000 queries, p_init 0.8.
- Restarts as the reference: standard 1 everywhere; plus 5 for APGD-CE/APGD-DLR/FAB and 1 for
  APGD-T/FAB-T; rand 1 with EOT over 20 draws.
- ``set_model_training_mode(model.training)``: rtk already put the model in eval mode and
  restores each submodule's mode itself; torchattacks' own restore calls ``model.train()`` on
  the whole model. ``set_normalization_used`` is never called: rtk models normalise inside.

The implementations still differ in details (the port predates fixes in the reference), so the
two backends agree closely but not example by example; the run is flagged
``autoattack:backend``. The reference's model checks (randomness, softmax output, dynamic
defence, number of classes) run on this backend too, called directly; its in-attack checks
(zero gradients, Square beating the white-box attacks) exist only in the reference.

Flags
-----
The reference reports its checks through the ``auto-attack`` logger (or ``warnings.warn`` when
given no logger); both are captured during the call and turned into flags
``{"name": "autoattack:<check>", "message": ..., "source": "autoattack"}``, accumulated over all
calls of one attack object and returned by ``diagnostics()``.
"""
from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings

import torch

from rtk.evaluation.attacks import Attack

LOGGER = "auto-attack"
SOURCE = "autoattack"
STANDARD_TARGETS = 9
_DOC_REF = re.compile(r"\s*See flags_doc\.md for details\.?")
# Start of every message pyautoattack.checks emits; these warnings must show every time, not once per location.
_CHECK_WARNING = r"(it seems|there are \d+ points with zero gradient|with only \d+ classes|Square Attack has decreased)"

# Reference check messages (pyautoattack.checks) by the flag they become.
CHECKS = [
    ("randomized", "randomized defense"),
    ("softmax_output", "output is a probability distribution"),
    ("zero_gradients", "zero gradient"),
    ("dynamic", "dynamic defense"),
    ("n_classes", "classes"),
    ("square", "Square Attack has decreased the robust accuracy"),
]


def check_name(message: str) -> str | None:
    for name, marker in CHECKS:
        if marker in message:
            return name
    return None


class Flags:
    """Flags by name, in first-seen order; a repeated check keeps its first message and a count."""

    def __init__(self):
        self.items: dict[str, dict] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, message: str) -> None:
        key = f"{SOURCE}:{name}"
        self.counts[key] = self.counts.get(key, 0) + 1
        if key not in self.items:
            self.items[key] = {"name": key, "message": " ".join(_DOC_REF.sub("", message).split()), "source": SOURCE}

    def add_check(self, message: str) -> None:
        self.add(check_name(message) or "other", message)

    def as_list(self) -> list[dict]:
        flags = []
        for key, flag in self.items.items():
            count = self.counts[key]
            flags.append(flag | {"message": flag["message"] + (f" (reported {count} times)" if count > 1 else "")})
        return flags


class _Collect(logging.Handler):
    def __init__(self, flags: Flags):
        super().__init__(logging.WARNING)
        self.flags = flags

    def emit(self, record):
        self.flags.add_check(record.getMessage())


@contextlib.contextmanager
def captured_checks(flags: Flags, verbose: bool):
    """Route the reference's check warnings (logger or warnings.warn) into ``flags``."""
    logger = logging.getLogger(LOGGER)
    level = logger.level
    handlers = [_Collect(flags)]
    if verbose:
        stream = logging.StreamHandler(sys.stderr)
        stream.setLevel(logging.DEBUG)
        handlers.append(stream)
    # The collector must see WARNING even where the application raised the root level; a
    # handler on this logger also keeps logging's last-resort handler from printing them.
    logger.setLevel(logging.DEBUG if verbose else min(logger.getEffectiveLevel(), logging.WARNING))
    for handler in handlers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.filterwarnings("always", message=_CHECK_WARNING)
            yield
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
        logger.setLevel(level)
    for w in caught:
        text = str(w.message)
        if type(w.message) is Warning and check_name(text):  # pyautoattack.checks warns with the bare Warning class
            flags.add_check(text)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


@contextlib.contextmanager
def preserved_rng(device: torch.device):
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        yield


def count_classes(model, images: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(images[:1]).shape[-1])


def feasible_attacks(attacks: list[str], num_classes: int) -> list[str]:
    """Drop the DLR attacks a model with too few logits cannot run (the loss reads z_pi3 / z_pi4)."""
    keep = list(attacks)
    if num_classes < 4 and "apgd-t" in keep:
        keep.remove("apgd-t")
    if num_classes < 3 and "apgd-dlr" in keep:
        keep.remove("apgd-dlr")
    return keep


def set_apgd_iterations(apgd, n_iter: int) -> None:
    """APGD derives its checkpoint schedule from n_iter in its constructor; recompute it."""
    apgd.n_iter = n_iter
    apgd.n_iter_orig = n_iter
    apgd.n_iter_2 = max(int(0.22 * n_iter), 1)
    apgd.n_iter_min = max(int(0.06 * n_iter), 1)
    apgd.size_decr = max(int(0.03 * n_iter), 1)


class AutoAttack(Attack):
    """rtk's ``autoattack`` attack; see the module docstring for the backends and the flags."""

    def __init__(self, config):
        self.config = config
        self.norm = config.norm
        self.eps = config.eps
        self.flags = Flags()
        if config.backend == "torchattacks":
            self.flags.add("backend", "non-reference backend (torchattacks), standard settings forced: "
                                      f"{STANDARD_TARGETS} targets, 100 iterations, Square 5000 queries without "
                                      "schedule rescaling, reference restarts")

    def diagnostics(self) -> list[dict]:
        return self.flags.as_list()

    def perturb(self, model, images, labels):
        cfg = self.config
        if cfg.eps == 0 or len(images) == 0:
            return images.clone()
        run = self._pyautoattack if cfg.backend == "pyautoattack" else self._torchattacks
        with preserved_rng(images.device), captured_checks(self.flags, cfg.verbose):
            return run(model, images, labels, count_classes(model, images))

    def _clamp_note(self, before: list[str], after: list[str], targets: int, num_classes: int) -> None:
        """Flag what rtk changed so a model with too few classes runs instead of raising IndexError."""
        notes = []
        if any(a in after for a in ("apgd-t", "fab-t")) and targets > num_classes - 1:
            notes.append(f"APGD-T/FAB-T use {num_classes - 1} target classes instead of {targets}")
        skipped = [a for a in before if a not in after]
        if skipped:
            notes.append(f"skipped {', '.join(skipped)} (the DLR loss needs 3 classes, its targeted form 4)")
        if notes:
            self.flags.add("targets_clamped", f"{num_classes} classes: " + "; ".join(notes))

    def _pyautoattack(self, model, images, labels, num_classes):
        from pyautoattack import checks

        cfg = self.config
        # The reference counts traced grad/backward calls in module-level counters it never resets,
        # so one dynamic model would flag every later model in the process.
        for key in checks.funcs:
            checks.funcs[key] = 0
        adversary = reference_autoattack(model, cfg, images.device)
        targets = adversary.apgd_targeted.n_target_classes
        feasible = feasible_attacks(adversary.attacks_to_run, num_classes)
        targeted = any(a in adversary.attacks_to_run for a in ("apgd-t", "fab-t"))
        if (targeted and targets + 1 > num_classes) or feasible != adversary.attacks_to_run:
            # The reference's own message first (it would otherwise end in an IndexError).
            checks.check_n_classes(num_classes, adversary.attacks_to_run, targets, adversary.fab.n_target_classes,
                                   logger=adversary.logger)
            self._clamp_note(adversary.attacks_to_run, feasible, targets, num_classes)
            adversary.attacks_to_run = feasible
            adversary.apgd_targeted.n_target_classes = min(targets, num_classes - 1)
            adversary.fab.n_target_classes = min(adversary.fab.n_target_classes, num_classes - 1)
        adversarial, _ = adversary.run_standard_evaluation(images, labels, batch_size=cfg.batch_size)
        return adversarial

    def _torchattacks(self, model, images, labels, num_classes):
        from pyautoattack import checks

        cfg = self.config
        self._model_checks(model, images, labels, num_classes, checks)
        adversary, names, feasible = torchattacks_autoattack(model, cfg, num_classes)
        self._clamp_note(names, feasible, STANDARD_TARGETS, num_classes)
        batches = [adversary(images[i:i + cfg.batch_size], labels[i:i + cfg.batch_size])
                   for i in range(0, len(images), cfg.batch_size)]
        return torch.cat(batches)

    def _model_checks(self, model, images, labels, num_classes, checks):
        """The reference's model checks, as run_standard_evaluation runs them (the torchattacks port has none)."""
        cfg = self.config
        logger = logging.getLogger(LOGGER)
        head = slice(0, cfg.batch_size)
        for key in checks.funcs:
            checks.funcs[key] = 0
        if cfg.version != "rand":
            checks.check_randomized(model, images[head], labels[head], bs=cfg.batch_size, logger=logger)
        checks.check_range_output(model, images[head], logger=logger)
        checks.check_dynamic(model, images[head], False, logger=logger)
        attacks = {"standard": ["apgd-ce", "apgd-t", "fab-t", "square"], "rand": ["apgd-ce", "apgd-dlr"],
                   "plus": ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]}[cfg.version]
        checks.check_n_classes(num_classes, attacks, STANDARD_TARGETS, STANDARD_TARGETS, logger=logger)


def reference_autoattack(model, cfg, device):
    """pyautoattack.AutoAttack for ``cfg``, with the custom-only overrides applied."""
    from pyautoattack import AutoAttack as Reference

    adversary = Reference(model, norm=cfg.norm, eps=cfg.eps, version=cfg.version, seed=cfg.seed, device=device,
                          attacks=list(cfg.attacks_to_run) if cfg.version == "custom" else None)
    adversary.verbose = cfg.verbose
    if cfg.version == "custom":
        if cfg.n_restarts is not None:
            adversary.apgd.n_restarts = cfg.n_restarts
            adversary.fab.n_restarts = cfg.n_restarts
        if cfg.iterations is not None:
            set_apgd_iterations(adversary.apgd, cfg.iterations)
            set_apgd_iterations(adversary.apgd_targeted, cfg.iterations)
            adversary.fab.n_iter = cfg.iterations
    return adversary


def torchattacks_autoattack(model, cfg, num_classes: int):
    """torchattacks.AutoAttack with the reference's settings forced on its sub-attacks (module docstring).

    Returns (adversary, names of torchattacks' sub-attacks, names of those that run).
    """
    import torchattacks

    adversary = torchattacks.AutoAttack(model, norm=cfg.norm, eps=cfg.eps, version=cfg.version,
                                        n_classes=num_classes, seed=cfg.seed, verbose=cfg.verbose)
    subattacks = adversary._autoattack.attacks
    for sub in subattacks:
        if isinstance(sub, (torchattacks.APGD, torchattacks.APGDT, torchattacks.FAB)):
            sub.steps = 100
        if isinstance(sub, (torchattacks.APGDT, torchattacks.FAB)):
            sub.n_target_classes = min(STANDARD_TARGETS, num_classes - 1)
        if isinstance(sub, torchattacks.Square):
            sub.n_queries = 5000
            sub.p_init = 0.8
            sub.rescale_schedule = False
    names = [_torchattacks_name(sub) for sub in subattacks]
    feasible = feasible_attacks(names, num_classes)
    adversary._autoattack.attacks = [sub for sub, name in zip(subattacks, names) if name in feasible]
    # Propagates to every sub-attack; rtk owns the model's mode (see the module docstring).
    adversary.set_model_training_mode(model_training=model.training)
    return adversary, names, feasible


def _torchattacks_name(sub) -> str:
    import torchattacks

    if isinstance(sub, torchattacks.APGDT):
        return "apgd-t"
    if isinstance(sub, torchattacks.APGD):
        return f"apgd-{sub.loss}"
    if isinstance(sub, torchattacks.FAB):
        return "fab-t" if sub.multi_targeted else "fab"
    return "square"
