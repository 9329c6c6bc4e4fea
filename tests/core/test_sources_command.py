"""`rtk sources`: list, show, rm and verify the entries of the source store, which the tests build
directly with SourceStore.publish (no training)."""
from __future__ import annotations

import json

import pytest

from rtk.services.store import SourceStore

KEY_A, KEY_B = "a1b2c3d4e5f60718", "a1ff00112233aabb"


def info(**changes) -> dict:
    """What the source stage records for a trained source (rtk.stages.source), less key/sha256/size."""
    found = {"clean": 0.9125, "final_loss": 0.31, "train_seconds": 12.5, "train_size": 2500, "test_size": 500,
             "num_classes": 5, "model": "small-cnn", "data": "digits[0,1,2,3,4]", "objective": "standard",
             "epochs": 2, "identity": {"model": {"name": "small-cnn", "options": {"feature_dim": 32}},
                                       "num_classes": None, "init": None, "seed": 0, "amp": False},
             "recipe": "recipes/tiny.toml", "point": "default", "defined_by": None, "run_dir": "/runs/tiny-1",
             "created": "2024-05-01T12:34:56", "env": {"torch": "2.3.0"}, "plugins": {}}
    return {**found, **changes}


def publish(store: SourceStore, key: str, rows: int = 4, **changes):
    import torch
    from safetensors.torch import save_file

    def write(path):
        save_file({"head.weight": torch.ones(rows, 3)}, str(path))

    return store.publish(key, write, info(**changes))


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    """A wide console, so that table cells are not folded across lines."""
    monkeypatch.setenv("COLUMNS", "250")


@pytest.fixture
def store(source_store):
    """The test's store ($RTK_HOME) with two entries whose keys share the prefix "a1"."""
    found = SourceStore(source_store)
    publish(found, KEY_A)
    publish(found, KEY_B, model="wrn-28-10", data="cifar100", objective="trades", clean=0.5,
            created="2024-06-02T08:00:00")
    return found


def test_list_shows_the_entries(cli, store):
    for args in (["sources"], ["sources", "list"]):
        result = cli(*args)
        assert result.exit_code == 0, result.output
        for text in (KEY_A, KEY_B, "small-cnn", "wrn-28-10", "digits[0,1,2,3,4]", "cifar100", "trades",
                     "0.912", "0.500", "2024-05-01", "recipes/tiny.toml (default)", "bytes"):
            assert text in result.stdout


def test_list_json(cli, store):
    for args in (["sources", "--json"], ["sources", "list", "--json"]):
        rows = json.loads(cli(*args).stdout)
        assert [r["key"] for r in rows] == [KEY_A, KEY_B]  # oldest first
        assert rows[0]["clean"] == 0.9125 and rows[0]["corrupt"] is None
        assert rows[0]["path"] == str(store.sources / KEY_A) and rows[0]["sha256"] == store.get(KEY_A).info["sha256"]


def test_an_empty_store_says_how_sources_get_there(cli, source_store):
    result = cli("sources")
    assert result.exit_code == 0
    assert f"the source store at {source_store} is empty" in result.stdout and "rtk run RECIPE" in result.stdout
    assert json.loads(cli("sources", "--json").stdout) == []


def test_show_by_prefix(cli, store):
    result = cli("sources", "show", "a1b")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert KEY_A in out and str(store.sources / KEY_A) in out and "weights.safetensors" in out
    assert "train_seconds" in out and "12.5" in out and "recipes/tiny.toml" in out and "2024-05-01T12:34:56" in out
    assert '"feature_dim": 32' in out  # identity as indented JSON
    assert store.get(KEY_A).info["sha256"] in out
    assert json.loads(cli("sources", "show", KEY_B, "--json").stdout)["model"] == "wrn-28-10"


@pytest.mark.parametrize("prefix, message", [("a1", 'matches 2 sources'), ("zz", 'no source "zz"')])
def test_show_an_ambiguous_or_unknown_prefix_is_a_one_line_error(cli, store, prefix, message):
    result = cli("sources", "show", prefix)
    assert result.exit_code == 2
    assert result.stdout == "" and result.stderr.startswith("error:") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_rm_removes_entries(cli, store):
    result = cli("sources", "rm", "a1b", "--yes")
    assert result.exit_code == 0, result.output
    assert f"removed {KEY_A}: freed " in result.stdout and "bytes" in result.stdout
    assert [e.key for e in store.entries()] == [KEY_B]
    # An unknown key among several removes nothing.
    assert cli("sources", "rm", KEY_B, "nope", "--yes").exit_code == 2
    assert [e.key for e in store.entries()] == [KEY_B]


@pytest.mark.parametrize("answer, removed", [("n\n", False), ("y\n", True)])
def test_rm_asks_at_a_terminal(store, monkeypatch, answer, removed):
    from click.testing import CliRunner

    import rtk.store_command
    from rtk.cli import cli as group

    monkeypatch.setattr(rtk.store_command, "interactive", lambda: True)
    result = CliRunner().invoke(group, ["sources", "rm", KEY_A], input=answer, catch_exceptions=False)
    assert result.exit_code == 0 and "remove a1b2c3d4e5f60718 (small-cnn on digits[0,1,2,3,4])" in result.output
    assert (store.get(KEY_A) is None) == removed and ("nothing removed" in result.stdout) != removed


def test_verify_ok(cli, store):
    result = cli("sources", "verify")
    assert result.exit_code == 0, result.output
    assert f"ok      {KEY_A}" in result.stdout and f"ok      {KEY_B}" in result.stdout
    only = cli("sources", "verify", "a1f").stdout
    assert KEY_B in only and KEY_A not in only


def test_verify_finds_a_truncated_entry(cli, store):
    weights = store.sources / KEY_B / "weights.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size - 10)
    result = cli("sources", "verify")
    assert result.exit_code == 1
    assert f"ok      {KEY_A}" in result.stdout and f"corrupt {KEY_B}" in result.stdout
    assert "truncated" in result.stdout and f"`rtk sources rm {KEY_B}`" in result.stdout
    assert cli("sources", "verify", KEY_A).exit_code == 0  # only the entries asked for


def test_an_entry_with_a_garbage_info_json_is_listed_as_corrupt(cli, store):
    (store.sources / KEY_A / "info.json").write_text("{not json")
    listed = cli("sources")
    assert listed.exit_code == 0 and KEY_A in listed.stdout and "corrupt" in listed.stdout
    assert "wrn-28-10" in listed.stdout  # the others are listed as usual
    row = next(r for r in json.loads(cli("sources", "--json").stdout) if r["key"] == KEY_A)
    assert "info.json is unreadable" in row["corrupt"]
    shown = cli("sources", "show", KEY_A)
    assert shown.exit_code == 0 and "info.json is unreadable" in shown.stdout
    verified = cli("sources", "verify")
    assert verified.exit_code == 1 and f"corrupt {KEY_A}: info.json is unreadable" in verified.stdout
    assert cli("sources", "rm", KEY_A, "--yes").exit_code == 0 and [e.key for e in store.entries()] == [KEY_B]


def test_verify_notes_stale_temporaries(cli, store):
    import os

    stale = store.sources / f".{KEY_A}.tmp123"
    stale.mkdir()
    os.utime(stale, (0, 0))
    result = cli("sources", "verify")
    assert result.exit_code == 0 and "note: 1 temporary folder" in result.stdout and str(stale) in result.stdout


def test_store_option_overrides_rtk_home(cli, store, tmp_path):
    other = SourceStore(tmp_path / "other")
    publish(other, "0123456789abcdef", model="resnet18")
    for args in (["sources", "--store", other.root], ["sources", "list", "--store", other.root]):
        out = cli(*args).stdout
        assert "0123456789abcdef" in out and "resnet18" in out and KEY_A not in out
    assert cli("sources", "--store", other.root, "show", "0123").exit_code == 0
    assert cli("sources", "show", "0123", "--store", other.root).exit_code == 0
    assert cli("sources", "show", "0123").exit_code == 2  # not in $RTK_HOME
    assert cli("sources", "verify", "--store", other.root).exit_code == 0
    assert cli("sources", "rm", "0123", "--yes", "--store", other.root).exit_code == 0
    assert other.entries() == [] and len(store.entries()) == 2
