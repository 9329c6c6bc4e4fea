"""Sanity flags: cheap checks, in the spirit of AutoAttack's, that an evaluation is trustworthy.

Every check runs on a small sample the caller chooses and costs at most one extra run of each
attack. The config fields a check may vary (by role: eps, steps, restarts) and whether an attack
is the black-box reference are what the attack declared when it registered (its ``sanity_fields``
and ``black_box`` traits, rtk.registry.TRAITS["attack"]; SanityAttack.of reads them), never guessed
from field names or labels. A check that does not apply (an attack that declares no eps or steps
to vary, a value the config rejects, a threat model Square does not cover) is skipped, never
flagged.

Rules and thresholds are documented for users in docs/sanity-flags.md; keep the two in step.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from rtk.models import model_mode
from rtk.stages.context import RunContext
from rtk.errors import RtkError


@dataclass
class SanityAttack:
    """An attack as the checks need it: its label, its config, and how to rebuild it with changed options."""

    label: str
    config: Any
    build: Callable[[Any], Any]
    # What the attack declared when it registered (rtk.registry.TRAITS["attack"]).
    sanity_fields: dict[str, str] = dataclasses.field(default_factory=dict)
    black_box: bool = False

    @classmethod
    def of(cls, spec) -> "SanityAttack":
        """The sanity view of a recipe's attack (an rtk.config.spec.ComponentSpec)."""
        variant = {"variant": spec.variant} if spec.variant is not None else {}
        return cls(spec.label, spec.config, lambda config: spec.component.factory(config, **variant),
                   dict(spec.component.trait("sanity_fields")), bool(spec.component.trait("black_box")))

    @classmethod
    def registered(cls, name: str, config=None, label: str | None = None, registry=None) -> "SanityAttack":
        """The sanity view of the registered attack ``name`` with ``config`` (default: its defaults),
        labelled ``label`` (default: ``name``), as a recipe naming it would give."""
        from rtk.config.spec import ComponentSpec
        from rtk.registry import default_registry

        component, variant = (registry or default_registry()).resolve("attack", name)
        config = component.config() if config is None else config
        return cls.of(ComponentSpec(component, config, variant, "eval.attacks", label or name))

    def field(self, role: str) -> str | None:
        """The config field the attack declared for ``role`` ("eps", "steps", "restarts"), or None."""
        name = self.sanity_fields.get(role)
        return name if name is not None and hasattr(self.config, name) else None

    def value(self, role: str):
        """The configured value of the field declared for ``role``, or None."""
        name = self.field(role)
        return getattr(self.config, name) if name is not None else None


LARGE_EPS_MAX_ACCURACY = 0.10  # at least; the threshold is max(this, 1 / number of classes)
ZERO_GRADIENT_MAX_FRACTION = 0.05
FORWARD_RTOL = 1e-4  # relative to the largest logit magnitude (at least 1)
SQUARE_QUERIES = 1000
NOISE_FRACTION = 0.01  # accuracy changes up to max(1 example, 1% of the sample) count as noise

EXPLANATIONS = {
    "eps-zero": "An attack with a zero budget must leave every prediction unchanged; it does not, so it leaves its "
                "threat model or changes the images in another way: fix the attack before trusting its numbers.",
    "large-eps": "With a budget this large any sound attack should fool almost every example; high accuracy points "
                 "to gradient masking or a weak attack (too few steps, a bad step size), so add a gradient-free or "
                 "adaptive attack and check the attack's settings.",
    "more-steps": "A stronger run of the same attack (more steps, one more restart) found fewer adversarial examples, "
                  "so the attack has not converged or the model is randomised: report the stronger setting and raise "
                  "steps and restarts until accuracy stops falling.",
    "black-box-beats-white-box": "A gradient-free attack beat the gradient-based ones at the same budget, a classic "
                                 "sign of gradient masking: the white-box numbers overstate robustness, so add "
                                 "AutoAttack or an adaptive attack (BPDA, EOT) to the recipe.",
    "nondeterministic-forward": "The model's eval-mode forward pass is random (dropout left on, noise injection), so "
                                "one attack run understates an adaptive attacker: attack with Expectation over "
                                "Transformation (AutoAttack version 'rand') or make eval mode deterministic.",
    "zero-gradients": "Inputs whose loss gradient is exactly zero give gradient-based attacks nothing to follow "
                      "(saturated softmax, non-differentiable preprocessing such as quantisation), so their robust "
                      "accuracy is unreliable: add a black-box attack (Square) or an adaptive one (BPDA).",
}


def flag(name: str, message: str) -> dict:
    return {"name": name, "message": message, "explanation": EXPLANATIONS[name], "source": "rtk"}


def is_black_box(attack: SanityAttack) -> bool:
    """Attacks declared ``black_box`` (Square) are the gradient-free reference the white-box attacks are
    compared with."""
    return attack.black_box


def noise(n: int) -> float:
    return max(1.0, NOISE_FRACTION * n)


def _frac(count: int, n: int) -> str:
    return f"{count / n:.3f} ({count}/{n})"


@contextlib.contextmanager
def seeded(ctx: RunContext):
    """Seed every run from the run seed (flags repeat) without moving the caller's RNG streams."""
    devices = [ctx.device] if ctx.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(ctx.seed)
        yield


def rebuild(attack: SanityAttack, **changes):
    """The attack rebuilt with changed values by role ("eps", "steps", "restarts": each written to the config
    field the attack declared for it), or None where the attack declares no such field, the config lacks it or
    rejects a value."""
    config = attack.config
    if not dataclasses.is_dataclass(config):
        return None
    names = {role: attack.field(role) for role in changes}
    if None in names.values():
        return None
    fields = {f.name: f for f in dataclasses.fields(config)}
    for role, value in changes.items():
        meta = fields[names[role]].metadata if names[role] in fields else None
        if meta is None or value < meta.get("min", value) or value > meta.get("max", value):
            return None
    try:
        return attack.build(dataclasses.replace(config, **{names[role]: value for role, value in changes.items()}))
    except (ValueError, TypeError, RtkError):  # the config's own validation refused the value
        return None


class Sample:
    """The sample, its clean predictions, and seeded attack runs that count examples still classified correctly."""

    def __init__(self, model, images, labels, ctx: RunContext):
        self.model, self.images, self.labels, self.ctx = model, images, labels, ctx
        with torch.no_grad():
            logits = model(images)
        self.ok, self.num_classes = logits.argmax(1) == labels, logits.shape[-1]
        self.n, self.clean = len(labels), int(self.ok.sum())
        self._built: dict[str, Any] = {}
        self._baseline: dict[str, int] = {}

    def run(self, attack) -> tuple[int, float]:
        """Examples still correct under ``attack`` (only clean-correct ones are attacked, as in evaluate), and
        the largest |delta| it applied."""
        idx = self.ok.nonzero().flatten()
        if len(idx) == 0:
            return 0, 0.0
        with seeded(self.ctx):
            adversarial = attack(self.model, self.images[idx], self.labels[idx])
        with torch.no_grad():
            correct = int((self.model(adversarial).argmax(1) == self.labels[idx]).sum())
        return correct, float((adversarial - self.images[idx]).abs().max())

    def built(self, attack: SanityAttack):
        if attack.label not in self._built:
            self._built[attack.label] = attack.build(attack.config)
        return self._built[attack.label]

    def baseline(self, attack: SanityAttack) -> int:
        """Examples still correct under the attack as configured (run once, shared by the checks)."""
        if attack.label not in self._baseline:
            self._baseline[attack.label] = self.run(self.built(attack))[0]
        return self._baseline[attack.label]


def check_forward(sample: Sample) -> list[dict]:
    with torch.no_grad():
        first, second = sample.model(sample.images), sample.model(sample.images)
    diff = float((first - second).abs().max())
    if diff <= FORWARD_RTOL * max(1.0, float(first.abs().max())):
        return []
    changed = int((first.argmax(1) != second.argmax(1)).sum())
    return [flag("nondeterministic-forward", f"two eval-mode forward passes on the same {sample.n} images differ by up "
                 f"to {diff:.3g} in the logits; {changed} predictions changed")]


def check_gradients(sample: Sample) -> list[dict]:
    x = sample.images.clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(sample.model(x), sample.labels, reduction="sum")
        # A model whose output does not depend on its input through autograd has zero gradient everywhere.
        grad = torch.autograd.grad(loss, x)[0] if loss.requires_grad else torch.zeros_like(x)
    zero = int((grad.flatten(1).abs().sum(1) == 0).sum())
    if zero <= ZERO_GRADIENT_MAX_FRACTION * sample.n:
        return []
    return [flag("zero-gradients", f"{zero / sample.n:.3f} of the sample ({zero}/{sample.n} images) has an exactly"
                 f" zero cross-entropy input gradient (threshold {ZERO_GRADIENT_MAX_FRACTION:g})")]


def check_eps_zero(sample: Sample, attack: SanityAttack) -> list[dict]:
    if attack.field("eps") is None or (built := rebuild(attack, eps=0.0)) is None:
        return []
    correct, delta = sample.run(built)
    if correct == sample.clean:
        return []
    return [flag("eps-zero", f'"{attack.label}" with eps=0 leaves accuracy {_frac(correct, sample.n)} against clean '
                 f"{_frac(sample.clean, sample.n)}; its largest |delta| is {delta:.3g}")]


def larger_eps(norm: str, eps: float) -> float:
    if norm == "Linf":
        return min(max(4 * eps, 0.3), 1.0)
    return 10 * eps if norm == "L2" else 4 * eps


def check_large_eps(sample: Sample, attack: SanityAttack) -> list[dict]:
    eps = attack.value("eps")
    if not isinstance(eps, (int, float)):
        return []
    norm = getattr(attack.config, "norm", None) or getattr(sample.built(attack), "norm", "Linf")
    big = larger_eps(norm, eps)
    if big <= eps or (built := rebuild(attack, eps=big)) is None:
        return []
    correct, _ = sample.run(built)
    threshold = max(LARGE_EPS_MAX_ACCURACY, 1.0 / sample.num_classes)
    if correct <= threshold * sample.n:
        return []
    return [flag("large-eps", f'"{attack.label}" at {norm} eps={big:.3g} ({big / eps if eps else float("inf"):.3g}x) '
                 f"still leaves accuracy {_frac(correct, sample.n)} (threshold {threshold:.3g})")]


def check_more_steps(sample: Sample, attack: SanityAttack) -> list[dict]:
    changes = {}  # by role; the declared fields' values decide which apply
    steps, restarts = attack.value("steps"), attack.value("restarts")
    if isinstance(steps, int) and steps > 0:
        changes["steps"] = 2 * steps
    if isinstance(restarts, int):
        changes["restarts"] = restarts + 1
    if not changes or (built := rebuild(attack, **changes)) is None:
        return []
    base = sample.baseline(attack)
    correct, _ = sample.run(built)
    if correct - base <= noise(sample.n):
        return []
    stronger = ", ".join(f"{attack.field(role)} {attack.value(role)}->{v}" for role, v in changes.items())
    return [flag("more-steps", f'"{attack.label}" with {stronger} leaves accuracy {_frac(correct, sample.n)}, up from '
                 f"{_frac(base, sample.n)}")]


def run_square(sample: Sample, norm: str, eps: float) -> int:
    from pyautoattack.square import SquareAttack

    idx = sample.ok.nonzero().flatten()
    if len(idx) == 0:
        return 0
    square = SquareAttack(sample.model, norm=norm, eps=eps, n_queries=SQUARE_QUERIES, seed=sample.ctx.seed,
                          device=sample.images.device)
    with torch.no_grad(), seeded(sample.ctx):  # Square reseeds the global RNG itself
        adversarial = square.perturb(sample.images[idx], sample.labels[idx])
        return int((sample.model(adversarial).argmax(1) == sample.labels[idx]).sum())


def threat(attack: SanityAttack) -> tuple:
    return getattr(attack.config, "norm", None), attack.value("eps")


def check_black_box(sample: Sample, attacks: list[SanityAttack], metrics: dict[str, float]) -> list[dict]:
    white = [a for a in attacks if not is_black_box(a)]
    listed = [a for a in attacks if is_black_box(a) and a.label in metrics]
    if listed:  # the evaluation already ran Square on more examples: compare its own numbers, as AutoAttack does
        flags = []
        for square in listed:
            rivals = [a for a in white
                      if a.label in metrics and (threat(square)[0] is None or threat(a) == threat(square))]
            if not rivals:
                continue
            best = min(rivals, key=lambda a: metrics[a.label])
            if metrics[best.label] - metrics[square.label] > max(NOISE_FRACTION, 1.0 / sample.n):
                flags.append(flag("black-box-beats-white-box", f'"{square.label}" accuracy {metrics[square.label]:.3f} '
                                  f'is below the best white-box attack "{best.label}" ({metrics[best.label]:.3f})'))
        return flags
    runs = []
    for a in white:
        built = sample.built(a)
        norm, eps = getattr(built, "norm", None), getattr(built, "eps", None)
        if norm in ("Linf", "L2", "L1") and isinstance(eps, (int, float)) and eps > 0:
            runs.append((sample.baseline(a), a.label, norm, float(eps)))
    if not runs:
        return []
    best, label, norm, eps = min(runs, key=lambda r: r[0])
    square = run_square(sample, norm, eps)
    if best - square <= noise(sample.n):
        return []
    return [flag("black-box-beats-white-box", f"Square ({SQUARE_QUERIES} queries, {norm} eps={eps:.3g}) leaves"
                 f' accuracy {_frac(square, sample.n)}, below the best white-box attack "{label}" at'
                 f" {_frac(best, sample.n)}")]


def sanity_checks(model, images: torch.Tensor, labels: torch.Tensor, attacks: list[SanityAttack],
                  metrics: dict[str, float], ctx: RunContext) -> list[dict]:
    """Run the sanity checks on a sample (images, labels on ctx.device); return flags
    {"name", "message", "explanation", "source": "rtk"} for every check that fails.

    The sample runs as one batch: keep it no larger than an evaluation batch.
    """
    if len(labels) == 0:
        return []
    flags: list[dict] = []
    # Seeded throughout, as a random model's forward passes draw numbers too: flags repeat run to run.
    with model_mode(model, train=False), seeded(ctx), ctx.progress("sanity checks", len(attacks) + 2) as advance:
        sample = Sample(model, images, labels, ctx)
        flags += check_forward(sample)
        flags += check_gradients(sample)
        advance()
        for attack in attacks:
            flags += check_eps_zero(sample, attack)
            flags += check_large_eps(sample, attack)
            flags += check_more_steps(sample, attack)
            advance()
        flags += check_black_box(sample, attacks, metrics)
        advance()
    return flags
