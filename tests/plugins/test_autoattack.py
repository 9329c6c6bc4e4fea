"""rtk's ``autoattack``: the reference implementation unchanged (same adversarial images as calling
pyautoattack directly), torchattacks only with the standard settings forced, and AutoAttack's own
checks surfaced as flags.

Settings are AutoAttack's standard ones (100 iterations, 9 targets, Square 5000 queries) on a
small CNN and 64 digits: at eps 0.15 APGD-CE breaks most points at once and the rest still go
through APGD-T, FAB-T and Square. Only the flag tests cut iterations, through version "custom".
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from rtk.config.fields import ConfigValueError, build_config
from rtk.evaluation.robust_accuracy import check_threat_model
from rtk.registry import default_registry
from rtk_plugins.attacks import autoattack as backend_module
from rtk_plugins.attacks.autoattack import reference_autoattack, torchattacks_autoattack
from rtk_plugins.attacks import AutoAttackConfig
from tests.helpers import small_cnn, train_digits_cnn

EPS = 0.15  # Linf on digits (pixels in steps of 1/16): leaves a point or two that survive all four attacks
N = 64
FAST = {"version": "custom", "attacks_to_run": ["apgd-ce"], "iterations": 10, "n_restarts": 1}


def autoattack(**options):
    component = default_registry().get("attack", "autoattack")
    return component.factory(build_config(component.config, options))




def robust(model, images, labels) -> torch.Tensor:
    with torch.no_grad():
        return model(images).argmax(1) == labels


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained():
    """A small CNN trained 10 epochs on digits, and the first N test images: (model, images, labels)."""
    model, splits = train_digits_cnn(epochs=10, lr=1e-2, batch_size=128)
    images, labels = splits.test.take(torch.arange(N))
    assert robust(model, images, labels).float().mean() > 0.9
    return model, images, labels


@pytest.fixture(scope="module")
def reference(trained):
    """pyautoattack called directly, as its README does: the standard version, seed 0."""
    from pyautoattack import AutoAttack

    model, images, labels = trained
    adversary = AutoAttack(model, norm="Linf", eps=EPS, version="standard", seed=0, device="cpu")
    adversarial, _ = adversary.run_standard_evaluation(images, labels)
    return adversarial


@pytest.fixture(scope="module")
def through_rtk(trained):
    """rtk's autoattack (standard, reference backend) called on the model in a mixed train/eval mode."""
    model, images, labels = trained
    model.train()
    model.body[0].eval()
    modes = [m.training for m in model.modules()]
    attack = autoattack(eps=EPS)
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    adversarial = attack(model, images, labels)
    after = {"modes": [m.training for m in model.modules()], "rng_kept": torch.equal(torch.get_rng_state(), rng)}
    model.eval()
    return attack, adversarial, modes, after


def test_same_adversarial_images_as_the_reference(trained, reference, through_rtk):
    model, images, labels = trained
    _, adversarial, _, _ = through_rtk
    assert torch.equal(robust(model, adversarial, labels), robust(model, reference, labels))
    assert torch.equal(adversarial, reference)  # bit for bit: same settings, seed, batches and order
    # Every attack had points to work on, so the comparison covers APGD-T, FAB-T and Square too.
    assert 0 < robust(model, adversarial, labels).sum() < robust(model, images, labels).sum()


def test_output_is_in_the_ball_and_the_box_and_modes_are_restored(trained, through_rtk):
    model, images, labels = trained
    attack, adversarial, modes, after = through_rtk
    check_threat_model("autoattack", attack, images, adversarial)
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert (adversarial - images).abs().amax() <= EPS + 1e-6
    kept = robust(model, adversarial, labels)
    assert torch.equal(adversarial[kept], images[kept])  # unbroken points come back clean, as AutoAttack returns them
    assert after["modes"] == modes
    assert after["rng_kept"]  # the sub-attacks reseed torch; the caller's random stream is left as it was
    assert attack.diagnostics() == []  # a deterministic logit model: none of AutoAttack's checks fire


def test_backends_agree(trained, through_rtk):
    model, images, labels = trained
    _, reference_adversarial, _, _ = through_rtk
    attack = autoattack(eps=EPS, backend="torchattacks")
    adversarial = attack(model, images, labels)
    check_threat_model("autoattack", attack, images, adversarial)
    ours, theirs = robust(model, reference_adversarial, labels), robust(model, adversarial, labels)
    assert abs(int(ours.sum()) - int(theirs.sum())) <= 3
    assert int((ours != theirs).sum()) <= 3
    names = [flag["name"] for flag in attack.diagnostics()]
    assert names == ["autoattack:backend"]


def test_torchattacks_runs_with_the_standard_settings_forced():
    model = small_cnn(100)
    adversary, names, feasible = torchattacks_autoattack(
        model, build_config(AutoAttackConfig, {"backend": "torchattacks"}), 100)
    assert names == feasible == ["apgd-ce", "apgd-t", "fab-t", "square"]
    apgd, apgd_t, fab_t, square = adversary._autoattack.attacks
    assert apgd.steps == apgd_t.steps == fab_t.steps == 100  # torchattacks' default is 10
    assert apgd.n_restarts == apgd_t.n_restarts == fab_t.n_restarts == square.n_restarts == 1
    assert apgd_t.n_target_classes == fab_t.n_target_classes == 9  # torchattacks' default would be 99
    assert fab_t.multi_targeted and apgd.loss == "ce"
    assert (square.n_queries, square.p_init, square.rescale_schedule) == (5000, 0.8, False)

    plus, names, _ = torchattacks_autoattack(
        model, build_config(AutoAttackConfig, {"backend": "torchattacks", "version": "plus"}), 100)
    assert names == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    assert [a.n_restarts for a in plus._autoattack.attacks] == [5, 5, 5, 1, 1, 1]
    assert all(a.steps == 100 for a in plus._autoattack.attacks if hasattr(a, "steps"))


def test_custom_overrides_reach_the_reference():
    model = small_cnn(10)
    cfg = build_config(AutoAttackConfig, {"version": "custom", "attacks_to_run": ["apgd-ce", "square"]})
    adversary = reference_autoattack(model, cfg, "cpu")
    assert adversary.attacks_to_run == ["apgd-ce", "square"]
    # The constructor's values (the study's setting).
    assert adversary.apgd.n_restarts == 5 and adversary.apgd.n_iter == 100
    cfg = build_config(AutoAttackConfig, {"version": "custom", "attacks_to_run": ["apgd-ce", "fab"], "n_restarts": 2,
                                          "iterations": 50})
    adversary = reference_autoattack(model, cfg, "cpu")
    assert adversary.apgd.n_restarts == adversary.fab.n_restarts == 2
    assert adversary.apgd.n_iter == adversary.apgd_targeted.n_iter == adversary.fab.n_iter == 50
    assert (adversary.apgd.n_iter_2, adversary.apgd.n_iter_min, adversary.apgd.size_decr) == (11, 3, 1)
    standard = reference_autoattack(model, build_config(AutoAttackConfig, {}), "cpu")
    assert standard.attacks_to_run == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert (standard.apgd.n_restarts, standard.apgd_targeted.n_target_classes, standard.fab.n_target_classes,
            standard.square.n_queries, standard.apgd.n_iter) == (1, 9, 9, 5000, 100)


class Noise(nn.Module):
    """Gaussian input noise in every mode: a randomised defence that eval() does not switch off."""

    def forward(self, x):
        return (x + 0.05 * torch.randn_like(x)).clamp(0, 1)


def test_random_forward_pass_is_flagged(trained):
    model, images, labels = trained
    attack = autoattack(eps=EPS, **FAST)
    attack(nn.Sequential(Noise(), model), images[:16], labels[:16])
    flags = {flag["name"]: flag for flag in attack.diagnostics()}
    assert "autoattack:randomized" in flags
    flag = flags["autoattack:randomized"]
    assert flag["source"] == "autoattack" and "randomized defense" in flag["message"] and "\n" not in flag["message"]
    assert "flags_doc.md" not in flag["message"]  # a file of the reference's repository, not shipped with the package
    attack(nn.Sequential(Noise(), model), images[:16], labels[:16])  # flags accumulate over calls (batches)
    (randomized,) = [f for f in attack.diagnostics() if f["name"] == "autoattack:randomized"]
    assert randomized["message"].endswith("(reported 2 times)")


class ConstantLogits(nn.Module):
    """Logits that ignore the input: every gradient is exactly zero."""

    def forward(self, x):
        return x.flatten(1)[:, :10] * 0 + torch.arange(10.0)


def test_zero_gradients_are_flagged(trained):
    _, images, _ = trained
    # The reference checks gradients of the DLR losses only.
    attack = autoattack(eps=EPS, **(FAST | {"attacks_to_run": ["apgd-dlr"]}))
    attack(ConstantLogits(), images[:8], torch.full((8,), 9))
    flags = {flag["name"]: flag["message"] for flag in attack.diagnostics()}
    assert "8 points with zero gradient" in flags["autoattack:zero_gradients"]


def test_check_warnings_without_a_logger_become_flags():
    # pyautoattack.checks warns instead of logging when given no logger; other warnings pass through.
    import warnings

    from pyautoattack import checks

    from rtk_plugins.attacks.autoattack import Flags, captured_checks

    flags = Flags()
    with pytest.warns(UserWarning, match="unrelated"):
        with captured_checks(flags, verbose=False):
            checks.check_n_classes(3, ["apgd-t"], 9, 9)
            warnings.warn("unrelated", UserWarning)
    assert [flag["name"] for flag in flags.as_list()] == ["autoattack:n_classes"]


def test_softmax_output_is_flagged(trained):
    model, images, labels = trained
    attack = autoattack(eps=EPS, **FAST)
    attack(nn.Sequential(model, nn.Softmax(dim=1)), images[:16], labels[:16])
    assert [flag["name"] for flag in attack.diagnostics()] == ["autoattack:softmax_output"]


@pytest.mark.parametrize("backend", ["pyautoattack", "torchattacks"])
def test_too_few_classes_are_flagged_and_clamped(backend, monkeypatch):
    # The reference itself stops with IndexError here: APGD-T's loss reads the 4th largest of 3 logits.
    torch.manual_seed(0)
    model = small_cnn(3).eval()
    images = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        labels = model(images).argmax(1)
    if backend == "pyautoattack":
        attack = autoattack(eps=0.02, version="custom", attacks_to_run=["apgd-ce", "apgd-t", "fab-t"], iterations=5,
                            n_restarts=1)
    else:
        attack = autoattack(eps=0.02, backend="torchattacks")
        adversary, names, feasible = backend_module.torchattacks_autoattack(model, attack.config, 3)
        assert feasible == ["apgd-ce", "fab-t", "square"] and adversary._autoattack.attacks[1].n_target_classes == 2
        forced = backend_module.torchattacks_autoattack

        def cut_down(*args):  # the forced settings are checked above; the run itself only needs to finish
            adversary, names, feasible = forced(*args)
            for sub in adversary._autoattack.attacks:
                sub.steps, sub.n_queries = 5, 50
            return adversary, names, feasible

        monkeypatch.setattr(backend_module, "torchattacks_autoattack", cut_down)
    adversarial = attack(model, images, labels)
    check_threat_model("autoattack", attack, images, adversarial)
    flags = {flag["name"]: flag["message"] for flag in attack.diagnostics()}
    assert "only 3 classes" in flags["autoattack:n_classes"]
    clamped = flags["autoattack:targets_clamped"]
    assert "2 target classes" in clamped and "skipped apgd-t" in clamped


def test_zero_eps_returns_the_clean_images(trained):
    model, images, labels = trained
    assert torch.equal(autoattack(eps=0.0)(model, images[:4], labels[:4]), images[:4])


def test_defaults_and_config_errors():
    component = default_registry().get("attack", "autoattack")
    assert component.plugin.distribution == "rtk"
    cfg = build_config(AutoAttackConfig, {})
    assert (cfg.norm, cfg.eps, cfg.version, cfg.backend, cfg.seed, cfg.verbose) == (
        "Linf", 8 / 255, "standard", "pyautoattack", 0, False)
    assert build_config(AutoAttackConfig, {"eps": "8/255"}).eps == 8 / 255
    for table, match in [
        ({"version": "custom"}, "needs attacks_to_run"),
        ({"attacks_to_run": ["apgd-ce"]}, 'version "custom" only'),
        ({"n_restarts": 2}, 'version "custom" only'),
        ({"iterations": 10, "version": "plus"}, 'version "custom" only'),
        ({"version": "custom", "attacks_to_run": ["apgd-ce", "apgd-ce"]}, "twice"),
        ({"version": "custom", "attacks_to_run": ["square"], "backend": "torchattacks"}, "pyautoattack"),
        ({"version": "custom", "attacks_to_run": ["pgd"]}, "apgd-ce"),
        ({"norm": "L1"}, 'expected one of "Linf"'),
    ]:
        with pytest.raises(ConfigValueError, match=match):
            build_config(AutoAttackConfig, table)
