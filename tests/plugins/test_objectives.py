"""Training objectives: free-at, trades, simclr and pgd-at (incl. the transfer study's L2 setting)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from rtk.config.fields import build_config
from rtk.stages.context import RunContext
from rtk.data import ImageSet
from rtk.config.schema import TrainConfig
from rtk.stages.training import fit
from rtk_plugins.objectives import tensor_augment as A
from rtk_plugins.objectives.simclr import nt_xent
from rtk_plugins.objectives import FreeATConfig, PGDATConfig, SimCLRConfig, TRADESConfig
from rtk_plugins.objectives.adversarial_training import PGDAdversarialTraining
from rtk_plugins.objectives.free_at import FreeAdversarialTraining
from rtk_plugins.objectives.simclr import SimCLR
from rtk_plugins.objectives.trades import TRADES
from tests.helpers import TINY_RECIPE, build
from tests.helpers import small_cnn


def tiny_model(channels: int = 1, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, classes))


def random_batch(n: int = 8, channels: int = 1, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def weight_grads(model):
    return [p.grad.clone() for p in model.parameters()]


def train_step(objective, model, images, labels):
    model.zero_grad(set_to_none=True)
    loss = objective.loss(model, images, labels)
    loss.backward()
    objective.after_backward()
    return loss


# --- free-at --------------------------------------------------------------------------------

def test_free_at_delta_persists_across_batches_and_stays_in_the_ball(one_thread):
    objective = FreeAdversarialTraining(FreeATConfig(eps=0.1, replays=2))
    model = tiny_model()
    first, first_labels = random_batch(8, seed=1)
    for images, labels in objective.split(first, first_labels):
        train_step(objective, model, images, labels)
    after_first = objective.delta.clone()
    assert after_first.abs().max() == pytest.approx(0.1)  # two sign steps of eps from zero reach the boundary
    assert after_first.abs().max() <= 0.1 + 1e-7
    # The next (different) minibatch starts from the same perturbation: it is never reset.
    second, second_labels = random_batch(8, seed=2)
    objective.loss(model, second, second_labels)
    assert torch.equal(objective._leaf.detach(), after_first)
    # A smaller last batch uses (and updates) only the first rows.
    small, small_labels = random_batch(3, seed=3)
    train_step(objective, model, small, small_labels)
    assert torch.equal(objective.delta[3:], after_first[3:]) and not torch.equal(objective.delta[:3], after_first[:3])
    assert objective.delta.abs().max() <= 0.1 + 1e-7


def test_free_at_updates_delta_with_the_gradient_of_the_same_forward(one_thread):
    eps, step = 0.2, 0.05
    objective = FreeAdversarialTraining(FreeATConfig(eps=eps, step=step, replays=3))
    images, labels = random_batch(6)
    start = (torch.rand_like(images) * 2 - 1) * eps
    objective.delta = start.clone()
    # By hand: one forward at clip(x + delta), gradients of the weights and of delta together.
    reference = tiny_model()
    delta = start.clone().requires_grad_(True)
    F.cross_entropy(reference((images + delta).clamp(0, 1)), labels).backward()
    expected_delta = (start + step * delta.grad.sign()).clamp(-eps, eps)
    model = tiny_model()
    train_step(objective, model, images, labels)
    for ours, theirs in zip(weight_grads(model), weight_grads(reference)):
        torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(objective.delta, expected_delta)
    assert not torch.equal(objective.delta, start)


def test_free_at_fit_makes_replays_steps_per_batch_and_round_trips_state(tmp_path, one_thread):
    steps = []
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: steps.append(1))
    try:
        images, labels = random_batch(20)
        objective = FreeAdversarialTraining(FreeATConfig(eps=0.05, replays=3))
        cfg = build_config(TrainConfig, {"epochs": 2, "batch_size": 8, "optimizer": "sgd", "lr": 0.01,
                                         "schedule": "cosine"})
        fit(tiny_model(), ImageSet(images, labels), objective, cfg, RunContext(show_progress=False),
            checkpoint=tmp_path / "train.pt")
    finally:
        handle.remove()
    assert len(steps) == 2 * math.ceil(20 / 8) * 3
    assert objective.delta.shape == (8, 1, 8, 8) and objective.delta.abs().max() > 0
    saved = torch.load(tmp_path / "train.pt", weights_only=True)["objective"]  # what a resumed fit loads
    restored = FreeAdversarialTraining(FreeATConfig(eps=0.05, replays=3))
    restored.load_state_dict(saved)
    assert torch.equal(restored.delta, objective.delta)
    restored.loss(tiny_model(), images[:8], labels[:8])
    assert torch.equal(restored._leaf.detach(), objective.delta)


def test_free_at_rejects_other_norms(write_recipe, cli):
    path = write_recipe(TINY_RECIPE + '\n[source.objective]\nname = "free-at"\nnorm = "L2"\n')
    result = cli("validate", path)
    assert result.exit_code == 2 and "norm" in result.stderr and "Linf" in result.stderr


# --- trades ---------------------------------------------------------------------------------

def test_trades_loss_is_ce_plus_beta_kl_with_the_clean_softmax_not_detached(one_thread):
    beta = 2.5
    objective = TRADES(TRADESConfig(beta=beta))
    model = tiny_model()
    images, labels = random_batch(8)
    fixed = (images + 0.05 * torch.randn_like(images)).clamp(0, 1)
    objective.perturb = lambda model, x: fixed
    loss = objective.loss(model, images, labels)
    loss.backward()
    ours = weight_grads(model)

    model.zero_grad()
    p = F.softmax(model(images), 1)
    q = F.softmax(model(fixed), 1)
    kl = (p * (p.log() - q.log())).sum(1).mean()
    by_hand = F.cross_entropy(model(images), labels) + beta * kl
    torch.testing.assert_close(loss, by_hand)
    by_hand.backward()
    for a, b in zip(ours, weight_grads(model)):
        torch.testing.assert_close(a, b)
    # Detaching the clean softmax (what the reference does NOT do) changes the gradient.
    model.zero_grad()
    kl = (p.detach() * (p.detach().log() - F.log_softmax(model(fixed), 1))).sum(1).mean()
    detached = F.cross_entropy(model(images), labels) + beta * kl
    detached.backward()
    assert any(not torch.allclose(a, b) for a, b in zip(ours, weight_grads(model)))


def test_trades_beta_zero_is_cross_entropy_and_zero_steps_is_the_gaussian_start(one_thread):
    model = tiny_model()
    images, labels = random_batch(8)
    plain = TRADES(TRADESConfig(beta=0.0)).loss(model, images, labels)
    torch.testing.assert_close(plain, F.cross_entropy(model(images), labels))
    torch.manual_seed(5)
    start = TRADES(TRADESConfig(steps=0)).perturb(model, images)
    torch.manual_seed(5)
    torch.testing.assert_close(start, (images + 0.001 * torch.randn_like(images)).clamp(0, 1))


@pytest.mark.parametrize("norm, eps, alpha", [("Linf", 0.05, 0.02), ("L2", 0.5, 0.2)])
def test_trades_inner_point_stays_in_the_ball_and_raises_the_kl(norm, eps, alpha, one_thread):
    model = tiny_model()
    images, _ = random_batch(8)
    images[:, :, :2] = 0.0  # some pixels at the box boundary: the clip must hold there too
    objective = TRADES(TRADESConfig(eps=eps, alpha=alpha, steps=6, norm=norm))
    adversarial = objective.perturb(model, images)
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    diff = (adversarial - images).flatten(1)
    size = diff.abs().amax(1) if norm == "Linf" else diff.norm(dim=1)
    assert (size <= eps + 1e-5).all() and (size > eps / 4).all()
    with torch.no_grad():
        p = F.softmax(model(images), 1)
        noisy = (images + 0.001 * torch.randn_like(images)).clamp(0, 1)
        start = F.kl_div(F.log_softmax(model(noisy), 1), p, reduction="sum")
        reached = F.kl_div(F.log_softmax(model(adversarial), 1), p, reduction="sum")
    assert reached > 10 * start


def test_trades_attack_mode_decides_whether_bn_statistics_move(one_thread):
    images, labels = random_batch(8, channels=1)
    for mode, updates in [("eval", 2), ("train", 3 + 1 + 2)]:  # outer loss: clean + x'; train: 3 steps + the target
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 36, 3)).train()
        TRADES(TRADESConfig(steps=3, attack_mode=mode)).loss(model, images, labels)
        assert model[1].num_batches_tracked.item() == updates and model.training


# --- pgd-at ---------------------------------------------------------------------------------

def test_pgd_at_step_defaults_and_the_study_setting(write_recipe, cli):
    from rtk_plugins.attacks.pgd import step_size

    assert step_size("Linf", 8 / 255, 7, PGDATConfig().alpha) == pytest.approx(2 / 255)
    assert step_size("L2", 0.5, 3, None) == pytest.approx(2.5 * 0.5 / 3)
    path = write_recipe(TINY_RECIPE + '\n[source.objective]\nname = "pgd-at"\nnorm = "L2"\neps = 0.5\nsteps = 3\n'
                        'alpha = "1/3"\nrandom_start = true\n')
    assert cli("validate", path).exit_code == 0


def test_pgd_at_l2_study_setting_trains_at_points_in_the_ball(monkeypatch, one_thread):
    import torchattacks

    seen = []
    original = torchattacks.PGDL2.forward

    def spy(self, images, labels):
        adversarial = original(self, images, labels)
        seen.append((self.eps, self.alpha, self.steps, self.random_start,
                     (adversarial - images).flatten(1).norm(dim=1)))
        return adversarial

    monkeypatch.setattr(torchattacks.PGDL2, "forward", spy)
    objective = PGDAdversarialTraining(PGDATConfig(norm="L2", eps=0.5, steps=3, alpha=1 / 3, random_start=True))
    images, labels = random_batch(8)
    loss = objective.loss(tiny_model(), images, labels)
    assert torch.isfinite(loss)
    ((eps, alpha, steps, random_start, norms),) = seen
    assert (eps, steps, random_start) == (0.5, 3, True) and alpha == pytest.approx(1 / 3)
    assert (norms <= 0.5 + 1e-5).all() and (norms > 0.25).all()


def test_pgd_at_attack_mode_decides_whether_bn_statistics_move(one_thread):
    images, labels = random_batch(8)
    for mode, updates in [("eval", 1), ("train", 3 + 1)]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 36, 3)).train()
        PGDAdversarialTraining(PGDATConfig(steps=3, attack_mode=mode)).loss(model, images, labels)
        assert model[1].num_batches_tracked.item() == updates and model.training


# --- simclr: loss -----------------------------------------------------------------------------

def test_nt_xent_equals_a_direct_computation():
    torch.manual_seed(0)
    z1, z2, tau = torch.randn(4, 3), torch.randn(4, 3), 0.3
    h = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)

    def term(i, positive):
        others = sum(math.exp(float(h[i] @ h[k]) / tau) for k in range(2 * n) if k != i)
        return -math.log(math.exp(float(h[i] @ h[positive]) / tau) / others)

    view1 = sum(term(i, i + n) for i in range(n)) / n
    view2 = sum(term(i + n, i) for i in range(n)) / n
    assert nt_xent(z1, z2, tau).item() == pytest.approx(view1 + view2, rel=1e-5)


def test_nt_xent_identical_views_beat_random_embeddings():
    tau, n = 0.5, 6
    orthonormal = torch.eye(8)[:n] * 3.0  # identical views through an identity projection
    best = nt_xent(orthonormal, orthonormal, tau).item()
    # Positive similarity 1, all 2n-2 negatives 0, in both directions.
    assert best == pytest.approx(2 * (-1 / tau + math.log(math.exp(1 / tau) + 2 * n - 2)), rel=1e-6)
    torch.manual_seed(0)
    for _ in range(20):
        assert nt_xent(torch.randn(n, 8), torch.randn(n, 8), tau).item() > best


# --- simclr: augmentations ------------------------------------------------------------------

def test_colour_ops_match_torchvision_per_image():
    from torchvision.transforms.v2 import functional as TF

    torch.manual_seed(0)
    x = torch.rand(5, 3, 12, 12)
    factors = torch.rand(5) * 1.6
    hues = torch.rand(5) - 0.5
    sigmas = torch.rand(5) * 1.9 + 0.1
    cases = [(A.adjust_brightness, TF.adjust_brightness, factors), (A.adjust_contrast, TF.adjust_contrast, factors),
             (A.adjust_saturation, TF.adjust_saturation, factors), (A.adjust_hue, TF.adjust_hue, hues)]
    for ours, theirs, values in cases:
        expected = torch.stack([theirs(x[i], float(values[i])) for i in range(5)])
        torch.testing.assert_close(ours(x, values), expected, atol=2e-6, rtol=0)
    expected = torch.stack([TF.gaussian_blur(x[i], [5, 5], [float(sigmas[i])] * 2) for i in range(5)])
    torch.testing.assert_close(A.gaussian_blur(x, 5, sigmas), expected, atol=2e-6, rtol=0)


def test_resized_crop_geometry():
    from torchvision.transforms.v2 import functional as TF

    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16)
    whole = torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 4)
    torch.testing.assert_close(A.resized_crop(x, whole), x)
    torch.testing.assert_close(A.resized_crop(x, whole, flip=torch.tensor([True, False, True, False])),
                               torch.stack([x[0].flip(-1), x[1], x[2].flip(-1), x[3]]))
    box = torch.tensor([[2.0, 3.0, 8.0, 6.0]] * 4)
    expected = torch.stack([TF.resized_crop(x[i], 2, 3, 8, 6, [16, 16], antialias=False) for i in range(4)])
    # Same sampling points as torchvision away from the crop's border (which interpolates across it).
    torch.testing.assert_close(A.resized_crop(x, box)[..., 2:-2, 2:-2], expected[..., 2:-2, 2:-2])
    boxes = A.resized_crop_boxes(500, 32, 24, scale=(0.08, 1.0))
    top, left, h, w = boxes.unbind(1)
    assert (h >= 1).all() and (w >= 1).all() and (top + h <= 32).all() and (left + w <= 24).all()
    area = h * w / (32 * 24)
    assert area.min() < 0.2 and area.max() > 0.8


@pytest.mark.parametrize("channels", [1, 3])
def test_simclr_views_keep_shape_and_range_and_differ_per_image(channels):
    x = torch.rand(1, channels, 16, 16).repeat(6, 1, 1, 1)
    torch.manual_seed(0)
    views = A.simclr_view(x, blur=True)
    assert views.shape == x.shape and views.min() >= 0 and views.max() <= 1
    flat = views.flatten(1)
    assert torch.cdist(flat, flat)[~torch.eye(6, dtype=torch.bool)].min() > 1e-3  # every copy got its own parameters
    torch.manual_seed(0)
    assert torch.equal(A.simclr_view(x, blur=True), views)  # seeded from torch's global RNG


# --- simclr: objective ----------------------------------------------------------------------

def test_simclr_head_is_trained_by_fit_and_not_part_of_the_model(one_thread):
    torch.manual_seed(0)
    model = small_cnn(3)
    images, labels = torch.rand(24, 1, 8, 8), torch.zeros(24, dtype=torch.long)
    objective = SimCLR(SimCLRConfig(projection_dim=16))
    objective.setup(model, torch.device("cpu"))
    before = {k: v.clone() for k, v in objective.head.state_dict().items()}
    encoder = model.body[0][0].weight.clone()
    cfg = build_config(TrainConfig, {"epochs": 1, "batch_size": 12, "lr": 1e-2})
    fit(model, ImageSet(images, labels), objective, cfg, RunContext(show_progress=False), checkpoint=None)
    assert objective.head[0].in_features == model.feature_dim == objective.head[0].out_features
    assert objective.head[2].out_features == 16
    assert all(not torch.equal(before[k], v) for k, v in objective.head.state_dict().items())
    assert not torch.equal(encoder, model.body[0][0].weight)
    assert not any(k.startswith("head.0") or k.startswith("head.2") for k in model.state_dict())
    assert all(k in objective.state_dict() for k in ("head.0.weight", "head.2.bias"))
    restored = SimCLR(SimCLRConfig(projection_dim=16))
    restored.setup(model, torch.device("cpu"))
    restored.load_state_dict(objective.state_dict())
    assert all(torch.equal(v, objective.head.state_dict()[k]) for k, v in restored.head.state_dict().items())


def test_simclr_ignores_labels_and_sizes_the_hidden_layer(one_thread):
    model = small_cnn(3)
    objective = SimCLR(SimCLRConfig(projection_hidden=7))
    objective.setup(model, torch.device("cpu"))
    assert objective.head[0].out_features == 7 and objective.head[2].out_features == 128
    images = torch.rand(10, 1, 8, 8)
    torch.manual_seed(3)
    first = objective.loss(model, images, torch.zeros(10, dtype=torch.long))
    torch.manual_seed(3)
    second = objective.loss(model, images, torch.arange(10))
    assert first.item() == second.item() and first.item() > 0


# --- end to end -----------------------------------------------------------------------------

@pytest.mark.parametrize("objective", ['name = "free-at"\nreplays = 2\neps = 0.1',
                                       'name = "trades"\nsteps = 2\neps = 0.1\nalpha = 0.05',
                                       'name = "simclr"\nprojection_dim = 16'])
def test_rtk_run_trains_a_source_with_each_new_objective(objective, write_recipe, cli, tmp_path, one_thread):
    path = write_recipe(TINY_RECIPE + f"\n[source.objective]\n{objective}\n")
    out = tmp_path / "out"
    result = cli("run", path, "--out", out, "--quiet", "--set", "source.train.epochs=1")
    assert result.exit_code == 0, result.stderr
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    assert 0 <= run["metrics"]["clean"] <= 1 and math.isfinite(run["source"]["final_loss"])


@pytest.mark.slow
def test_free_at_on_digits_is_more_robust_than_natural_training_with_the_same_steps(one_thread):
    from rtk.stages.training import CrossEntropy
    splits = build("dataset", "digits")
    images, labels = splits.test.take(torch.arange(len(splits.test)))
    attack = build("attack", "pgd", {"eps": 0.15, "steps": 20})
    results = {}
    # Same number of optimizer steps: 40 natural epochs, 40/4 free-at epochs of 4 replays.
    for name, objective, epochs in [("natural", CrossEntropy(), 40),
                                    ("free-at", FreeAdversarialTraining(FreeATConfig(eps=0.15, replays=4)), 10)]:
        torch.manual_seed(0)
        model = small_cnn(10)
        cfg = build_config(TrainConfig, {"epochs": epochs, "batch_size": 64, "lr": 3e-3})
        fit(model, splits.train, objective, cfg, RunContext(show_progress=False), checkpoint=None)
        adversarial = attack(model, images, labels)
        with torch.no_grad():
            results[name] = ((model(images).argmax(1) == labels).float().mean().item(),
                             (model(adversarial).argmax(1) == labels).float().mean().item())
    print(results)
    (natural_clean, natural_robust), (free_clean, free_robust) = results["natural"], results["free-at"]
    assert natural_clean > 0.9 and free_clean > 0.9
    assert free_robust >= natural_robust + 0.15 and free_robust >= 2 * natural_robust
