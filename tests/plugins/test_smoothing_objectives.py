"""Noise training for randomized smoothing: Gaussian augmentation and consistency regularization."""
import pytest
import torch

from rtk.config.fields import ConfigValueError, build_config
from rtk.stages.context import RunContext
from rtk.data import ImageSet
from rtk.config.schema import TrainConfig
from rtk.registry import default_registry
from rtk.stages.training import fit
from rtk_plugins.smoothing.noise_training import consistency_term
from tests.helpers import build


def objective(name, **options):
    component = default_registry().get("objective", name)
    return component.factory(build_config(component.config, options))


def tiny_model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))


class ScriptedNoise:
    """Stands in for torch.randn_like: hands out prepared tensors in order, counting the draws."""

    def __init__(self, noises):
        self.noises, self.calls = list(noises), 0

    def __call__(self, like):
        self.calls += 1
        noise = self.noises.pop(0)
        assert noise.shape == like.shape
        return noise.clone()


def hand_cross_entropy(logits, labels):
    logits = logits.double()
    return (torch.logsumexp(logits, 1) - logits[torch.arange(len(labels)), labels]).mean()


def hand_consistency(logit_copies, labels, lam, eta):
    """CE over the m*b noisy samples + per-example lam * mean_i KL(p_bar || p_i) + eta * H(p_bar), averaged over b."""
    m = len(logit_copies)
    probs = [torch.softmax(z.double(), 1) for z in logit_copies]
    p_bar = sum(probs) / m
    total = torch.zeros((), dtype=torch.float64)
    for b in range(len(labels)):
        kl = sum((p_bar[b] * (p_bar[b].log() - p[b].log())).sum() for p in probs) / m
        entropy = -(p_bar[b] * p_bar[b].clamp(min=1e-20).log()).sum()
        total = total + lam * kl + eta * entropy
    cross_entropy = hand_cross_entropy(torch.cat(logit_copies), labels.repeat(m))
    return cross_entropy + total / len(labels)


def test_gaussian_loss_is_cross_entropy_at_the_noisy_images(monkeypatch):
    model, images, labels = tiny_model(), torch.rand(5, 1, 3, 4), torch.tensor([0, 1, 2, 3, 0])
    noise = torch.randn(5, 1, 3, 4, generator=torch.Generator().manual_seed(2))
    draws = ScriptedNoise([noise])
    monkeypatch.setattr(torch, "randn_like", draws)
    loss = objective("gaussian", sigma=0.5).loss(model, images, labels)
    with torch.no_grad():
        expected = hand_cross_entropy(model(images + 0.5 * noise), labels)  # no clipping to [0, 1]
        clean = hand_cross_entropy(model(images), labels)
    assert draws.calls == 1 and float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    assert abs(float(expected) - float(clean)) > 1e-3


@pytest.mark.parametrize("m", [2, 3])
def test_consistency_loss_and_gradient_match_the_hand_computation(monkeypatch, m):
    model, images, labels = tiny_model(), torch.rand(4, 1, 3, 4), torch.tensor([0, 1, 2, 3])
    generator = torch.Generator().manual_seed(3)
    noises = [torch.randn(4, 1, 3, 4, generator=generator) for _ in range(m)]
    draws = ScriptedNoise(noises)
    monkeypatch.setattr(torch, "randn_like", draws)
    loss = objective("consistency", sigma=0.5, m=m, lam=5.0, eta=0.5).loss(model, images, labels)
    assert draws.calls == m and loss.dtype == torch.float32
    grad = torch.autograd.grad(loss, list(model.parameters()))
    copies = [model(images + 0.5 * noise) for noise in noises]  # each copy a separate forward here
    expected = hand_consistency(copies, labels, 5.0, 0.5)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    expected_grad = torch.autograd.grad(expected, list(model.parameters()), retain_graph=True)
    for got, want in zip(grad, expected_grad):
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-5, atol=1e-7)
    # p_bar is not detached: a detached mean gives other gradients.
    probs = [torch.softmax(z, 1) for z in copies]
    p_bar = (sum(probs) / m).detach()
    detached = sum((p_bar * (p_bar.log() - torch.log_softmax(z, 1))).sum(1) for z in copies).mean() / m
    with_mean = consistency_term(copies, 1.0, 0.0)
    g_detached = torch.autograd.grad(detached, list(model.parameters()), retain_graph=True)[0]
    g_mean = torch.autograd.grad(with_mean, list(model.parameters()))[0]
    assert float(with_mean.detach()) == pytest.approx(float(detached.detach()), rel=1e-5)
    assert not torch.allclose(g_detached, g_mean, atol=1e-6)


def reference_term(logits, lam, eta):
    """jh-jeong/smoothing-consistency code/consistency.py, loss='default'."""
    m = len(logits)
    p_bar = sum(torch.softmax(z, 1) for z in logits) / m
    kl = sum(torch.nn.functional.kl_div(torch.log_softmax(z, 1), p_bar, reduction="none").sum(1) for z in logits) / m
    entropy = (-p_bar * torch.log(p_bar.clamp(min=1e-20))).sum(1)
    return (lam * kl + eta * entropy).mean()


def test_consistency_term_has_the_reference_value_and_finite_gradients_where_it_underflows():
    logits = [torch.randn(6, 5, generator=torch.Generator().manual_seed(s)) * 3 for s in range(3)]
    expected = float(reference_term(logits, 10.0, 0.5))
    assert float(consistency_term(logits, 10.0, 0.5)) == pytest.approx(expected, rel=1e-5)
    # Two copies that disagree by 200 logits: each puts an exact 0 where the other puts 1.
    certain = [torch.tensor([[0.0, -200.0, -200.0]], requires_grad=True),
               torch.tensor([[-200.0, 0.0, -200.0]], requires_grad=True)]
    ours = consistency_term(certain, 10.0, 0.5)
    reference = reference_term(certain, 10.0, 0.5)
    assert torch.isfinite(ours) and float(ours.detach()) == pytest.approx(float(reference.detach()), rel=1e-6)
    ours.backward()
    assert all(torch.isfinite(z.grad).all() for z in certain)
    for z in certain:
        z.grad = None
    reference.backward()  # the reference's F.kl_div differentiates log(0) of its target
    assert not all(torch.isfinite(z.grad).all() for z in certain)


def test_each_loader_batch_becomes_m_steps_on_chunks_replicated_m_times(monkeypatch, one_thread):
    sizes, steps = [], []

    class Recording(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_model()

        def forward(self, x):
            sizes.append((len(x), self.training))
            return self.net(x)

    original = torch.optim.SGD.step
    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, *a, **k: steps.append(1) or original(self, *a, **k))
    data = ImageSet(torch.rand(38, 1, 3, 4), torch.randint(0, 4, (38,)))  # batches of 10, 10, 10, 8
    model = Recording()
    before = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(epochs=1, batch_size=10, optimizer="sgd", lr=0.1)
    history = fit(model, data, objective("consistency", m=2), cfg, RunContext(show_progress=False), checkpoint=None)
    assert len(steps) == 8  # m = 2 steps per loader batch
    assert sizes == [(10, True)] * 6 + [(8, True)] * 2  # chunks of B/2, each replicated twice: forward batch B
    assert len(history) == 1 and all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    sizes.clear(), steps.clear()
    fit(model, data, objective("consistency", m=3), cfg, RunContext(show_progress=False), checkpoint=None)
    assert len(steps) == 12 and sizes == [(9, True)] * 9 + [(6, True)] * 3  # B // 3 = 3 (10 -> 9) and 2 (8 -> 6)


def test_gaussian_trains_in_train_mode_one_step_per_batch(one_thread):
    modes = []

    class Recording(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_model()

        def forward(self, x):
            modes.append(self.training)
            return self.net(x)

    data = ImageSet(torch.rand(20, 1, 3, 4), torch.randint(0, 4, (20,)))
    fit(Recording(), data, objective("gaussian"), TrainConfig(epochs=1, batch_size=10), RunContext(show_progress=False),
        checkpoint=None)
    assert modes == [True, True]


def test_configs_state_the_defaults_and_refuse_one_noise_copy():
    component = default_registry().get("objective", "consistency")
    config = build_config(component.config, {})
    assert (config.sigma, config.m, config.lam, config.eta) == (0.25, 2, 10.0, 0.5)
    study = build_config(component.config, {"sigma": 0.5, "m": 2, "lam": 5.0, "eta": 0.5})
    assert study.lam == 5.0
    with pytest.raises(ConfigValueError, match="at least 2"):
        build_config(component.config, {"m": 1})
    assert build_config(default_registry().get("objective", "gaussian").config, {}).sigma == 0.25


@pytest.mark.slow
def test_noise_training_beats_natural_training_under_smoothing(one_thread):
    """Digits, small CNN, 15 epochs each, certified at sigma 0.5 on 90 test digits: the ordering
    of the papers (natural < Gaussian <= consistency), with margins far above seed noise for the first."""
    from rtk_plugins.smoothing.cohen import CohenCertifier
    from rtk_plugins.smoothing import CohenConfig

    splits = build("dataset", "digits")
    test = splits.test.subset(torch.arange(0, len(splits.test), 6))
    certifier = CohenCertifier(build_config(CohenConfig, {"sigma": 0.5, "n0": 50, "n": 500, "batch_size": 500}))
    metrics = {}
    for name, options in [("natural", {}), ("gaussian", {"sigma": 0.5}), ("consistency", {"sigma": 0.5, "lam": 5.0})]:
        torch.manual_seed(0)
        model = build("model", "small-cnn", {"channels": [8, 16], "feature_dim": 32}, num_classes=10)
        ctx = RunContext(show_progress=False)
        fit(model, splits.train, objective(name, **options), TrainConfig(epochs=15, batch_size=64, lr=3e-3), ctx,
            checkpoint=None)
        metrics[name] = certifier.summarize(certifier.certify_examples(model, test, ctx), ctx)["metrics"]
    for noisy in ("gaussian", "consistency"):
        assert metrics[noisy]["acr"] > metrics["natural"]["acr"] + 0.08
        assert metrics[noisy]["clean_smoothed_accuracy"] > metrics["natural"]["clean_smoothed_accuracy"] + 0.1
    assert metrics["consistency"]["abstain_rate"] <= metrics["gaussian"]["abstain_rate"]
    assert metrics["consistency"]["acr"] >= metrics["gaussian"]["acr"] - 0.02
