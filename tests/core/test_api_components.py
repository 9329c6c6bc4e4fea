"""rtk.attack, rtk.model, rtk.source, rtk.sources, rtk.components and rtk.options (rtk.api.components):
registered components built with validated options, store entries loaded as a run reuses them, and
the registry's listing."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import rtk
from rtk.api.components import ComponentInfo, ConfiguredAttack, attack, components, model, options, source, sources
from rtk.api.evaluation import evaluate
from rtk.errors import RtkError, UnknownComponentError
from rtk.registry import registry_with, using
from rtk.services.store import SourceStore, StoreError
from tests.helpers import TINY_RECIPE

QUIET = {"device": "cpu", "progress": False}
ARCH = {"channels": [8, 16], "feature_dim": 32}


@pytest.fixture(scope="module")
def stored(tmp_path_factory, one_thread) -> tuple[Path, str]:
    """A store holding the tiny recipe's source (small-cnn trained on digits 0-4), as `rtk run` leaves it."""
    from rtk.config.recipe import load_recipe
    from rtk.registry import default_registry
    from rtk.stages.runner import Runner

    folder = tmp_path_factory.mktemp("stored")
    recipe = folder / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    store = SourceStore(folder / "store")
    Runner(load_recipe(recipe), default_registry(), folder / "run", show_progress=False, store=store,
           sources_only=True).run()
    (entry,) = store.entries()
    return store.root, entry.key


def digits_test():
    from rtk.config.fields import build_config
    from rtk.data import apply_options
    from rtk.registry import default_registry

    component = default_registry().get("dataset", "digits")
    config = build_config(component.config, {"classes": [0, 1, 2, 3, 4]})
    return apply_options(component.factory(config), config).test


def fake_entry(store: SourceStore, key: str, **info) -> None:
    from safetensors.torch import save_file

    store.publish(key, lambda path: save_file({"w": torch.zeros(2)}, str(path)), info)


def test_source_loads_a_stored_source_as_a_run_reuses_it(stored):
    root, key = stored
    net = source(key[:6], store=root)
    assert net.rtk_info["key"] == key and net.rtk_info["model"] == "small-cnn" and not net.training
    assert net.rtk_info["path"] == str(root / "sources" / key)
    result = evaluate(net, "digits", (), data_options={"classes": [0, 1, 2, 3, 4]}, sanity=False, **QUIET)
    assert result["clean"] == net.rtk_info["clean"]  # what the run measured when it stored the source
    by_info = source(store=root, model="small-cnn", objective="natural")
    assert by_info.rtk_info["key"] == key
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), by_info.state_dict().values()))


def test_sources_lists_the_entries(stored):
    root, key = stored
    (entry,) = sources(root)
    assert entry["key"] == key and entry["model"] == "small-cnn" and entry["data"] == "digits[0,1,2,3,4]"
    assert entry["objective"] == "natural" and 0.5 < entry["clean"] <= 1 and entry["corrupt"] is None
    assert entry["num_classes"] == 5 and entry["created"]
    assert sources() == []  # the test's own $RTK_HOME is empty


def test_a_corrupt_entry_is_never_loaded(stored, tmp_path):
    root, key = stored
    copy = tmp_path / "store" / "sources" / key
    shutil.copytree(root / "sources" / key, copy)
    weights = copy / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=f"corrupt.*rtk sources rm {key}"):
        source(key, store=tmp_path / "store")


def test_unknown_and_ambiguous_keys_list_the_candidates(tmp_path):
    store = SourceStore(tmp_path / "store")
    with pytest.raises(RtkError, match="it is empty"):
        source("ab", store=store)
    fake_entry(store, "ab12", model="small-cnn", data="digits", objective="natural")
    fake_entry(store, "ab34", model="wrn", data="cifar10", objective="pgd-at")
    with pytest.raises(RtkError) as error:
        source("ab", store=store)
    assert '"ab" matches 2 sources' in str(error.value) and "ab12 (small-cnn on digits, natural)" in str(error.value)
    with pytest.raises(RtkError) as error:
        source("zz", store=store)
    assert 'no source matches "zz"' in str(error.value) and "ab34 (wrn on cifar10, pgd-at)" in str(error.value)
    with pytest.raises(RtkError, match="no source matches objective='trades'"):
        source(store=store, objective="trades")
    with pytest.raises(StoreError, match="records no identity"):  # found by its info, but nothing to rebuild from
        source(store=store, model="wrn")


def test_model_builds_a_registered_architecture(tmp_path):
    from rtk.models import RtkModel, save_weights

    net = model("small-cnn", num_classes=3, **ARCH)
    assert isinstance(net, RtkModel) and not net.training and net(torch.rand(2, 1, 8, 8)).shape == (2, 3)
    again = model("small-cnn", num_classes=3, **ARCH)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), again.parameters()))  # seeded initialisation
    other = model("small-cnn", num_classes=3, seed=1, **ARCH)
    assert not torch.equal(next(net.parameters()), next(other.parameters()))
    save_weights(net, tmp_path / "w.safetensors")
    loaded = model("small-cnn", weights=tmp_path / "w.safetensors", seed=None, **ARCH)
    assert loaded.num_classes == 3 and torch.equal(loaded.head.weight, net.head.weight)
    for kwargs, message in [({"num_classes": 3, "chanels": [8]}, 'unknown key "chanels"'),
                            ({"num_classes": 3, "feature_dim": 0}, "feature_dim"),
                            ({}, "pass num_classes (no weights are given"),
                            ({"num_classes": 0}, "num_classes: expected a positive integer"),
                            ({"weights": tmp_path / "w.safetensors", "channels": [4]}, "do not match the model")]:
        with pytest.raises(RtkError) as error:
            model("small-cnn", **kwargs)
        assert message in str(error.value), (message, str(error.value))
    with pytest.raises(UnknownComponentError, match="did you mean 'small-cnn'"):
        model("small-cn", num_classes=3)


def test_an_attack_stays_in_its_ball_and_lowers_accuracy(stored):
    root, key = stored
    net = source(key, store=root)
    images, labels = digits_test().take(torch.arange(80))
    clean = (net(images).argmax(1) == labels).float().mean()
    for atk, size in [(attack("pgd", eps="8/255", steps=5), lambda d: d.abs().amax(1)),
                      (attack("pgd", norm="L2", eps=0.5, steps=5), lambda d: d.norm(dim=1))]:
        assert isinstance(atk, ConfiguredAttack) and atk.name == "pgd"
        adversarial = atk(net, images, labels)
        assert adversarial.min() >= 0 and adversarial.max() <= 1
        assert (size((adversarial - images).flatten(1)) <= atk.eps + 1e-5).all()
        assert (net(adversarial).argmax(1) == labels).float().mean() < clean
        assert not net.training
    atk = attack("pgd", eps="8/255", steps=5, label="PGD-5")
    assert atk.eps == pytest.approx(8 / 255) and atk.config.steps == 5 and atk.label == "PGD-5"
    assert atk.threat_model == "Linf eps=0.0313725" and "rtk.attack('pgd'" in repr(atk)


@pytest.mark.parametrize("name, kwargs, message", [
    ("pgd", {"epss": 0.1}, 'attack "pgd": unknown key "epss"; valid keys: norm, eps'),
    ("pgd", {"steps": -1}, "steps: must be at least 0"),
    ("pgd", {"norm": "L1"}, "norm: expected one of"),
    ("pgd", {"label": 3}, "label: expected a string"),
    ("pgdd", {}, "did you mean 'pgd'"),
])
def test_bad_attack_options_are_named(name, kwargs, message):
    with pytest.raises(RtkError) as error:
        attack(name, **kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_components_list_the_registry():
    everything = components()
    assert all(isinstance(c, ComponentInfo) for c in everything)
    pgd = next(c for c in everything if (c.kind, c.name) == ("attack", "pgd"))
    assert pgd.plugin == "rtk_plugins.attacks" and pgd.summary and pgd.distribution == "rtk"
    assert {o["name"]: o["default"] for o in pgd.options}["steps"] == 20
    attacks = components("attack")
    assert attacks and {c.kind for c in attacks} == {"attack"} and "pgd" in {c.name for c in attacks}
    assert {c.kind for c in everything} >= {"model", "dataset", "attack", "certifier"}
    with pytest.raises(RtkError, match='unknown kind "attacks"; kinds: model, dataset, attack'):
        components("attacks")


def test_options_of_a_component():
    steps = next(o for o in options("pgd") if o["name"] == "steps")
    assert steps == {"name": "steps", "type": "int", "default": 20, "min": 0, "max": None, "help": "gradient steps"}
    assert "pretrained" in {o["name"] for o in options("timm/resnet18")}  # a variant of timm/*
    assert {o["name"] for o in options("cohen", kind="certifier")} >= {"sigma", "n0", "n", "alpha"}
    with pytest.raises(UnknownComponentError, match="did you mean 'pgd'"):
        options("pgdd")
    with pytest.raises(UnknownComponentError):
        options("pgd", kind="model")


def test_a_name_two_kinds_share_needs_a_kind():
    from dataclasses import dataclass

    from rtk.config.fields import option

    @dataclass
    class TwinConfig:
        strength: float = option(1.0, help="how strong")

    class Twins:
        @staticmethod
        @rtk.hookimpl
        def register_attacks(register):
            register("twin", lambda config: None, config=TwinConfig, summary="an attack")

        @staticmethod
        @rtk.hookimpl
        def register_objectives(register):
            register("twin", lambda config: None, summary="an objective")

    with using(registry_with(Twins, entry_points=False)):
        assert [(c.kind, c.name) for c in components()] == [("attack", "twin"), ("objective", "twin")]
        with pytest.raises(RtkError, match='"twin" is registered as an attack and as an objective; pick one'):
            options("twin")
        assert [o["name"] for o in options("twin", kind="attack")] == ["strength"]
        assert options("twin", kind="objective") == []
