"""Sharded runs end to end: 3 shards started at the same time as real `rtk run --shard k/3`
processes into one folder give, after `rtk collect`, the results.json of a plain `rtk run` (apart
from timings), and the last shard to finish wrote it already; a shard SIGKILLed mid-training and
rerun with --resume gives an uninterrupted run's numbers; --sources-only fills the store alone."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rtk.config.recipe import load_recipe
from rtk.models import read_state_dict
from rtk.registry import using
from rtk.services import shards
from rtk.services.store import SourceStore
from rtk.stages.runner import Runner
from tests.e2e.test_resume import RECIPE as HANGING_RECIPE
from tests.e2e.test_resume import make_registry
from tests.helpers import REPO, TINY_RECIPE, kill_cli_at_marker

pytestmark = pytest.mark.usefixtures("one_thread")  # before the module's runs: float sums depend on threads

SWEEP = TINY_RECIPE + '\n[sweep]\n"transfer.lr" = [0.1, 0.05, 0.01]\n'


def without_timings(value):
    """results.json without what differs between two runs of the same recipe: the seconds."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not k.endswith("seconds")}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def rtk(*args, env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rtk", *map(str, args)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_three_shards_at_once_then_collect_equal_a_plain_run(tmp_path):
    recipe = tmp_path / "sweep.toml"
    recipe.write_text(SWEEP)
    home, out, plain = tmp_path / "home", tmp_path / "sharded", tmp_path / "plain"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", RTK_HOME=str(home))
    processes = [rtk("run", recipe, "--out", out, "--shard", f"{k}/3", "--quiet", env=env) for k in (1, 2, 3)]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], outputs
    # One shard trained the source, the others waited for it; each wrote only its own point.
    assert sum("trained in" in err for _, err in outputs) == 1
    assert sum("is training it; waiting to reuse it" in err for _, err in outputs) >= 1
    assert sorted(p.name for p in (out / "points").iterdir()) == ["0.json", "1.json", "2.json", "sweep.json"]
    # The last shard to finish found every point done and wrote results.json itself.
    gathered = json.loads((out / "results.json").read_text())
    assert gathered["complete"] and [r["id"] for r in gathered["runs"]] == ["lr=0.1", "lr=0.05", "lr=0.01"]
    assert any(f"results: {out / 'results.json'}" in stdout.replace("\n", "") for stdout, _ in outputs)
    assert any("points: " in stdout for stdout, _ in outputs)  # an earlier one said where its point is
    assert (out / "plot.png").is_file()
    collect = rtk("collect", out, env=env)
    stdout, stderr = collect.communicate(timeout=300)
    assert collect.returncode == 0, stderr
    assert "lr=0.05" in stdout and "results:" in stdout
    collected = json.loads((out / "results.json").read_text())
    assert collected == gathered
    status = rtk("status", out, env=env)
    assert "3 points: 3 done" in status.communicate(timeout=300)[0] and status.returncode == 0

    shutil.rmtree(home)  # the plain run trains the same source into the same (fresh) store: same paths
    whole = rtk("run", recipe, "--out", plain, "--quiet", env=env)
    assert whole.wait(timeout=600) == 0, whole.communicate()
    expected = json.loads((plain / "results.json").read_text())
    assert without_timings(collected) == without_timings(expected)
    assert (out / "results.csv").read_text() == (plain / "results.csv").read_text()
    for i in range(3):
        mine, theirs = (read_state_dict(d / "checkpoints" / f"run-{i}.safetensors") for d in (out, plain))
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert not (out / "train-state").exists() and not (out / "eval-state").exists()


@pytest.fixture(scope="module")
def hanging():
    return make_registry()


@pytest.fixture(scope="module")
def two_point_recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "recipe.toml"
    path.write_text(HANGING_RECIPE)
    return path


@pytest.fixture(scope="module")
def uninterrupted(two_point_recipe, hanging, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    # Its own empty store: it trains the source, whatever other modules left in the session's store.
    store = SourceStore(tmp_path_factory.mktemp("whole-store"))
    with using(hanging):
        Runner(load_recipe(two_point_recipe), hanging, out, show_progress=False, store=store).run()
    return out


def shard(recipe, registry, out: Path, which: tuple[int, int], resume: bool = False) -> Runner:
    with using(registry):
        runner = Runner(load_recipe(recipe), registry, out, show_progress=False, shard=which, resume=resume)
        runner.run()
    return runner


@pytest.mark.parametrize("loss", [7, 28], ids=["source-training", "transfer-training"])
def test_a_shard_killed_mid_training_resumes_to_an_uninterrupted_runs_results(
        two_point_recipe, hanging, uninterrupted, tmp_path, loss):
    # Shard 2/2 runs point 1 alone: its source's losses are 1-20, its probe's 21-35.
    out = tmp_path / "out"
    marker = tmp_path / "hanging"
    stderr = kill_cli_at_marker("tests.e2e.test_resume:make_registry",
                                ["run", two_point_recipe, "--out", out, "--shard", "2/2", "--quiet"], marker,
                                {"RTK_TEST_HANG": f"{marker}:{loss}"}, timeout=120, one_thread=True)
    assert marker.exists(), stderr
    states = [s.state for s in shards.point_states(out)]
    assert states == ["not started", "interrupted" if loss > 20 else "not started"]  # its lock died with it
    assert not SourceStore().entries() if loss <= 20 else len(SourceStore().entries()) == 1

    resumed = shard(two_point_recipe, hanging, out, (2, 2), resume=True)
    assert not resumed.collected and not (out / "results.json").exists()  # point 0 is not done yet
    assert [s.state for s in shards.point_states(out)] == ["not started", "done"]
    last = shard(two_point_recipe, hanging, out, (1, 2))
    assert last.collected  # the last shard gathers the sweep

    mine, theirs = (json.loads((d / "results.json").read_text()) for d in (out, uninterrupted))
    assert mine["complete"] and without_timings({**mine, "runs": []}) == without_timings({**theirs, "runs": []})
    for a, b in zip(mine["runs"], theirs["runs"], strict=True):  # all but timings and the stores' paths
        assert a["source"].pop("store") != b["source"].pop("store")
        assert without_timings(a) == without_timings(b)
    for i in (0, 1):
        a, b = (read_state_dict(d / "checkpoints" / f"run-{i}.safetensors") for d in (out, uninterrupted))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (out / "train-state").exists() and not (out / "eval-state").exists()


def test_sources_only_fills_the_store_and_writes_nothing_else(cli, tmp_path):
    recipe = tmp_path / "sweep.toml"
    recipe.write_text(SWEEP)
    out = tmp_path / "out"
    result = cli("run", recipe, "--out", out, "--sources-only", "--source", "1/1", "--quiet")
    assert result.exit_code == 0, result.output
    (entry,) = SourceStore().entries()
    assert f"source 1/1: {entry.key} trained" in result.stdout
    assert not out.exists()  # its training state was removed once the source was stored
    result = cli("run", recipe, "--out", out, "--sources-only", "--quiet")
    assert result.exit_code == 0 and "in the store already" in result.stdout
    result = cli("run", recipe, "--out", out, "--shard", "1/3", "--quiet")  # the shard reuses it
    assert result.exit_code == 0, result.output
    assert json.loads(shards.RunFolder(out).point_result(0).read_text())["source"]["key"] == entry.key
