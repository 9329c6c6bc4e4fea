"""The Shafahi recipes as one chain: Table 4 (and 2, 5, 6, 7, Fig. 1) select their sources from
Table 1, so the first recipe that needs a source trains it into the store and every later one
reuses it. The dry run shows that plan without writing anything; the smoke profiles run the chain
on digits in seconds."""
from __future__ import annotations

import json

import pytest

from rtk.services.store import SourceStore
from tests.helpers import REPO

RECIPES = REPO / "recipes"


def flat(text: str) -> str:
    """Output with its line wrapping undone (rich wraps at the terminal's width)."""
    return " ".join(text.split())


def runs_of(out) -> list[dict]:
    payload = json.loads((out / "results.json").read_text())
    assert payload["complete"], payload
    return payload["runs"]


@pytest.fixture
def no_data(monkeypatch, tmp_path):
    """No data folder and a bare working directory, so a stray runs/ folder would show."""
    monkeypatch.delenv("RTK_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_table4_dry_run_plans_table1s_robust_source_then_six_lwf_runs(cli, no_data, source_store):
    result = cli("run", RECIPES / "shafahi_table4.toml", "--dry-run")
    assert result.exit_code == 0, result.stdout + result.stderr
    plan = flat(result.stdout)
    assert "source 1/1: wrn-32-10 on cifar100 (pgd-at): TRAIN here for 205 epochs" in plan, plan
    assert "selected from shafahi_table1.toml (objective=pgd-at,cifar100)" in plan, plan
    assert "then 6 runs transferring with lwf to cifar10" in plan, plan
    assert "data not here yet" in plan  # no RTK_DATA: the plan says so instead of failing
    # Nothing written: no store entry (nor its folders), no run folder in the working directory.
    assert list(source_store.iterdir()) == [] and list(no_data.iterdir()) == []


def test_smoke_chain_trains_table1s_source_once(cli, tmp_path, no_data, one_thread):
    # Table 4 first: it trains Table 1's smoke robust digits 0-4 source into the store.
    t4 = tmp_path / "t4"
    result = cli("run", RECIPES / "shafahi_table4.toml", "--profile", "smoke", "--out", t4, "--quiet")
    assert result.exit_code == 0, result.stdout + result.stderr
    runs = runs_of(t4)
    assert len(runs) == 2 and all("clean" in r["metrics"] and "robust" in r["metrics"] for r in runs)
    (entry,) = SourceStore().entries()
    for run in runs:
        assert run["source"]["key"] == entry.key and run["source"]["reused"] is False
        assert run["source"]["defined_by"] == "shafahi_table1.toml (objective=pgd-at,digits0-4)"
    assert runs[0]["source"]["clean"] > 0.5  # a source worth transferring from, not chance

    # Table 2 next: its robust cells reuse that source; its natural cells train Table 1's other one.
    t2 = tmp_path / "t2"
    result = cli("run", RECIPES / "shafahi_table2.toml", "--profile", "smoke", "--out", t2, "--quiet")
    assert result.exit_code == 0, result.stdout + result.stderr
    runs = {r["id"]: r["source"] for r in runs_of(t2)}
    assert set(runs) == {"natural>5-9", "robust>5-9", "natural>5-7", "robust>5-7"}
    for robust in ("robust>5-9", "robust>5-7"):
        assert runs[robust]["key"] == entry.key and runs[robust]["reused"] is True
        assert runs[robust]["made_by"]["run_dir"] == str(t4.resolve())
    natural = {runs["natural>5-9"]["key"], runs["natural>5-7"]["key"]}
    assert len(natural) == 1 and entry.key not in natural
    assert not runs["natural>5-9"]["reused"] and not runs["natural>5-7"]["reused"]
    assert sorted(e.key for e in SourceStore().entries()) == sorted([entry.key, *natural])
    assert not (no_data / "runs").exists()
