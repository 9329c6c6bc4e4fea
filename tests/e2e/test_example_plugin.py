"""The third-party plugin example in examples/rtk-plugin-example, tested without pip-installing it.

A fake ``*.dist-info`` folder (METADATA + entry_points.txt, built from the example's own
pyproject.toml) on sys.path makes importlib.metadata report the entry point exactly as an
installed distribution would, which is how pytest tests its own plugin discovery.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from torch import nn

from rtk.stages.context import RunContext
from rtk.data import DataSplits, ImageSet
from rtk.errors import RtkError
from rtk.evaluation.robust_accuracy import check_threat_model
from rtk.models import RtkModel
from rtk.plugins import load_plugins
from rtk.registry import Registry

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "rtk-plugin-example"
SRC = EXAMPLE / "src"
RECIPE = EXAMPLE / "recipe.toml"
COMPONENTS = {("attack", "uniform-noise"), ("strategy", "nearest-class-mean")}


def write_fake_distribution(root: Path) -> Path:
    """A dist-info folder equivalent to `pip install`-ing the example (its pyproject, not a copy)."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    info = root / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    entry_points = project["entry-points"]["rtk"]
    (info / "entry_points.txt").write_text("[rtk]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    return info


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """The example plugin discoverable through the "rtk" entry-point group, for this test only."""
    write_fake_distribution(tmp_path / "site")
    monkeypatch.syspath_prepend(str(SRC))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delenv("RTK_DISABLE_PLUGINS", raising=False)
    return tmp_path / "site"


@pytest.fixture
def plugin(monkeypatch):
    monkeypatch.syspath_prepend(str(SRC))
    return importlib.import_module("rtk_plugin_example")


def registered(plugin, kind: str, name: str):
    """The factory ``plugin`` registers for ``name``: its "module:Class" string, imported now."""
    from rtk.registry import registry_with

    return registry_with(plugin, entry_points=False).get(kind, name).factory


@pytest.fixture
def uniform_noise(plugin):
    return registered(plugin, "attack", "uniform-noise")


@pytest.fixture
def nearest_class_mean(plugin):
    return registered(plugin, "strategy", "nearest-class-mean")


def subprocess_env(site: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.pop("RTK_DISABLE_PLUGINS", None)
    return env


# --- discovery ----------------------------------------------------------------------------------

def test_entry_point_registers_both_components_with_their_distribution(installed):
    registry = Registry(*load_plugins())
    for kind, name in sorted(COMPONENTS):
        component = registry.get(kind, name)
        assert component.plugin.distribution == "rtk-plugin-example"
        assert component.plugin.name == "rtk_plugin_example" and component.plugin.version == "0.1.0"
        assert component.summary and isinstance(component.target, str)  # lazy: "module:Class"
    assert registry.get("attack", "uniform-noise").trait("sanity_fields") == {"eps": "eps"}
    assert registry.get("strategy", "nearest-class-mean").trait("takes_objective") is False


@pytest.mark.parametrize("blocked", ["example", "rtk_plugin_example", "rtk-plugin-example"])
def test_disable_plugins_hides_the_example(installed, monkeypatch, blocked):
    assert any(ep.name == "example" for ep in importlib.metadata.entry_points(group="rtk"))
    monkeypatch.setenv("RTK_DISABLE_PLUGINS", blocked)
    registry = Registry(*load_plugins())
    for kind, name in COMPONENTS:
        assert name not in registry.names(kind)
    assert "pgd" in registry.names("attack")  # only the example is blocked


def test_configs_document_every_option_and_their_defaults(plugin):
    from rtk.config.fields import describe

    for config in (plugin.UniformNoiseConfig, plugin.NearestClassMeanConfig):
        assert all(row["help"] for row in describe(config))
        assert "Defaults:" in config.__doc__
    assert "Mensink" in plugin.NearestClassMeanConfig.__doc__
    defaults = {row["name"]: row["default"] for row in describe(plugin.UniformNoiseConfig)}
    assert defaults["eps"] == pytest.approx(8 / 255)
    assert {row["name"]: row["default"] for row in describe(plugin.NearestClassMeanConfig)}["normalize"] is True


def test_cli_lists_and_runs_the_example_recipe(tmp_path):
    site = tmp_path / "site"
    write_fake_distribution(site)
    env = subprocess_env(site)

    # Loading plugins must stay cheap: the example's top-level module may not pull in torch.
    light = subprocess.run([sys.executable, "-c", "import sys, rtk_plugin_example; assert 'torch' not in sys.modules"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert light.returncode == 0, light.stderr

    listed = subprocess.run([sys.executable, "-m", "rtk", "list-plugins", "--json"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    rows = {(row["kind"], row["name"]): row for row in json.loads(listed.stdout)}
    for key in COMPONENTS:
        assert rows[key]["distribution"] == "rtk-plugin-example"

    out = tmp_path / "out"
    ran = subprocess.run([sys.executable, "-m", "rtk", "run", str(RECIPE), "--profile", "smoke", "--out", str(out),
                          "--quiet"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    attacks = tomllib.loads(RECIPE.read_text())["eval"]["attacks"]
    assert {a["name"] for a in attacks} == {"pgd", "uniform-noise"}
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and results["runs"]
    for run in results["runs"]:
        metrics = run["metrics"]
        for label in ["clean", *(a["label"] for a in attacks)]:
            assert 0.0 <= metrics[label] <= 1.0, (label, metrics)
        # The point of the baseline: random noise must not rival a gradient attack.
        labels = {a["name"]: a["label"] for a in attacks}
        assert metrics[labels["uniform-noise"]] >= metrics[labels["pgd"]]


# --- uniform-noise ------------------------------------------------------------------------------

def tiny_model(num_classes: int = 3) -> RtkModel:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5))
    return RtkModel(body, nn.Linear(8, num_classes), feature_dim=8, block_names=["1"])


class ThresholdModel(nn.Module):
    """Class 1 exactly when pixel 0 exceeds ``threshold``: only rare noise draws fool it."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, x):
        fooled = x.flatten(1)[:, 0] > self.threshold
        return torch.stack([~fooled, fooled], 1).float()


def test_uniform_noise_stays_in_the_ball_and_the_image_box(plugin, uniform_noise):
    torch.manual_seed(1)
    images = torch.rand(64, 1, 4, 4)
    images[:, :, 0] = 0.0  # pixels at the box edges: clamping must keep them inside
    images[:, :, 1] = 1.0
    labels = torch.randint(0, 3, (64,))
    attack = uniform_noise(plugin.UniformNoiseConfig(eps=0.1, samples=3))
    adversarial = attack(tiny_model(), images, labels)
    assert adversarial.shape == images.shape and not adversarial.requires_grad
    assert (adversarial - images).abs().max() <= 0.1 + 1e-6
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0
    assert (adversarial != images).any()
    assert attack.norm == "Linf" and attack.eps == 0.1
    check_threat_model("uniform-noise", attack, images, adversarial)


def test_uniform_noise_runs_in_eval_mode_and_restores_each_module_mode(plugin, uniform_noise):
    model = tiny_model()
    model.train()
    model.body[2].eval()  # a mixed state, as strategies with frozen BatchNorm leave it
    before = [m.training for m in model.modules()]
    seen = []
    model.body[4].register_forward_hook(lambda module, args, out: seen.append(module.training))
    attack = uniform_noise(plugin.UniformNoiseConfig(eps=0.05, samples=2))
    attack(model, torch.rand(8, 1, 4, 4), torch.zeros(8, dtype=torch.long))
    assert seen and not any(seen)
    assert [m.training for m in model.modules()] == before


def test_uniform_noise_is_best_of_k_draws(plugin, uniform_noise):
    # Per draw P(pixel 0 > 0.58) = P(noise > 0.08 with eps 0.1) = 0.1; best of 30 fools ~96%.
    images = torch.full((400, 1, 2, 2), 0.5)
    labels = torch.zeros(400, dtype=torch.long)
    model = ThresholdModel(0.58)

    def fooled_rate(samples):
        torch.manual_seed(0)
        attack = uniform_noise(plugin.UniformNoiseConfig(eps=0.1, samples=samples))
        return (model(attack(model, images, labels)).argmax(1) != labels).float().mean().item()

    assert 0.03 < fooled_rate(1) < 0.2
    assert fooled_rate(30) > 0.85
    no_noise = uniform_noise(plugin.UniformNoiseConfig(eps=0.0))
    assert torch.equal(no_noise(model, images, labels), images)


# --- nearest-class-mean -------------------------------------------------------------------------

def clustered_splits(num_classes: int = 3, per_class: int = 40, seed: int = 0) -> DataSplits:
    """Tight clusters around well-separated random centres in [0, 1]^16 (as 1x4x4 images)."""
    g = torch.Generator().manual_seed(seed)
    centres = 0.2 + 0.6 * torch.rand(num_classes, 16, generator=g)

    def draw(n):
        labels = torch.arange(num_classes).repeat_interleave(n)
        images = (centres[labels] + 0.02 * torch.randn(len(labels), 16, generator=g)).clamp(0, 1)
        return ImageSet(images.view(-1, 1, 4, 4), labels)

    return DataSplits(draw(per_class), draw(10), num_classes=num_classes)


def brute_force_ncm(train_features, train_labels, features, num_classes, normalize):
    if normalize:
        train_features = nn.functional.normalize(train_features, dim=1)
        means = torch.stack([train_features[train_labels == c].mean(0) for c in range(num_classes)])
        return (nn.functional.normalize(features, dim=1) @ nn.functional.normalize(means, dim=1).T).argmax(1)
    means = torch.stack([train_features[train_labels == c].mean(0) for c in range(num_classes)])
    return torch.cdist(features, means).argmin(1)


@pytest.mark.parametrize("normalize", [True, False])
def test_nearest_class_mean_is_the_class_mean_classifier_and_trains_nothing(plugin, nearest_class_mean, monkeypatch,
                                                                             normalize):
    def no_optimizer(*args, **kwargs):
        raise AssertionError("nearest-class-mean must not build an optimizer")

    monkeypatch.setattr(torch.optim.Optimizer, "__init__", no_optimizer)
    data = clustered_splits()
    model = tiny_model(num_classes=7)
    model.train()
    backbone = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    strategy = nearest_class_mean(plugin.NearestClassMeanConfig(normalize=normalize))
    out = strategy.transfer(model, data, RunContext(show_progress=False))

    assert out is model and out.num_classes == 3 and not out.training
    after = out.state_dict()
    assert all(torch.equal(after[k], v) for k, v in backbone.items())  # weights and BN statistics
    assert not any(p.requires_grad for p in out.parameters())
    if normalize:
        assert torch.allclose(out.head.weight.norm(dim=1), torch.ones(3), atol=1e-5)
        assert torch.equal(out.head.bias, torch.zeros(3))

    with torch.no_grad():
        train_x, train_y = data.train.take(torch.arange(len(data.train)))
        test_x, test_y = data.test.take(torch.arange(len(data.test)))
        train_z, test_z = out.features(train_x), out.features(test_x)
        means = torch.stack([(nn.functional.normalize(train_z, dim=1) if normalize else train_z)[train_y == c].mean(0)
                             for c in range(3)])
        assert torch.equal(out.head(means).argmax(1), torch.arange(3))
        predictions = out(test_x).argmax(1)
    assert torch.equal(predictions, brute_force_ncm(train_z, train_y, test_z, 3, normalize))
    assert (predictions == test_y).float().mean() == 1.0


def test_nearest_class_mean_on_digits_beats_chance_without_training(plugin, nearest_class_mean):
    from rtk.data import apply_options
    from rtk_plugins.datasets import DigitsConfig
    from tests.helpers import build

    data = apply_options(build("dataset", "digits"), DigitsConfig(classes=[5, 6, 7, 8, 9]))
    torch.manual_seed(0)
    # A random frozen conv net: NCM alone has to make its features useful.
    body = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Flatten())
    model = RtkModel(body, nn.Linear(32 * 64, 10), feature_dim=32 * 64, block_names=[""])
    strategy = nearest_class_mean(plugin.NearestClassMeanConfig())
    model = strategy.transfer(model, data, RunContext(show_progress=False))
    test_x, test_y = data.test.take(torch.arange(len(data.test)))
    with torch.no_grad():
        accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
    assert accuracy > 0.8


def test_nearest_class_mean_never_predicts_a_class_without_examples(plugin, nearest_class_mean):
    data = clustered_splits(num_classes=3)
    data = DataSplits(data.train, data.test, num_classes=4)  # class 3 kept in the label space, but empty
    for normalize in (True, False):
        model = nearest_class_mean(plugin.NearestClassMeanConfig(normalize=normalize)).transfer(
            tiny_model(), data, RunContext(show_progress=False))
        x, y = data.test.take(torch.arange(len(data.test)))
        logits = model(x)
        assert torch.isfinite(logits).all() and model.num_classes == 4
        assert (logits[:, 3] < logits[:, :3].min(1).values).all()
        assert torch.equal(logits.argmax(1), y)


def test_nearest_class_mean_rejects_a_transfer_objective(plugin, nearest_class_mean):
    from rtk.stages.training import CrossEntropy

    strategy = nearest_class_mean(plugin.NearestClassMeanConfig())
    with pytest.raises(RtkError, match="trains nothing"):
        strategy.transfer(tiny_model(), clustered_splits(), RunContext(show_progress=False), CrossEntropy())
