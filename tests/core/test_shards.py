"""Sharded runs without training: the fixed assignment of points to shards, the locks (POSIX
record locks, per point, shared folder lock) and their one-line errors, `rtk status` and
`rtk collect` on folders built by hand, a failing point's error file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from rtk.errors import OutputError, RtkError
from rtk.services import shards
from rtk.services.locking import FileLock, OutputLock, PointLock, ShardLock, point_lock_path, probe
from rtk.services.state import RunFolder
from rtk.services.store import SourceStore
from tests.helpers import REPO, TINY_RECIPE

SWEEP = TINY_RECIPE + '\n[sweep]\n"transfer.lr" = [0.1, 0.05, 0.01]\n'


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    errors = [line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr
    return errors[0]


@pytest.fixture
def holder():
    """holder(code) runs ``code`` (which takes locks) in another process until the test ends; its pid."""
    started = []

    def start(code: str) -> int:
        script = textwrap.dedent(code) + "\nprint('locked', flush=True)\nimport time\ntime.sleep(120)\n"
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
        started.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc.pid

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


# -- assignment --------------------------------------------------------------------------------


def test_point_i_belongs_to_shard_i_mod_n_plus_one():
    assert [shards.shard_points(7, k, 3) for k in (1, 2, 3)] == [[0, 3, 6], [1, 4], [2, 5]]
    for count, of in ((1, 1), (5, 2), (10, 4), (3, 5)):
        shares = [shards.shard_points(count, k, of) for k in range(1, of + 1)]
        assert sorted(i for share in shares for i in share) == list(range(count))  # every point exactly once
    assert shards.shard_points(3, 5, 5) == []  # more shards than points: the extra ones have nothing to do


def test_share_arguments_are_checked():
    assert shards.parse_share("2/4") == (2, 4)
    for bad in ("0/3", "4/3", "1", "a/b", "1/2/3", "-1/2"):
        with pytest.raises(RtkError, match="1 <= I <= N"):
            shards.parse_share(bad)
    groups = ["a", "a", "b", "a", "c"]
    assert [shards.source_points(groups, k, 3) for k in (1, 2, 3)] == [[0, 1, 3], [2], [4]]
    with pytest.raises(RtkError, match="has 3 distinct sources, not 2"):
        shards.source_points(groups, 1, 2)
    assert shards.ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"


def test_run_options_that_do_not_go_together(cli, write_recipe, tmp_path):
    recipe = write_recipe(SWEEP)
    out = tmp_path / "out"
    message = one_line_error(cli("run", recipe, "--out", out, "--source", "1/1"))
    assert "--source K/M picks a source for --sources-only" in message
    message = one_line_error(cli("run", recipe, "--out", out, "--sources-only", "--source", "1/1", "--shard", "1/2"))
    assert "pass one of them" in message
    assert "--shard needs --out" in one_line_error(cli("run", recipe, "--shard", "1/2"))
    assert "1 <= I <= N" in one_line_error(cli("run", recipe, "--out", out, "--shard", "3/2"))
    assert not out.exists()


def test_dry_run_of_a_shard_and_of_one_source(cli, write_recipe):
    recipe = write_recipe(SWEEP)
    result = cli("run", recipe, "--shard", "2/2", "--out", "unused", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "source 1/1: small-cnn" in result.stdout and "shard 2/2: point 1 of the sweep's 3" in result.stdout
    result = cli("run", recipe, "--sources-only", "--source", "1/1", "--dry-run")
    assert result.exit_code == 0 and "source 1/1: small-cnn" in result.stdout and "shard 1" not in result.stdout


# -- locks -------------------------------------------------------------------------------------


def test_locks_conflict_within_one_process_as_between_processes(tmp_path):
    out = tmp_path / "out"
    with OutputLock(out, shared=True), OutputLock(out, shared=True):  # two shards
        assert probe(out / ".rtk.lock") == ("shared", "")
        with pytest.raises(OutputError, match="being written by sharded rtk runs"):
            OutputLock(out).acquire()
        with pytest.raises(OutputError, match="being written by sharded rtk runs"):
            OutputLock(out).check()
        OutputLock(out, shared=True).check()
    with OutputLock(out):
        with pytest.raises(OutputError, match=f"pid {os.getpid()} on .*runs the whole sweep unsharded"):
            OutputLock(out, shared=True).acquire()
        with pytest.raises(OutputError, match="runs the whole sweep unsharded"):
            OutputLock(out, shared=True).check()
    assert probe(out / ".rtk.lock") == (None, "")
    with PointLock(out, 2, "lr=0.01", "3/3"):
        with pytest.raises(OutputError) as caught:
            PointLock(out, 2, "lr=0.01", "1/3").acquire()
        message = str(caught.value)
        assert "\n" not in message and f"point 2 (lr=0.01) of {out} is being run by another rtk run" in message
        assert f"pid {os.getpid()}" in message and "shard 3/3" in message
    PointLock(out, 2).acquire().release()  # free again


def test_locks_hold_across_processes(tmp_path, holder):
    out = tmp_path / "out"
    pid = holder(f"""
        from rtk.services.locking import OutputLock, PointLock, ShardLock
        OutputLock({str(out)!r}, shared=True).acquire()
        PointLock({str(out)!r}, 0, "lr=0.1", "1/3").acquire()
        ShardLock({str(out)!r}, 1, 3).acquire()
    """)
    kind, who = probe(point_lock_path(out, 0))
    assert kind == "exclusive" and f"pid {pid} on " in who and "shard 1/3" in who
    with pytest.raises(OutputError, match=f"point 0 \\(lr=0.1\\) of .* \\(pid {pid} on .*shard 1/3\\)"):
        PointLock(out, 0, "lr=0.1").acquire()
    with pytest.raises(OutputError, match="shard 1/3 of .* is already running"):
        ShardLock(out, 1, 3).acquire()
    with pytest.raises(OutputError, match="being written by sharded rtk runs"):
        OutputLock(out).acquire()
    with OutputLock(out, shared=True), PointLock(out, 1), ShardLock(out, 2, 3):  # another shard joins
        pass


def test_store_lock_is_a_posix_lock_that_waits_across_processes(tmp_path, holder):
    store = SourceStore(tmp_path / "store")
    pid = holder(f"""
        import threading, time
        from rtk.services.store import SourceStore
        lock = SourceStore({str(store.root)!r}).lock("k")
        lock.__enter__()
        threading.Timer(1.0, lambda: lock.__exit__(None, None, None)).start()
    """)
    assert probe(store.locks / "k.lock")[0] == "exclusive"
    waited = []
    started = time.monotonic()
    with store.lock("k", waited.append):
        assert probe(store.locks / "k.lock")[0] == "exclusive"
    assert len(waited) == 1 and f"pid {pid} on " in waited[0] and time.monotonic() - started > 0.3
    assert probe(store.locks / "k.lock") == (None, "")


def test_a_run_refuses_a_folder_the_other_kind_of_run_writes(cli, write_recipe, tmp_path, holder):
    recipe = write_recipe(SWEEP)
    out = tmp_path / "out"
    holder(f"from rtk.services.locking import OutputLock\nOutputLock({str(out)!r}, shared=True).acquire()")
    message = one_line_error(cli("run", recipe, "--out", out, "--quiet"))
    assert f"{out} is being written by sharded rtk runs" in message and "rtk status" in message
    other = tmp_path / "other"
    pid = holder(f"from rtk.services.locking import OutputLock\nOutputLock({str(other)!r}).acquire()")
    message = one_line_error(cli("run", recipe, "--out", other, "--shard", "1/3", "--quiet"))
    assert f"pid {pid}" in message and "runs the whole sweep unsharded" in message
    assert sorted(p.name for p in other.iterdir()) == [".rtk.lock"]  # the shard wrote nothing


def test_a_shard_stops_at_a_point_another_process_runs(cli, write_recipe, tmp_path, holder):
    recipe = write_recipe(SWEEP)
    out = tmp_path / "out"
    pid = holder(f"from rtk.services.locking import PointLock\nPointLock({str(out)!r}, 1, 'lr=0.05', '2/3').acquire()")
    message = one_line_error(cli("run", recipe, "--out", out, "--shard", "2/3", "--quiet"))
    assert f"point 1 (lr=0.05) of {out} is being run by another rtk run (pid {pid}" in message
    assert not RunFolder(out).point_result(1).exists() and not RunFolder(out).point_error(1).exists()
    pid = holder(f"from rtk.services.locking import ShardLock\nShardLock({str(out)!r}, 3, 3).acquire()")
    message = one_line_error(cli("run", recipe, "--out", out, "--shard", "3/3", "--quiet"))
    assert f"shard 3/3 of {out} is already running (pid {pid}" in message


# -- a failing point ---------------------------------------------------------------------------


def test_a_failing_point_leaves_its_error_and_log_path(cli, write_recipe, tmp_path, monkeypatch):
    from rtk.stages.runner import Runner

    def fail(self, index, spec):
        raise RtkError(f"something broke in {spec.id}\nsecond line")

    monkeypatch.setattr(Runner, "run_point", fail)
    monkeypatch.setenv("RTK_LOG_PATH", str(tmp_path / "logs" / "job-7.log"))
    out = tmp_path / "out"
    message = one_line_error(cli("run", write_recipe(SWEEP), "--out", out, "--shard", "1/2", "--quiet"))
    assert message == "error: something broke in lr=0.1"
    failure = json.loads(RunFolder(out).point_error(0).read_text())
    assert failure["error"] == "something broke in lr=0.1" and failure["log"] == str(tmp_path / "logs" / "job-7.log")
    assert failure["shard"] == "1/2" and failure["pid"] == os.getpid()
    (state, *others) = shards.point_states(out)
    assert (state.state, state.detail, state.log) == ("failed", "something broke in lr=0.1", failure["log"])
    assert [s.state for s in others] == ["not started", "not started"]
    result = cli("status", out)
    assert result.exit_code == 0 and "failed" in result.stdout and "job-7.log" in result.stdout


# -- status and collect on folders built by hand -----------------------------------------------

HEADER = {"recipe": "tiny", "recipe_path": "r.toml", "profile": None, "overrides": [], "rtk_version": "0"}


def point(i: int) -> dict:
    return {"id": f"lr={i}", "params": {"transfer.lr": i}, "metrics": {"clean": 0.5 + i / 100, "robust": 0.1},
            "paper": {}, "flags": [], "checkpoint": f"checkpoints/run-{i}.safetensors", "seconds": 1.0}


def test_status_shows_every_state(cli, tmp_path, holder, monkeypatch):
    out = tmp_path / "out"
    shards.write_sweep(out, HEADER, [f"lr={i}" for i in range(7)])
    shards.write_point(out, 0, point(0))
    pid = holder(f"from rtk.services.locking import PointLock\nPointLock({str(out)!r}, 1, 'lr=1', '2/6').acquire()")
    monkeypatch.setenv("RTK_LOG_PATH", "/logs/3.log")
    shards.record_failure(out, 2, RtkError("out of memory"), "3/6")
    holder(f"from rtk.services.locking import ShardLock\nShardLock({str(out)!r}, 4, 6).acquire()")
    folder = RunFolder(out)
    folder.target_weights(4).parent.mkdir(parents=True)
    folder.target_weights(4).write_bytes(b"")  # an attempt that was killed: resume state, no lock
    shards.record_failure(out, 6, ValueError("bad value"))  # failed first, then its shard (1/6) ran it
    shards.write_point(out, 6, point(6))
    states = {s.index: s for s in shards.point_states(out)}
    assert [states[i].state for i in range(7)] == ["done", "running", "failed", "waiting", "interrupted",
                                                   "not started", "done"]
    assert f"pid {pid} on " in states[1].detail and "shard 2/6" in states[1].detail
    assert (states[2].detail, states[2].log) == ("out of memory", "/logs/3.log")
    assert states[3].detail == "shard 4/6 is running" and "--resume" in states[4].detail
    assert not folder.point_error(6).exists()  # a result replaces the failure
    result = cli("status", out)
    assert result.exit_code == 0, result.output
    for word in ("done", "running", "failed", "waiting", "interrupted", "not started", "/logs/3.log", f"pid {pid}"):
        assert word in result.stdout
    assert "7 points: 2 done, 1 running, 1 failed, 1 waiting, 1 interrupted, 1 not started" in result.stdout
    listed = json.loads(cli("status", out, "--json").stdout)
    assert [p["state"] for p in listed][:3] == ["done", "running", "failed"] and listed[2]["log"] == "/logs/3.log"


def test_collect_refuses_missing_points_then_gathers_them(cli, tmp_path):
    out = tmp_path / "out"
    shards.write_sweep(out, HEADER, [f"lr={i}" for i in range(4)])
    shards.write_point(out, 0, point(0))
    shards.write_point(out, 3, point(3))
    message = one_line_error(cli("collect", out))
    assert f"cannot collect {out}: 2 of 4 points are not done (points 1-2)" in message
    assert f"rtk status {out}" in message and not (out / "results.json").exists()
    for i in (1, 2):
        shards.write_point(out, i, point(i))
    result = cli("collect", out)
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "results.json").read_text())
    assert list(payload) == ["recipe", "recipe_path", "profile", "overrides", "rtk_version", "complete", "runs",
                             "summary"]
    assert [run.pop("intervals") for run in payload["runs"]] == [{}] * 4  # no n_eval: no interval
    assert [entry["point"] for entry in payload.pop("summary")] == [f"lr={i}" for i in range(4)]
    assert payload == {**HEADER, "complete": True, "runs": [point(i) for i in range(4)]}
    assert (out / "results.csv").read_text().splitlines()[0] == "id,transfer.lr,clean,robust"
    assert "results:" in result.stdout and "lr=3" in result.stdout
    assert "3 points" not in cli("status", out).stdout and "results:" in cli("status", out).stdout


def test_collect_and_status_of_folders_without_points(cli, tmp_path):
    assert "holds no sharded run" in one_line_error(cli("collect", tmp_path))
    assert "not a folder" in one_line_error(cli("status", tmp_path / "missing"))
    result = cli("status", tmp_path)
    assert result.exit_code == 0 and "no run has written results here yet" in result.stdout
    (tmp_path / "results.json").write_text(json.dumps({**HEADER, "complete": True, "runs": [point(0)]}))
    result = cli("status", tmp_path)
    assert result.exit_code == 0 and "an unsharded run, 1 run(s) done, complete" in result.stdout


def test_a_point_file_of_another_sweep_is_refused(tmp_path):
    out = tmp_path / "out"
    shards.write_sweep(out, HEADER, ["lr=0", "lr=1"])
    shards.write_point(out, 0, point(0))
    shards.write_point(out, 1, point(5))
    with pytest.raises(RtkError, match="holds 'lr=5', not point 1 \\(lr=1\\)"):
        shards.collect_payload(out)


def test_file_lock_released_by_exit_of_its_holder(tmp_path):
    path = tmp_path / "x.lock"
    code = f"from rtk.services.locking import FileLock\nFileLock({str(path)!r}).acquire()\nimport os\nos._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    with FileLock(path):  # the process died holding it: free
        assert probe(path)[0] == "exclusive"
    assert probe(path) == (None, "")


def test_a_shard_with_another_recipe_is_refused(cli, write_recipe, tmp_path, monkeypatch):
    from rtk.stages.runner import Runner

    def fail(self, index, spec):
        raise RtkError("stopped here")

    monkeypatch.setattr(Runner, "run_point", fail)
    recipe, out = write_recipe(SWEEP), tmp_path / "out"
    one_line_error(cli("run", recipe, "--out", out, "--shard", "1/3", "--quiet"))  # the first shard's header
    assert (out / "recipe.resolved.toml").is_file() and json.loads(RunFolder(out).sweep_file.read_text())["points"] == [
        "lr=0.1", "lr=0.05", "lr=0.01"]
    message = one_line_error(cli("run", recipe, "--out", out, "--shard", "2/3", "--set", "transfer.epochs=4"))
    assert f"cannot run this shard: {out} holds a different recipe (transfer.epochs differs" in message
    assert "run every shard with the same recipe" in message
