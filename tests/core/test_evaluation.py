"""The evaluation protocol (attack order, per-class accuracy, per-batch seeding, flags), `rtk eval`,
and resumable evaluations (a SIGKILLed evaluation resumed gives the uninterrupted numbers)."""
import hashlib
import json
import math
import os
import time
import types
from dataclasses import dataclass

import pytest
import torch

import rtk
from rtk.evaluation.attacks import Attack
from rtk.config.fields import option
from rtk.data import apply_options
from rtk.errors import RtkError
from rtk.evaluation.robust_accuracy import EvalState, evaluate
from rtk.config.recipe import load_recipe
from rtk.config.schema import EvalConfig
from rtk.registry import registry_with, using
from rtk.stages.runner import Runner
from rtk.stages.source import SourceStage
from tests.helpers import build, quiet_context
from tests.helpers import TINY_RECIPE
from tests.helpers import kill_cli_at_marker

pytestmark = pytest.mark.usefixtures("one_thread")

SEEN: dict[str, list[str]] = {}
FOOLED: dict[str, list[str]] = {}


def key(image: torch.Tensor) -> str:
    return hashlib.sha1(image.detach().cpu().numpy().tobytes()).hexdigest()


@dataclass
class FakeConfig:
    fool: float = option(0.0, min=0.0, max=1.0, help="fraction of each call's inputs to fool")
    random: bool = option(False, help="fool each input with probability `fool` (torch's global RNG)")
    stop_after: int = option(0, min=0, help="raise KeyboardInterrupt on this call (0: never)")


class FakeAttack(Attack):
    """Fools an input by swapping in a batch-mate of another class (a legal Linf eps=1 attack),
    and records what it saw and fooled, keyed by image content."""

    norm, eps = "Linf", 1.0
    calls = 0

    def __init__(self, name: str, config: FakeConfig):
        self.name, self.config = name, config

    def perturb(self, model, images, labels):
        FakeAttack.calls += 1
        if self.config.stop_after and FakeAttack.calls >= self.config.stop_after:
            raise KeyboardInterrupt
        n = len(images)
        fool = self.config.fool
        chosen = torch.rand(n) < fool if self.config.random else torch.arange(n) < math.ceil(fool * n)
        out = images.clone()
        SEEN.setdefault(self.name, []).extend(key(x) for x in images)
        for i in chosen.nonzero().flatten().tolist():
            other = (labels != labels[i]).nonzero().flatten()
            if len(other):
                out[i] = images[other[0]]
                FOOLED.setdefault(self.name, []).append(key(images[i]))
        return out

    def diagnostics(self):
        return [{"name": f"{self.name}-noticed", "message": "something odd", "source": self.name}]


class HangingPGD(Attack):
    """rtk's PGD, except that in a process whose environment says RTK_TEST_HANG=FILE:K it writes
    FILE and sleeps before its K-th call: a subprocess to SIGKILL at a known batch."""

    calls = 0

    def __init__(self, config):
        from rtk_plugins.attacks.pgd import PGDAttack

        self.pgd = PGDAttack(config)
        self.norm, self.eps = self.pgd.norm, self.pgd.eps

    def perturb(self, model, images, labels):
        HangingPGD.calls += 1
        marker, _, at = os.environ.get("RTK_TEST_HANG", "").partition(":")
        if marker and HangingPGD.calls == int(at):
            open(marker, "w").close()
            time.sleep(600)
        return self.pgd.perturb(model, images, labels)


def register_fakes(register):
    from rtk_plugins.attacks import PGDConfig

    for name in ("breaker", "counter"):
        register(name, lambda config, name=name: FakeAttack(name, config), config=FakeConfig, summary="test attack")
    register("hanging-pgd", HangingPGD, config=PGDConfig, summary="PGD that can hang")


def make_fake_registry():
    plugin = types.ModuleType("fake_attacks")
    plugin.register_attacks = rtk.hookimpl(register_fakes)
    return registry_with(plugin)


@pytest.fixture(scope="module")
def fake_registry():
    return make_fake_registry()


@pytest.fixture(autouse=True)
def clear_records():
    SEEN.clear()
    FOOLED.clear()
    FakeAttack.calls = 0


@pytest.fixture(scope="module")
def digits():
    from rtk_plugins.datasets import DigitsConfig

    config = DigitsConfig(classes=[5, 6, 7, 8, 9])
    return apply_options(build("dataset", "digits"), config)


def small_cnn(num_classes=5):
    return build("model", "small-cnn", {"channels": [8, 16], "feature_dim": 32}, num_classes=num_classes)


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """(model, weights file): a small CNN trained on digits 5-9 in about a second."""
    from rtk.models import save_weights

    torch.manual_seed(0)
    model = small_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    images, labels = digits.train.take(torch.arange(len(digits.train)))
    for _ in range(10):
        for batch in torch.randperm(len(labels)).split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()
    model.eval()
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    save_weights(model, path)
    return model, path


def eval_args(weights, *extra):
    return ["eval", "--model", "small-cnn", "--model-option", "channels=[8,16]", "--model-option", "feature_dim=32",
            "--weights", weights, "--dataset", "digits", "--data", "classes=[5,6,7,8,9]", "--seed", "0",
            "--device", "cpu", "--quiet", *extra]


def ctx(seed=0):
    return quiet_context(seed=seed)


@pytest.mark.parametrize("order", ["independent", "sequential"])
def test_attack_order(order, trained, fake_registry, cli, tmp_path):
    with using(fake_registry):
        result = cli(*eval_args(trained[1], "--attack", "breaker", "--attack", "counter", "--n", "80",
                                "--batch-size", "20", "--set", "eval.attacks.0.fool=0.5",
                                "--set", f"eval.attack_order={order}",
                                "--set", "eval.sanity=false", "--out", tmp_path / "out"))
    assert result.exit_code == 0, result.stderr
    run = json.loads((tmp_path / "out" / "results.json").read_text())["runs"][0]
    m, n = run["metrics"], run["n_eval"]
    assert run["attack_order"] == order
    broken = set(FOOLED["breaker"])
    assert len(SEEN["breaker"]) == round(m["clean"] * n) and broken
    assert m["breaker"] * n == pytest.approx(len(SEEN["breaker"]) - len(broken))
    assert m["robust"] == m["breaker"]
    if order == "sequential":
        assert not broken & set(SEEN["counter"])  # an example already broken is never attacked again
        assert len(SEEN["counter"]) == len(SEEN["breaker"]) - len(broken)
        assert m["counter"] == m["breaker"]  # cumulative column
    else:
        assert sorted(SEEN["counter"]) == sorted(SEEN["breaker"])
        assert m["counter"] == m["clean"]  # its own accuracy: the counter fools nothing


def test_per_class_matches_a_hand_computation(trained, digits):
    model, _ = trained
    from rtk_plugins.attacks import PGDConfig
    from rtk_plugins.attacks.pgd import PGDAttack

    attacks = [("PGD", PGDAttack(PGDConfig(eps=0.1, steps=3)))]
    labels = digits.test.labels
    indices = (labels <= 1).nonzero().flatten()[:30]  # classes 2-4 absent
    config = EvalConfig(batch_size=8, per_class=True)
    result = evaluate(model, digits.test, attacks, ctx(), config, indices, num_classes=5)
    for metric in ("clean", "PGD", "robust"):
        rows = result["correct"][metric].tolist()
        for c in range(2):
            mine = [ok for ok, y in zip(rows, labels[indices].tolist()) if y == c]
            assert result["per_class"][metric][c] == pytest.approx(sum(mine) / len(mine))
        assert all(math.isnan(v) for v in result["per_class"][metric][2:])


def test_per_class_in_results(trained, cli, tmp_path):
    result = cli(*eval_args(trained[1], "--n", "40", "--set", "eval.per_class=true", "--set", "eval.sanity=false",
                            "--out", tmp_path / "out"))
    assert result.exit_code == 0, result.stderr
    run = json.loads((tmp_path / "out" / "results.json").read_text())["runs"][0]
    # no attack, so no robust column
    assert run["class_names"] == ["5", "6", "7", "8", "9"] and set(run["per_class"]) == {"clean"}
    assert len(run["per_class"]["clean"]) == 5


def test_per_batch_seeding_makes_examples_independent(trained, digits, fake_registry):
    model, _ = trained
    from rtk_plugins.attacks import PGDConfig
    from rtk_plugins.attacks.pgd import PGDAttack

    def attacks():
        return [("random", fake_registry.get("attack", "breaker").factory(FakeConfig(fool=0.5, random=True))),
                ("PGD", PGDAttack(PGDConfig(eps=0.15, steps=2)))]

    def run(indices, seed=0):
        result = evaluate(model, digits.test, attacks(), ctx(seed), EvalConfig(batch_size=10), torch.tensor(indices))
        return {k: v.tolist() for k, v in result["correct"].items()}

    full = run(list(range(60)))
    torch.rand(1000)  # what ran before must not matter
    tail = run(list(range(30, 60)))  # earlier batches skipped
    head = run(list(range(30)))  # run after the tail
    for name, values in full.items():
        assert head[name] + tail[name] == values, name
    assert run(list(range(60)), seed=1)["random"] != full["random"]  # the attack's randomness is seeded


def test_flags_reach_results(trained, fake_registry, cli, tmp_path):
    with using(fake_registry):
        result = cli(*eval_args(trained[1], "--attack", "breaker", "--n", "20", "--set", "eval.sanity=false",
                                "--out", tmp_path / "out"))
    assert result.exit_code == 0, result.stderr
    (run,) = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
    flag = {"attack": "breaker", "name": "breaker-noticed", "message": "something odd", "source": "breaker"}
    assert flag in run["flags"]
    assert "breaker-noticed" in result.stdout and "something odd" in result.stdout


def test_sanity_flags_appear_when_on(trained, digits):
    from rtk.evaluation.sanity import SanityAttack
    from rtk_plugins.attacks import PGDConfig
    from rtk_plugins.attacks.pgd import PGDAttack

    config = PGDConfig(eps=0.1, steps=2)
    noisy = torch.nn.Sequential(trained[0], NoisyLogits())  # a random forward pass: the checks must say so
    try:
        result = evaluate(noisy, digits.test, [("PGD", PGDAttack(config))], ctx(),
                          EvalConfig(batch_size=10, sanity_n=10), torch.arange(20),
                          sanity_attacks=[SanityAttack.registered("pgd", config, label="PGD")])
    except NotImplementedError:
        pytest.skip("rtk.evaluation.sanity.sanity_checks is not implemented yet")
    assert result["flags"] and all({"name", "message"} <= set(flag) for flag in result["flags"])


class NoisyLogits(torch.nn.Module):
    def forward(self, x):
        return x + torch.randn_like(x)


def test_rtk_eval_matches_rtk_run(trained, cli, tmp_path):
    out = tmp_path / "eval"
    result = cli(*eval_args(trained[1], "--attack", "pgd", "--eps", "1/10", "--steps", "3", "--n", "50",
                            "--set", "eval.sanity=false", "--out", out))
    assert result.exit_code == 0, result.stderr
    assert "pgd" in result.stdout and "results:" in result.stdout
    evaluated = json.loads((out / "results.json").read_text())
    rerun = cli("run", out / "recipe.resolved.toml", "--out", tmp_path / "run", "--quiet")
    assert rerun.exit_code == 0, rerun.stderr
    ran = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(evaluated) == set(ran) and set(evaluated["runs"][0]) == set(ran["runs"][0])
    assert evaluated["runs"][0]["metrics"] == ran["runs"][0]["metrics"]
    assert set(evaluated["runs"][0]["metrics"]) == {"clean", "pgd", "robust"} and evaluated["runs"][0]["n_eval"] == 50
    resolved = load_recipe(out / "recipe.resolved.toml").raw
    assert resolved["eval"]["attacks"] == [{"name": "pgd", "eps": "1/10", "steps": 3}]
    assert resolved["source"]["num_classes"] == 5  # read from the weights file


@pytest.mark.parametrize("args, expected", [
    (["--weights", "nowhere.safetensors", "--dataset", "digits"], "nowhere.safetensors"),
    (["--attack", "pgdd"], "did you mean 'pgd'"),
    (["--attack", "pgd", "--data", "classes"], "KEY=VALUE"),
    (["--dataset", "digitz"], "did you mean 'digits'"),
    (["--steps", "3"], "--steps"),
])
def test_rtk_eval_errors_are_one_line(args, expected, trained, cli, tmp_path):
    result = cli(*eval_args(trained[1], "--out", tmp_path / "out"), *args)
    assert result.exit_code == 2 and expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def state_file(out):
    return out / "eval-state" / "run-0.safetensors"


def test_sigkill_then_resume_gives_the_uninterrupted_numbers(trained, fake_registry, cli, tmp_path):
    args = eval_args(trained[1], "--attack", "hanging-pgd", "--eps", "0.15", "--steps", "3", "--n", "60",
                     "--batch-size", "10", "--set", "eval.sanity=false")
    out, marker = tmp_path / "killed", tmp_path / "hanging"
    # The same CLI as `python -m rtk`, with the test's attack plugin added to the registry.
    stderr = kill_cli_at_marker("tests.core.test_evaluation:make_fake_registry", [*args, "--out", out], marker,
                                {"RTK_TEST_HANG": f"{marker}:3"})
    assert marker.exists(), f"the evaluation never reached its third batch: {stderr!r}"
    assert not (out / "results.json").exists() and (out / "checkpoints" / "run-0.safetensors").is_file()
    from safetensors.torch import load_file

    assert int(load_file(str(state_file(out)))["done"]) == 20  # two batches saved before the kill

    with using(fake_registry):
        refused = cli(*args[:-2], "--set", "eval.sanity=true", "--out", out, "--resume")
        assert refused.exit_code == 2 and "different recipe" in refused.stderr and "eval.sanity" in refused.stderr
        resumed = cli(*args, "--out", out, "--resume")
        assert resumed.exit_code == 0, resumed.stderr
        assert not (out / "eval-state").exists()
        uninterrupted = cli(*args, "--out", tmp_path / "whole")
        assert uninterrupted.exit_code == 0, uninterrupted.stderr
        first, second = (json.loads((d / "results.json").read_text())["runs"][0] for d in (out, tmp_path / "whole"))
        assert first["metrics"] == second["metrics"] and first["flags"] == second["flags"] and first["n_eval"] == 60
        again = cli(*args, "--out", out, "--resume")
        assert again.exit_code == 2 and "complete" in again.stderr


def test_mismatched_state_file_is_refused(trained, digits, fake_registry, tmp_path):
    model, _ = trained
    path, batches = tmp_path / "state.safetensors", EvalConfig(batch_size=10)
    stopper = fake_registry.get("attack", "counter").factory(FakeConfig(stop_after=3))
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, digits.test, [("counter", stopper)], ctx(), batches, torch.arange(50), state=EvalState(path))
    assert path.is_file()
    counter = fake_registry.get("attack", "counter").factory(FakeConfig())
    for indices, other in ((torch.arange(1, 51), model), (torch.arange(50), small_cnn())):
        with pytest.raises(RtkError, match="does not match this evaluation"):
            evaluate(other, digits.test, [("counter", counter)], ctx(), batches, indices,
                     state=EvalState(path, resume=True))
    FakeAttack.calls = 0
    resumed = evaluate(model, digits.test, [("counter", counter)], ctx(), batches, torch.arange(50),
                       state=EvalState(path, resume=True))
    assert FakeAttack.calls == 3  # batches 3-5 only: two were saved before the interruption
    assert len(resumed["correct"]["clean"]) == 50


def test_rtk_run_resume_reuses_the_target_checkpoint(write_recipe, fake_registry, tmp_path, monkeypatch):
    text = TINY_RECIPE.replace('name = "pgd"\nlabel = "PGD-5"\neps = 0.1\nsteps = 5',
                               'name = "counter"\nfool = 0.3\nrandom = true\nstop_after = 4')
    text = text.replace("[eval]\nn = 60", "[eval]\nn = 60\nbatch_size = 10\nsanity = false")
    path = write_recipe(text)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        Runner(load_recipe(path), fake_registry, out, show_progress=False).run()
    assert state_file(out).is_file() and not (out / "results.json").exists()

    whole = Runner(load_recipe(path, overrides=["eval.attacks.0.stop_after=0"]), fake_registry, tmp_path / "whole",
                   show_progress=False).run()["runs"][0]
    with pytest.raises(RtkError, match="different recipe"):
        Runner(load_recipe(path, overrides=["eval.attacks.0.stop_after=0"]), fake_registry, out, resume=True)
    # The stop is on the 4th call of the process; fresh counts let the resumed run finish.
    FakeAttack.calls = -100
    monkeypatch.setattr(SourceStage, "model", lambda *a: pytest.fail("resuming must not train again"))
    resumed = Runner(load_recipe(path), fake_registry, out, show_progress=False, resume=True).run()["runs"][0]
    assert resumed["metrics"] == whole["metrics"]
    assert resumed["source"]["key"] == whole["source"]["key"] and resumed["source"]["clean"] == whole["source"]["clean"]
    with pytest.raises(RtkError, match="complete"):
        Runner(load_recipe(path), fake_registry, out, resume=True)
