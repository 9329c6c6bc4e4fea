"""The source store: keys that do not depend on how a table is written, entries that are whole or
absent and never used when corrupt, and runs that reuse a stored source instead of training it."""
from __future__ import annotations

import json

import pytest

import rtk.stages.source
from rtk.config.recipe import load_recipe
from rtk.config.source_key import source_key
from rtk.config.spec import resolve
from rtk.errors import RtkError
from rtk.registry import default_registry
from rtk.services.store import SourceStore, StoreError
from tests.helpers import TINY_RECIPE

# The tiny recipe's source written another way: tables reordered, defaults spelled out, the
# objective's radius as a fraction, options that do not change weights set.
REWRITTEN = """
[run]
device = "cpu"
seed = 0
name = "rewritten"

[source.train]
lr = 0.003
batch_size = 64
epochs = 2
optimizer = "adam"
schedule = "constant"
checkpoint_every = 7

[source.data]
classes = [0, 1, 2, 3, 4]
remap = true
dataset = "digits"

[source]
feature_dim = 32
channels = [8, 16]
model = "small-cnn"

[source.objective]
name = "natural"

[target]
dataset = "digits"
classes = [5, 6, 7, 8, 9]
"""


def key_of(text: str, tmp_path, *overrides: str) -> str:
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    (spec,) = resolve(load_recipe(path, overrides=list(overrides)), default_registry())
    return source_key(spec.source)


def test_the_key_does_not_depend_on_how_the_table_is_written(tmp_path):
    assert key_of(TINY_RECIPE, tmp_path) == key_of(REWRITTEN, tmp_path)
    robust = TINY_RECIPE.replace("[target]", '[source.objective]\nname = "pgd-at"\neps = "8/255"\n\n[target]')
    assert key_of(robust, tmp_path) == key_of(robust.replace('"8/255"', str(8 / 255)), tmp_path)


@pytest.mark.parametrize("change", ["source.train.epochs=3", "run.seed=1", "source.data.classes=[0,1,2,3]",
                                    "source.channels=[8,8]", "run.amp=bf16", "source.num_classes=7",
                                    'source.objective={name="pgd-at"}'])
def test_what_changes_the_weights_changes_the_key(tmp_path, change):
    assert key_of(TINY_RECIPE, tmp_path) != key_of(TINY_RECIPE, tmp_path, change)


@pytest.mark.parametrize("change", ["run.name=x", "run.device=cpu", "run.channels_last=true", "transfer.lr=0.5",
                                    "source.train.checkpoint_every=3", "eval.n=5"])
def test_what_leaves_the_weights_alone_leaves_the_key(tmp_path, change):
    assert key_of(TINY_RECIPE, tmp_path) == key_of(TINY_RECIPE, tmp_path, change)


def test_a_data_root_is_not_part_of_the_key(tmp_path):
    mnist = TINY_RECIPE.replace('dataset = "digits"\nclasses = [0, 1, 2, 3, 4]', 'dataset = "mnist"')
    assert key_of(mnist, tmp_path) == key_of(mnist, tmp_path, f"source.data.root={tmp_path}",
                                             "source.data.download=true")


def write_tensor(path):
    import torch
    from safetensors.torch import save_file

    save_file({"head.weight": torch.ones(2, 3)}, str(path))


def test_entries_are_published_whole_and_verified(tmp_path):
    store = SourceStore(tmp_path / "store")
    entry = store.publish("abc123", write_tensor, {"clean": 0.5})
    assert store.get("abc123").info["clean"] == 0.5 and entry.info["size"] == entry.weights.stat().st_size
    assert store.find("abc").key == "abc123"
    with open(entry.weights, "r+b") as handle:  # truncated
        handle.truncate(entry.info["size"] - 10)
    with pytest.raises(StoreError, match="rtk sources rm abc123"):
        store.get("abc123")
    store.remove("abc123")
    assert store.get("abc123") is None and store.entries() == []


def test_a_failed_publish_leaves_nothing(tmp_path):
    store = SourceStore(tmp_path / "store")

    def broken(path):
        path.write_bytes(b"half a file")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.publish("abc123", broken, {})
    assert list(store.sources.iterdir()) == []  # no entry, no temporary folder


def test_a_second_run_reuses_the_source_and_trains_nothing(tiny_recipe, tmp_path, cli, monkeypatch,
                                                          source_store):
    plan = cli("run", tiny_recipe, "--dry-run")
    assert plan.exit_code == 0 and "TRAIN here for 2 epochs on 631 training images" in plan.stdout
    assert not (source_store / "sources").exists() and not (tmp_path / "runs").exists()  # a plan writes nothing
    first = cli("run", tiny_recipe, "--out", tmp_path / "a", "--quiet")
    assert first.exit_code == 0, first.stderr
    monkeypatch.setattr(rtk.stages.source, "fit", lambda *a, **k: pytest.fail("the stored source was trained again"))
    plan = cli("run", tiny_recipe, "--dry-run")
    assert "reused from the store" in plan.stdout and "TRAIN" not in plan.stdout
    second = cli("run", tiny_recipe, "--out", tmp_path / "b", "--quiet")
    assert second.exit_code == 0, second.stderr
    a, b = (json.loads((tmp_path / d / "results.json").read_text())["runs"][0] for d in "ab")
    assert a["metrics"] == b["metrics"] and a["source"]["key"] == b["source"]["key"]
    assert not a["source"]["reused"] and b["source"]["reused"]
    assert b["source"]["made_by"]["run_dir"] == str((tmp_path / "a").resolve())
    assert "reused" in second.stdout and "reused from the store" in second.stdout  # table and its note


def test_a_corrupt_entry_is_never_used(tiny_recipe, tmp_path, cli):
    assert cli("run", tiny_recipe, "--out", tmp_path / "a", "--quiet").exit_code == 0
    (entry,) = SourceStore().entries()
    entry.weights.write_bytes(entry.weights.read_bytes()[:-8])
    result = cli("run", tiny_recipe, "--out", tmp_path / "b", "--quiet")
    assert result.exit_code == 2 and f"rtk sources rm {entry.key}" in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "is corrupt" in error and "Traceback" not in result.stderr and not (tmp_path / "b").exists()


def test_store_option_and_rtk_home(tiny_recipe, tmp_path, cli, source_store):
    result = cli("run", tiny_recipe, "--out", tmp_path / "a", "--quiet", "--store", tmp_path / "elsewhere")
    assert result.exit_code == 0
    assert len(SourceStore(tmp_path / "elsewhere").entries()) == 1 and SourceStore().entries() == []
    assert SourceStore().root == source_store


def test_a_selection_must_pick_exactly_one_source(tmp_path, write_recipe):
    write_recipe(TINY_RECIPE + '\n[sweep]\n"source.train.epochs" = [1, 2]\n"transfer.lr" = [0.1, 0.2]\n', "base.toml")
    chained = TINY_RECIPE.split("[source]")[0] + '[source]\nrecipe = "base.toml"\nwhere = WHERE\n\n[target]' + \
        TINY_RECIPE.split("[target]")[1]

    def select(where: str):
        path = write_recipe(chained.replace("WHERE", where), "chained.toml")
        return resolve(load_recipe(path), default_registry())

    (spec,) = select('{ "source.train.epochs" = 2 }')
    assert spec.source.train.epochs == 2 and spec.source.origin == "base.toml (epochs=2,lr=0.1)"
    with pytest.raises(RtkError, match=r'selects 2 sources of base.toml; narrow it to one of: '
                                       r'\{ "source.train.epochs" = 1 \}; \{ "source.train.epochs" = 2 \}'):
        select("{}")
    with pytest.raises(RtkError, match=r"selects no source of base.toml; its sources: "):
        select('{ "source.train.epochs" = 3 }')
    with pytest.raises(RtkError, match="takes only recipe, where, profile"):
        path = write_recipe(chained.replace("WHERE", "{}").replace('recipe = "base.toml"',
                                                                   'recipe = "base.toml"\nnum_classes = 3'), "x.toml")
        resolve(load_recipe(path), default_registry())


def test_a_selection_cycle_is_refused(write_recipe):
    write_recipe(TINY_RECIPE.split("[source]")[0] + '[source]\nrecipe = "b.toml"\n', "a.toml")
    path = write_recipe(TINY_RECIPE.split("[source]")[0] + '[source]\nrecipe = "a.toml"\n', "b.toml")
    with pytest.raises(RtkError, match="selects its source from this recipe again"):
        resolve(load_recipe(path), default_registry())
