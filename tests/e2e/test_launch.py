"""`rtk run --launcher local`: submitit's local executor (real subprocesses, no SLURM) runs the job
graph and gives the results.json of a plain `rtk run`; a job SIGKILLed mid-training, then
resubmitted by the same command, resumes and matches an uninterrupted run; a job that reaches its
time limit is requeued with --resume; a failed job is reported with its log and its dependents are
skipped."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, TINY_RECIPE

pytest.importorskip("submitit", reason='the launchers need submitit (pip install "rtk[slurm]")')

SWEEP = TINY_RECIPE + '\n[sweep]\n"transfer.lr" = [0.1, 0.01]\n'

# A test plugin that the job processes find through an entry point (a dist-info folder on
# PYTHONPATH): cross-entropy that, in a process whose environment says RTK_TEST_HANG=FILE:K,
# writes its pid into FILE and sleeps at the K-th loss, once (not when FILE exists already);
# RTK_TEST_LOSSES=FILE counts the losses each process computes.
PLUGIN = '''
import os, time
import rtk
from rtk.stages.training import CrossEntropy

class HangingCE(CrossEntropy):
    calls = 0

    def loss(self, model, images, labels):
        HangingCE.calls += 1
        count = os.environ.get("RTK_TEST_LOSSES")
        if count:
            with open(count, "a") as handle:
                handle.write(f"{os.getpid()}\\n")
        marker, _, at = os.environ.get("RTK_TEST_HANG", "").partition(":")
        if marker and HangingCE.calls == int(at) and not os.path.exists(marker):
            with open(marker + ".tmp", "w") as handle:
                handle.write(str(os.getpid()))
            os.replace(marker + ".tmp", marker)
            time.sleep(600)
        return super().loss(model, images, labels)

@rtk.hookimpl
def register_objectives(register):
    from rtk_plugins.objectives import NaturalConfig

    register("hanging-ce", lambda config: HangingCE(), config=NaturalConfig, summary="CE that can hang")
'''

# Source: 631 examples, batch 64: 10 steps an epoch, 2 epochs (losses 1-20), a checkpoint every 4 steps.
HANGING = SWEEP.replace("[source.train]",
                        '[source.objective]\nname = "hanging-ce"\n\n[source.train]\ncheckpoint_every = 4')


@pytest.fixture
def plugin_path(tmp_path):
    """A folder for PYTHONPATH holding the test plugin and a dist-info that registers it."""
    site = tmp_path / "site"
    (site / "rtk_launch_test_plugin-0.0.dist-info").mkdir(parents=True)
    (site / "rtk_launch_test_plugin.py").write_text(PLUGIN)
    info = site / "rtk_launch_test_plugin-0.0.dist-info"
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rtk-launch-test-plugin\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[rtk]\nlaunch_test = rtk_launch_test_plugin\n")
    return site


def environment(**extra) -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", TORCH_NUM_THREADS="1", OMP_NUM_THREADS="1", **extra)


def rtk(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtk", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          env=env or environment(), timeout=timeout)


def comparable(out: Path) -> dict:
    """results.json without what differs between equal runs: timings, folders and who made a source."""
    payload = json.loads((out / "results.json").read_text())
    for run in payload["runs"]:
        run.pop("seconds", None)
        source = run.get("source", {})
        for key in ("train_seconds", "store", "made_by", "reused"):
            source.pop(key, None)
    for key in ("recipe_path",):
        payload.pop(key, None)
    return payload


def test_local_launcher_gives_the_results_of_a_plain_run(tmp_path):
    recipe = tmp_path / "sweep.toml"
    recipe.write_text(SWEEP)
    plain = rtk("run", recipe, "--out", tmp_path / "plain", "--quiet", env=environment(RTK_HOME=str(tmp_path / "h1")))
    assert plain.returncode == 0, plain.stderr[-3000:]
    out = tmp_path / "launched"
    launched = rtk("run", recipe, "--out", out, "--launcher", "local", "--cpus", "1",
                   env=environment(RTK_HOME=str(tmp_path / "h2")))
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    for name in ("source-1", "point-0", "point-1", "collect"):
        assert f"{name}: done" in launched.stdout
    assert comparable(out) == comparable(tmp_path / "plain")
    # The same command again: nothing left to do.
    again = rtk("run", recipe, "--out", out, "--launcher", "local", env=environment(RTK_HOME=str(tmp_path / "h2")))
    assert again.returncode == 0 and "is complete: nothing to submit" in again.stdout, again.stdout + again.stderr


def test_a_job_killed_mid_training_is_resumed_by_the_same_command(tmp_path, plugin_path):
    recipe = tmp_path / "hanging.toml"
    recipe.write_text(HANGING)
    base = {"PYTHONPATH": f"{plugin_path}{os.pathsep}{REPO}"}
    whole = rtk("run", recipe, "--out", tmp_path / "whole", "--quiet",
                env=environment(RTK_HOME=str(tmp_path / "h1"), **base))
    assert whole.returncode == 0, whole.stderr[-3000:]
    out, marker, losses = tmp_path / "out", tmp_path / "hanging", tmp_path / "losses"
    env = environment(RTK_HOME=str(tmp_path / "h2"), RTK_TEST_HANG=f"{marker}:7", RTK_TEST_LOSSES=str(losses), **base)
    command = [sys.executable, "-m", "rtk", "run", str(recipe), "--out", str(out), "--launcher", "local", "--cpus", "1"]
    launcher = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not marker.exists() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), launcher.communicate()
    os.kill(int(marker.read_text()), signal.SIGKILL)  # the source job's process, at its 7th loss
    stdout, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode == 1, stdout + stderr
    assert "source-1: FAILED" in stdout and str(out / "local-logs") in stdout  # reported with its log
    assert "point-0: skipped" in stdout and "collect: skipped" in stdout
    assert not (out / "results.json").exists()
    first = losses.read_text().split()
    assert len(first) == 7
    # The same command again: the source job continues from its checkpoint at step 4, then the rest runs.
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "again: source-1, whose earlier local job" in again.stdout  # named, with its log
    resumed = [pid for pid in losses.read_text().split()[len(first):]]
    assert len(resumed) == 16  # losses 5-20 of the source: resumed after step 4, not trained again
    assert comparable(out) == comparable(tmp_path / "whole")


def test_a_job_at_its_time_limit_is_requeued_with_resume(tmp_path, plugin_path, monkeypatch):
    """submitit's local controller signals the job before its time limit; RtkJob.checkpoint
    requeues the command with --resume, which continues the source training."""
    from rich.console import Console

    import rtk.launch.submit
    from rtk.config.recipe import load_recipe
    from rtk.launch import launch
    from rtk.registry import registry_with
    from rtk.services.store import SourceStore

    recipe = tmp_path / "hanging.toml"
    recipe.write_text(HANGING)
    marker, losses = tmp_path / "hanging", tmp_path / "losses"
    monkeypatch.setenv("PYTHONPATH", f"{plugin_path}{os.pathsep}{REPO}")
    monkeypatch.setenv("RTK_TEST_HANG", f"{marker}:7")
    monkeypatch.setenv("RTK_TEST_LOSSES", str(losses))
    real = rtk.launch.submit.executor_parameters

    def short_limit(res, name, after=None):
        """The source job: a one-minute limit, signalled 50 s early: it is told after 10 s, while it hangs."""
        params = real(res, name, after)
        return {**params, "timeout_min": 1, "signal_delay_s": 50} if name == "rtk-source-1" else params

    monkeypatch.setattr(rtk.launch.submit, "executor_parameters", short_limit)
    sys.path.insert(0, str(plugin_path))  # its entry point, as the jobs find it
    try:
        registry = registry_with()
        console = Console(record=True, width=200)
        code = launch(recipe, load_recipe(recipe), registry, launcher="local", out=tmp_path / "out",
                      store=SourceStore(tmp_path / "store"), profile=None, overrides=[],
                      options={"cpus": 1}, console=console)
    finally:
        sys.path.remove(str(plugin_path))
    text = console.export_text()
    assert code == 0, text
    source_job = re.search(r"source-1: started \(job (\d+)\)", text).group(1)
    log = "".join(p.read_text() for p in (tmp_path / "out" / "local-logs" / source_job).glob("*_log.*"))
    assert "this job is timed-out" in log and "Requeued job" in log, log[-3000:]
    counted = losses.read_text().split()
    assert len(set(counted[:20])) >= 2  # the source's losses came from two processes: requeued
    assert json.loads((tmp_path / "out" / "results.json").read_text())["complete"]


def test_a_failed_job_is_reported_with_its_log_and_its_dependents_skipped(tmp_path, tiny_recipe):
    from rich.console import Console

    from rtk.launch.config import Resources
    from rtk.launch.graph import Graph, Job
    from rtk.launch.submit import run_local

    out = tmp_path / "out"
    out.mkdir()
    jobs = [Job("source-1", "source", ["validate", str(tiny_recipe)]),
            Job("point-0", "point", ["validate", str(tmp_path / "missing.toml")], ["source-1"]),
            Job("point-1", "point", ["validate", str(tiny_recipe)], ["source-1"]),
            Job("collect", "collect", ["validate", str(tiny_recipe)], ["point-0", "point-1"])]
    console = Console(record=True, width=300)
    code = run_local(Graph(out, 2, [], [], False, jobs), Resources(gpus=0, cpus=1), console)
    text = console.export_text()
    assert code == 1
    assert "source-1: done" in text and "point-1: done" in text
    failed = next(line for line in text.splitlines() if "point-0: FAILED" in line)
    assert "missing.toml does not exist" in failed and str(out / "local-logs") in failed
    log = Path(failed.rsplit("(log: ", 1)[1].rstrip(")"))
    assert log.is_file() and "missing.toml" in log.read_text()
    assert "collect: skipped (needs point-0, point-1)" in text
    assert "1 job failed (point-0), 1 skipped" in text


def test_a_shipped_recipes_smoke_profile_through_the_launcher_and_through_shards(tmp_path):
    """recipes/quickstart.toml --profile smoke (a sweep over two trained sources): --launcher local,
    and 2 shards started together then `rtk collect`, each give a plain run's results.json."""
    recipe = REPO / "recipes" / "quickstart.toml"
    smoke = ("--profile", "smoke", "--quiet")
    plain = rtk("run", recipe, *smoke, "--out", tmp_path / "plain", env=environment(RTK_HOME=str(tmp_path / "h1")))
    assert plain.returncode == 0, plain.stderr[-3000:]
    launched = rtk("run", recipe, "--profile", "smoke", "--out", tmp_path / "launched", "--launcher", "local",
                   "--cpus", "1", env=environment(RTK_HOME=str(tmp_path / "h2")))
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    assert comparable(tmp_path / "launched") == comparable(tmp_path / "plain")
    env = environment(RTK_HOME=str(tmp_path / "h3"))
    shards = [subprocess.Popen([sys.executable, "-m", "rtk", "run", str(recipe), *smoke, "--out", str(tmp_path / "sh"),
                                "--shard", f"{k}/2"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for k in (1, 2)]
    outputs = [s.communicate(timeout=600) for s in shards]
    assert [s.returncode for s in shards] == [0, 0], outputs
    collected = rtk("collect", tmp_path / "sh", env=env)
    assert collected.returncode == 0, collected.stderr[-3000:]
    assert comparable(tmp_path / "sh") == comparable(tmp_path / "plain")
