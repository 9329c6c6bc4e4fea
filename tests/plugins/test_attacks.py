"""The attack menu: each attack lowers accuracy, stays in its threat model and [0, 1], runs in eval
mode and leaves every submodule's mode as it found it; plus the CW loss, FGSM, target clamping."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rtk.config.fields import build_config
from rtk.errors import RtkError
from rtk.evaluation.robust_accuracy import check_threat_model
from rtk.registry import default_registry
from tests.helpers import small_cnn, train_digits_cnn
from tests.helpers import TINY_RECIPE

LINF, L2 = 0.15, 1.0  # digits pixels come in steps of 1/16: these break an undefended small CNN

# Settings cut down for a 2-core CPU; the defaults are the papers' (checked in test_defaults_are_the_standard_ones).
CASES = {
    "fgsm": ("fgsm", {"eps": LINF}),
    "pgd": ("pgd", {"eps": LINF, "steps": 10}),
    "pgd-best-example": ("pgd", {"eps": LINF, "steps": 10, "keep": "best-example"}),
    "pgd-best-batch-L2": ("pgd", {"norm": "L2", "eps": L2, "steps": 10, "keep": "best-batch"}),
    "cw-pgd": ("cw-pgd", {"eps": LINF, "steps": 10}),
    "cw-pgd-L2": ("cw-pgd", {"norm": "L2", "eps": L2, "steps": 10}),
    "apgd-ce": ("apgd-ce", {"eps": LINF, "steps": 10}),
    "apgd-ce-L2": ("apgd-ce", {"norm": "L2", "eps": L2, "steps": 10}),
    "apgd-dlr": ("apgd-dlr", {"eps": LINF, "steps": 10}),
    "apgd-t": ("apgd-t", {"eps": LINF, "steps": 10, "target_classes": 2}),
    "fab-t": ("fab-t", {"eps": LINF, "steps": 10, "target_classes": 2}),
    "fab-t-L2": ("fab-t", {"norm": "L2", "eps": L2, "steps": 10, "target_classes": 2}),
    "square": ("square", {"eps": LINF, "queries": 150}),
    "square-L2": ("square", {"norm": "L2", "eps": L2, "queries": 150}),
}


def build(name: str, options: dict):
    component = default_registry().get("attack", name)
    return component.factory(build_config(component.config, options))


def accuracy(model, images, labels) -> float:
    with torch.no_grad():
        return (model(images).argmax(1) == labels).float().mean().item()




pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained():
    """A small CNN trained briefly on digits and 100 test examples: (model, images, labels, clean accuracy)."""
    model, splits = train_digits_cnn(epochs=4, lr=3e-3, batch_size=64)
    images, labels = splits.test.take(torch.arange(0, len(splits.test), 5)[:100])
    clean = accuracy(model, images, labels)
    assert clean > 0.8
    return model, images, labels, clean


def mixed_mode(model):
    model.train()
    model.body[0].eval()  # e.g. a frozen block inside a model being trained
    model.head.eval()
    return [m.training for m in model.modules()]


@pytest.fixture(scope="module")
def attacked(trained):
    """Each case run once from a mixed train/eval state: {case: (attack, adversarial, modes before, after, modes
    seen)}."""
    model, images, labels, _ = trained
    results = {}

    def run(case):
        if case not in results:
            attack = build(*CASES[case])
            before = mixed_mode(model)
            seen = []
            hook = model.head.register_forward_pre_hook(
                lambda m, args: seen.append(any(s.training for s in model.modules())))
            torch.manual_seed(0)
            try:
                adversarial = attack(model, images, labels)
            finally:
                hook.remove()
            results[case] = (attack, adversarial, before, [m.training for m in model.modules()], seen)
            model.eval()
        return results[case]

    return run


@pytest.mark.parametrize("case", list(CASES))
def test_attack_lowers_accuracy(case, trained, attacked):
    model, images, labels, clean = trained
    _, adversarial, *_ = attacked(case)
    robust = accuracy(model, adversarial, labels)
    assert robust <= clean - 0.25, f"{case}: clean {clean:.2f}, attacked {robust:.2f}"


@pytest.mark.parametrize("case", list(CASES))
def test_attack_stays_in_its_threat_model(case, trained, attacked):
    _, images, _, _ = trained
    attack, adversarial, *_ = attacked(case)
    assert attack.norm == CASES[case][1].get("norm", "Linf") and attack.eps == CASES[case][1]["eps"]
    check_threat_model(case, attack, images, adversarial)
    assert not adversarial.requires_grad and adversarial.grad_fn is None


@pytest.mark.parametrize("case", list(CASES))
def test_attack_runs_in_eval_mode_and_restores_each_submodule(case, attacked):
    _, _, before, after, seen = attacked(case)
    assert seen and not any(seen)
    assert after == before


@pytest.mark.parametrize("case", list(CASES))
def test_eps_zero_keeps_clean_accuracy(case, trained):
    model, images, labels, clean = trained
    name, options = CASES[case]
    adversarial = build(name, options | {"eps": 0})(model, images, labels)
    assert torch.equal(adversarial, images)
    assert accuracy(model, adversarial, labels) == clean


def test_cw_loss_matches_the_formula_and_clips_at_kappa():
    from rtk_plugins.attacks.gradient import cw_loss

    logits = torch.tensor([[5.0, 1.0, 2.0], [1.0, 9.0, 3.0], [0.0, 5.0, 1.0], [100.0, 0.0, 10.0]])
    labels = torch.tensor([0, 2, 0, 0])
    # -ReLU(z_y - max_{j != y} z_j + kappa), row by row: margins 3, -6, -5, 90.
    assert cw_loss(logits, labels, 50.0).tolist() == [-53.0, -44.0, -45.0, -140.0]
    assert cw_loss(logits, labels, 0.0).tolist() == [-3.0, 0.0, 0.0, -90.0]  # clipped once misclassified
    assert cw_loss(logits, labels, 5.5).tolist() == [-8.5, 0.0, -0.5, -95.5]


def test_cw_pgd_defaults_are_shafahis_cw20():
    attack = build("cw-pgd", {})
    cfg = attack.config
    assert (attack.norm, cfg.steps, cfg.kappa, cfg.random_start) == ("Linf", 20, 50.0, True)
    assert attack.eps == pytest.approx(8 / 255) and attack.alpha == pytest.approx(2 / 255)


class Peak(torch.nn.Module):
    """Two classes; logit 1 - logit 0 = -k (x - c)^2 for pixel x = image[..., 0] and a peak c = image[..., 1]
    that the attack cannot move (detached: zero gradient, zero sign step). For label 0 the loss
    softplus(-k (x - c)^2) is highest at x = c, so sign steps that overshoot c lose loss again."""

    def __init__(self, k: float = 10.0):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(k))

    def forward(self, images):
        x, c = images.flatten(1)[:, 0], images.flatten(1)[:, 1].detach()
        return torch.stack([torch.zeros_like(x), -self.k * (x - c) ** 2], 1)


def test_pgd_keep_returns_the_best_iterate_not_the_last():
    # From x = 0.3, steps of 0.2 go 0.3 -> 0.5 -> 0.7. Peak 0.52: the best iterate is 0.5, the
    # last 0.7. Peak 0.65: the last, 0.7, is that example's best, but the batch-mean loss is
    # highest at step 1 (0.691 + 0.583 > 0.545 + 0.681), so best-batch moves both back to 0.5.
    model = Peak()
    images = torch.tensor([[0.3, 0.52], [0.3, 0.65]]).view(2, 1, 1, 2)
    labels = torch.zeros(2, dtype=torch.long)
    options = {"eps": 0.5, "alpha": 0.2, "steps": 2, "random_start": False}
    run = {keep: build("pgd", options | {"keep": keep})(model, images, labels) for keep in ("last", "best-batch",
                                                                                          "best-example")}
    pixel = {keep: adversarial[:, 0, 0, 0].tolist() for keep, adversarial in run.items()}
    assert pixel == {"last": pytest.approx([0.7, 0.7]), "best-batch": pytest.approx([0.5, 0.5]),
                     "best-example": pytest.approx([0.5, 0.7])}
    assert all(torch.equal(adversarial[..., 1], images[..., 1]) for adversarial in run.values())
    with torch.no_grad():  # each kept iterate's loss beats the last one's, as the batch mean or per example
        mean = {k: F.cross_entropy(model(v), labels).item() for k, v in run.items()}
        each = {k: F.cross_entropy(model(v), labels, reduction="none") for k, v in run.items()}
    assert mean["best-batch"] > mean["last"] and (each["best-example"] >= each["best-batch"]).all()
    assert (each["best-example"] >= each["last"]).all() and each["best-example"][1] > each["best-batch"][1]


def test_pgd_keeps_the_last_iterate_by_default_through_torchattacks(trained):
    model, images, labels, _ = trained
    assert build("pgd", {}).config.keep == "last"
    torch.manual_seed(0)
    ours = build("pgd", {"eps": LINF, "steps": 3})(model, images[:20], labels[:20])
    import torchattacks

    torch.manual_seed(0)
    reference = torchattacks.PGD(model.eval(), eps=LINF, alpha=LINF / 4, steps=3, random_start=True)(
        images[:20], labels[:20])
    assert torch.equal(ours, reference)


def test_best_iterate_pgd_follows_torchattacks_steps(trained):
    # With one step the last iterate beats the (clean) start on nearly every example: best-example
    # then returns torchattacks' own step wherever that step raised the loss.
    model, images, labels, _ = trained
    images, labels = images[:20], labels[:20]
    import torchattacks

    step = torchattacks.PGD(model.eval(), eps=LINF, alpha=LINF / 4, steps=1, random_start=False)(images, labels)
    best = build("pgd", {"eps": LINF, "steps": 1, "random_start": False, "keep": "best-example"})(
        model, images, labels)
    with torch.no_grad():
        raised = F.cross_entropy(model(step), labels, reduction="none") > F.cross_entropy(
            model(images), labels, reduction="none")
    assert raised.sum() >= 15
    assert torch.allclose(best[raised], step[raised], atol=1e-6) and torch.equal(best[~raised], images[~raised])


def test_fgsm_is_one_sign_step(trained):
    model, images, labels, _ = trained
    x = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), labels), x)
    expected = (images + 0.1 * grad.sign()).clamp(0, 1)
    assert torch.allclose(build("fgsm", {"eps": 0.1})(model, images, labels), expected, atol=1e-6)


def test_defaults_are_the_standard_ones():
    apgd, apgd_t, fab, square = (build(n, {}).config for n in ("apgd-ce", "apgd-t", "fab-t", "square"))
    assert (apgd.norm, apgd.steps, apgd.restarts, apgd.rho) == ("Linf", 100, 1, 0.75)
    assert (apgd_t.steps, apgd_t.restarts, apgd_t.target_classes) == (100, 1, 9)
    assert (fab.steps, fab.restarts, fab.target_classes) == (100, 1, 9)
    assert (square.queries, square.p_init, square.restarts, square.rescale_schedule) == (5000, 0.8, 1, False)
    assert all(c.eps == pytest.approx(8 / 255) for c in (apgd, apgd_t, fab, square))


@pytest.mark.parametrize("name", ["apgd-t", "fab-t"])
def test_targets_are_clamped_to_the_classes_there_are(name):
    torch.manual_seed(0)
    model = small_cnn(5).eval()
    images = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        labels = model(images).argmax(1)  # every example starts correct, so every target runs
    attack = build(name, {"eps": 0.3, "steps": 2})  # 9 targets by default, 4 exist
    check_threat_model(name, attack, images, attack(model, images, labels))
    (flag,) = attack.diagnostics()
    assert flag["name"] == "autoattack:n_classes" and flag["source"] == "autoattack"
    assert flag["message"].startswith(f"{name}: target_classes = 9") and "used 4 targets" in flag["message"]
    exact = build(name, {"eps": 0.3, "steps": 2, "target_classes": 4})
    exact(model, images, labels)
    assert exact.diagnostics() == []


class Flat(torch.nn.Module):
    """Logits that ignore the input: every gradient is zero, which APGD's own check reports."""

    def __init__(self):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor([3.0, 1.0, 0.0, -1.0]))

    def forward(self, x):
        return self.logits + 0 * x.flatten(1).sum(1, keepdim=True)


def test_reference_checks_become_flags():
    attack = build("apgd-dlr", {"steps": 2})
    attack(Flat(), torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    (flag,) = attack.diagnostics()
    assert flag["name"] == "autoattack:zero_gradients" and flag["message"].startswith("apgd-dlr: there are 4 points")
    assert "flags_doc" not in flag["message"]


@pytest.mark.parametrize(("name", "classes"), [("apgd-dlr", 2), ("apgd-t", 3)])
def test_dlr_losses_refuse_too_few_classes(name, classes):
    model = small_cnn(classes).eval()
    with pytest.raises(RtkError, match=r"needs at least \d classes, the model has %d .*issue #70" % classes):
        build(name, {"steps": 2})(model, torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("name", ["apgd-ce", "square"])
def test_reference_attacks_repeat_under_the_run_seed_and_spare_the_global_stream(name, trained):
    model, images, labels, _ = trained
    options = {"eps": LINF, "steps": 3} if name == "apgd-ce" else {"eps": LINF, "queries": 20}
    outputs = []
    for _ in range(2):
        torch.manual_seed(7)
        adversarial = build(name, options)(model, images[:20], labels[:20])
        outputs.append((adversarial, torch.rand(3)))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])
    torch.manual_seed(7)
    torch.randint(2**31 - 1, ())  # what the attack draws for its seed, and nothing else
    assert torch.equal(torch.rand(3), outputs[0][1])


ATTACK_TABLES = """
[[eval.attacks]]
name = "fgsm"
eps = "8/255"

[[eval.attacks]]
name = "cw-pgd"
label = "CW-20"
kappa = 50

[[eval.attacks]]
name = "cw-pgd"
label = "CW-20-L2"
norm = "L2"
eps = 0.5
alpha = 0.1

[[eval.attacks]]
name = "apgd-ce"
norm = "L2"
eps = 0.5
restarts = 2

[[eval.attacks]]
name = "apgd-dlr"
steps = 50
seed = 3

[[eval.attacks]]
name = "apgd-t"
target_classes = 4

[[eval.attacks]]
name = "fab-t"
alpha_max = 0.1
eta = 1.05
beta = 0.9

[[eval.attacks]]
name = "square"
queries = 1000
p_init = 0.8
loss = "ce"
"""


def test_every_attack_validates_in_a_recipe(cli, write_recipe):
    result = cli("validate", write_recipe(TINY_RECIPE + ATTACK_TABLES))
    assert result.exit_code == 0, result.output
    assert "is valid" in " ".join(result.output.split())  # rich wraps long lines


def test_bad_attack_options_are_named(cli, write_recipe):
    result = cli("validate", write_recipe(TINY_RECIPE + '[[eval.attacks]]\nname = "apgd-t"\ntarget_classes = 0\n'))
    message = " ".join(result.output.split())
    assert result.exit_code != 0 and "target_classes: must be at least 1" in message
    result = cli("validate", write_recipe(TINY_RECIPE + '[[eval.attacks]]\nname = "fgsm"\nnorm = "L2"\n'))
    assert result.exit_code != 0 and 'unknown key "norm"' in " ".join(result.output.split())
