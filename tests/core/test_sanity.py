"""Sanity flags (rtk.evaluation.sanity): a healthy model raises none; masked, random and buggy setups raise theirs."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rtk.evaluation.attacks import Attack
from rtk.config.fields import option
from rtk.evaluation.sanity import SanityAttack, sanity_checks
from rtk.evaluation.sanity import Sample, check_black_box, is_black_box, rebuild
from rtk_plugins.attacks import PGDConfig
from rtk_plugins.attacks.pgd import PGDAttack
from tests.helpers import quiet_context
from tests.helpers import train_digits_cnn

N = 100
EPS = 0.1  # Linf on 8x8 digits: PGD-10 takes the healthy model from ~0.9 to ~0.4, so it measures something


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(one_thread):
    """A small CNN trained 8 epochs on digits (~0.9 clean accuracy), and the first N test images."""
    model, digits = train_digits_cnn(epochs=8, lr=3e-3, batch_size=64, generator=torch.Generator().manual_seed(0))
    return model, digits.test.images[:N], digits.test.labels[:N]


@pytest.fixture
def ctx():
    return quiet_context(seed=0)


def pgd(eps=EPS, steps=10):
    """The registered pgd, with the sanity fields it declares (eps, steps, restarts)."""
    return SanityAttack.registered("pgd", PGDConfig(eps=eps, steps=steps), label="PGD-10")


EPS_FIELD = {"eps": "eps"}


def names(flags):
    return [f["name"] for f in flags]


class Quantize(nn.Module):
    """x -> round(4x)/4: torch.round's gradient is zero everywhere, the textbook masked gradient."""

    def forward(self, x):
        return torch.round(x * 4) / 4


class AlwaysDropout(nn.Module):
    """Dropout that ignores eval mode (a randomised defense, or a forgotten training flag)."""

    def forward(self, x):
        return F.dropout(x, 0.3, training=True)


def swap(images, labels, k):
    """Replace the first k images by one of another class (the checks only attack correctly classified
    examples, so each swapped one is misclassified)."""
    out = images.clone()
    for i in range(min(k, len(images))):
        out[i] = images[int((labels != labels[i]).nonzero()[0])]
    return out


@dataclass
class IgnoresEpsConfig:
    eps: float = EPS


@dataclass
class BoundedEpsConfig:
    eps: float = option(EPS, min=0.05, max=0.2)


class IgnoresEps(Attack):
    norm = "L0"  # a threat model Square does not cover, so the black-box check skips it and the test stays fast
    field = "eps"  # the config field it reads its budget from

    def __init__(self, config):
        self.eps = getattr(config, self.field)

    def perturb(self, model, images, labels):
        return swap(images, labels, len(images))


@dataclass
class StepsConfig:
    steps: int = 4
    restarts: int = 1


class WeakerWithSteps(Attack):
    """Fools len/steps examples: doubling steps halves its success, a broken optimiser in miniature."""

    field = "steps"  # the config field it reads its steps from

    def __init__(self, config):
        self.steps = getattr(config, self.field)

    def perturb(self, model, images, labels):
        return swap(images, labels, len(images) // self.steps)


def test_healthy_model_raises_no_flag(trained, ctx):
    model, images, labels = trained
    model.train()
    flags = sanity_checks(model, images, labels, [pgd()], {}, ctx)
    assert flags == [], flags
    assert model.training and all(m.training for m in model.modules())  # the caller's mode is restored
    model.eval()
    # The numbers behind "no flag": clean 91/100, PGD-10 39, eps=0 91, eps=0.4 0, PGD-20 x2 restarts 39, Square 49.
    sample = Sample(model, images, labels, ctx)
    assert sample.clean >= 85 and 20 <= sample.baseline(pgd()) <= 60


def test_gradient_masking_raises_zero_gradients_black_box_and_large_eps(trained, ctx):
    model, images, labels = trained
    masked = nn.Sequential(Quantize(), model).eval()
    flags = {f["name"]: f for f in sanity_checks(masked, images, labels, [pgd()], {}, ctx)}
    # Measured: all 100 gradients zero; PGD-10 stuck at 89/100 (clean 93) while Square reaches 73/100;
    # PGD at eps 0.4 still 89/100.
    assert set(flags) == {"zero-gradients", "black-box-beats-white-box", "large-eps"}, flags
    assert flags["zero-gradients"]["message"].startswith("1.000 of the sample (100/100 images)")
    assert "Square (1000 queries, Linf eps=0.1)" in flags["black-box-beats-white-box"]["message"]
    assert all(f["source"] == "rtk" and f["explanation"] for f in flags.values())


def test_random_forward_raises_nondeterministic_forward_repeatably(trained, ctx):
    model, images, labels = trained
    noisy = nn.Sequential(AlwaysDropout(), model).eval()
    state = torch.get_rng_state()
    first = sanity_checks(noisy, images, labels, [], {}, ctx)
    assert names(first) == ["nondeterministic-forward"]
    assert sanity_checks(noisy, images, labels, [], {}, ctx) == first  # seeded from ctx.seed
    assert torch.equal(torch.get_rng_state(), state)  # and the caller's RNG stream is untouched


def test_attack_that_ignores_eps_zero_raises_eps_zero(trained, ctx):
    model, images, labels = trained
    clean = Sample(model, images, labels, ctx).clean  # 91 here
    fake = SanityAttack("fake", IgnoresEpsConfig(), IgnoresEps, EPS_FIELD)
    flags = sanity_checks(model, images, labels, [fake], {}, ctx)
    assert names(flags) == ["eps-zero"]  # large-eps passes: the fake fools everything at any eps
    assert f'"fake" with eps=0 leaves accuracy 0.000 (0/{N}) against clean {clean / N:.3f} ({clean}/{N})' \
        in flags[0]["message"]
    # A config that refuses eps=0 (and eps=0.4) skips both eps checks rather than flagging.
    bounded = SanityAttack("fake", BoundedEpsConfig(), IgnoresEps, EPS_FIELD)
    assert sanity_checks(model, images, labels, [bounded], {}, ctx) == []


def test_accuracy_rising_with_steps_raises_more_steps(trained, ctx):
    model, images, labels = trained
    clean = Sample(model, images, labels, ctx).clean
    # steps 4 fools clean // 4 examples (22 of 91 here), steps 8 only clean // 8 (11); no eps field, no eps checks.
    fake = SanityAttack("fake", StepsConfig(), WeakerWithSteps, {"steps": "steps", "restarts": "restarts"})
    flags = sanity_checks(model, images, labels, [fake], {}, ctx)
    assert names(flags) == ["more-steps"]
    weak, strong = clean - clean // 8, clean - clean // 4
    assert (f'"fake" with steps 4->8, restarts 1->2 leaves accuracy {weak / N:.3f} ({weak}/{N}), up from '
            f"{strong / N:.3f} ({strong}/{N})") in flags[0]["message"]


def test_listed_square_is_compared_through_the_evaluation_metrics(trained, ctx):
    model, images, labels = trained
    # Only its declared black_box and its threat model matter.
    square = SanityAttack("Square-5000", PGDConfig(eps=EPS), PGDAttack, EPS_FIELD, black_box=True)
    other_threat = SanityAttack.registered("pgd", PGDConfig(norm="L2", eps=0.5), label="PGD-L2")
    sample = Sample(model, images, labels, ctx)
    metrics = {"PGD-10": 0.40, "PGD-L2": 0.10, "Square-5000": 0.30}
    flags = check_black_box(sample, [pgd(), other_threat, square], metrics)
    assert names(flags) == ["black-box-beats-white-box"] and '"PGD-10" (0.400)' in flags[0]["message"]
    assert check_black_box(sample, [pgd(), other_threat, square], metrics | {"Square-5000": 0.395}) == []


# ---------------------------------------------------------------- declared traits


# The fakes above with their eps and steps fields under other names: only a declaration says what they are.
RadiusConfig = dataclasses.make_dataclass("RadiusConfig", [("radius", float, EPS)])
IterationsConfig = dataclasses.make_dataclass("IterationsConfig", [("iterations", int, 4)])


class IgnoresRadius(IgnoresEps):
    field = "radius"


class WeakerWithIterations(WeakerWithSteps):
    field = "iterations"


@pytest.mark.parametrize("config, attack, declared, message", [
    (RadiusConfig(), IgnoresRadius, {"eps": "radius"}, ("eps-zero", '"fake" with eps=0 leaves')),
    (IterationsConfig(), WeakerWithIterations, {"steps": "iterations"}, ("more-steps", "with iterations 4->8 leaves")),
], ids=["eps", "steps"])
def test_checks_vary_the_declared_fields_whatever_their_names(trained, ctx, config, attack, declared, message):
    model, images, labels = trained
    flags = sanity_checks(model, images, labels, [SanityAttack("fake", config, attack, declared)], {}, ctx)
    assert names(flags) == [message[0]] and message[1] in flags[0]["message"]
    # Undeclared, the same fields are never varied: those checks are skipped.
    assert sanity_checks(model, images, labels, [SanityAttack("fake", config, attack)], {}, ctx) == []


def test_black_box_is_what_the_attack_declares_not_its_label(trained, ctx):
    model, images, labels = trained
    assert is_black_box(SanityAttack.registered("square"))
    assert not is_black_box(SanityAttack.registered("pgd", label="square-ish PGD"))
    searcher = SanityAttack("Random-search", PGDConfig(eps=EPS), PGDAttack, EPS_FIELD, black_box=True)
    metrics = {"PGD-10": 0.40, "Random-search": 0.30}
    flags = check_black_box(Sample(model, images, labels, ctx), [pgd(), searcher], metrics)
    assert names(flags) == ["black-box-beats-white-box"] and '"Random-search" accuracy 0.300' in flags[0]["message"]


def test_rebuild_takes_roles_and_writes_the_declared_fields():
    declared = SanityAttack("fake", RadiusConfig(), IgnoresRadius, {"eps": "radius"})
    assert rebuild(declared, eps=0.0).eps == 0.0  # written to radius
    assert rebuild(declared, steps=8) is None  # a role the attack does not declare
    missing = SanityAttack("fake", RadiusConfig(), IgnoresRadius, {"eps": "eps"})
    assert rebuild(missing, eps=0.0) is None  # a declared field the config lacks
