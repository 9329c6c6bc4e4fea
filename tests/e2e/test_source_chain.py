"""Sources shared through the store: a chain of mini recipes on MNIST trains its source once, and
two processes that need the same missing source at the same time train it once."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
import sys
import time

import pytest

import rtk.stages.source
from rtk.services.store import SourceStore, sha256_file
from tests.helpers import REPO, TINY_RECIPE, require_mnist

MINI = REPO / "recipes" / "mini"


def runs_of(out) -> list[dict]:
    return json.loads((out / "results.json").read_text())["runs"]


def test_a_chain_of_mini_recipes_trains_its_source_once(cli, tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("RTK_DATA", str(require_mnist()))
    smoke = ("--profile", "smoke", "--quiet")
    # shafahi_retrain_blocks selects the robust source of shafahi_lwf: run alone, it trains it once.
    result = cli("run", MINI / "shafahi_retrain_blocks.toml", *smoke, "--out", tmp_path / "blocks")
    assert result.exit_code == 0, result.stderr
    runs = runs_of(tmp_path / "blocks")
    assert len(runs) == 2 and {r["source"]["key"] for r in runs} == {runs[0]["source"]["key"]}
    assert not any(r["source"]["reused"] for r in runs)
    (entry,) = SourceStore().entries()
    digest, mtime = sha256_file(entry.weights), entry.weights.stat().st_mtime_ns

    # shafahi_lwf afterwards, and retrain_blocks a second time: nothing trains.
    monkeypatch.setattr(rtk.stages.source, "fit", lambda *a, **k: pytest.fail("a stored source was trained again"))
    for name, out in (("shafahi_lwf", "lwf"), ("shafahi_retrain_blocks", "blocks-again")):
        result = cli("run", MINI / f"{name}.toml", *smoke, "--out", tmp_path / out)
        assert result.exit_code == 0, result.stderr
        assert all(r["source"]["reused"] and r["source"]["key"] == entry.key for r in runs_of(tmp_path / out))
    assert [e.key for e in SourceStore().entries()] == [entry.key]
    assert sha256_file(entry.weights) == digest and entry.weights.stat().st_mtime_ns == mtime
    monkeypatch.undo()

    # The reused checkpoint is the one shafahi_lwf trains for itself: byte for byte.
    monkeypatch.setenv("RTK_DATA", str(require_mnist()))
    result = cli("run", MINI / "shafahi_lwf.toml", *smoke, "--out", tmp_path / "lwf-alone", "--store", tmp_path / "own")
    assert result.exit_code == 0, result.stderr
    (own,) = SourceStore(tmp_path / "own").entries()
    assert own.key == entry.key and own.weights.read_bytes() == entry.weights.read_bytes()
    assert runs_of(tmp_path / "lwf-alone")[0]["metrics"] == runs_of(tmp_path / "lwf")[0]["metrics"]


def locked(path) -> bool:
    """Whether another process holds the (POSIX, lockf) lock on ``path``."""
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.lockf(fd, fcntl.LOCK_UN)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    finally:
        os.close(fd)
    return False


def test_two_processes_that_need_one_missing_source_train_it_once(tmp_path, source_store):
    recipe = tmp_path / "recipe.toml"
    # long enough (about 9 s on one thread) that the second process, which must import torch first, starts
    # planning while the first still trains it, even on a loaded machine
    recipe.write_text(TINY_RECIPE.replace("epochs = 2", "epochs = 200"))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")

    def start(out: str):
        return subprocess.Popen([sys.executable, "-m", "rtk", "run", str(recipe), "--out", str(tmp_path / out),
                                 "--quiet"], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    first = start("first")
    locks = source_store / "locks"
    deadline = time.monotonic() + 120
    while not (locks.is_dir() and any(locked(p) for p in locks.iterdir())):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    second = start("second")  # starts while the first holds the source's lock
    outputs = [process.communicate(timeout=300) for process in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    (_, trained), (_, waited) = outputs
    assert "trained in" in trained and "trained in" not in waited
    assert "is training it; waiting to reuse it" in waited
    a, b = (runs_of(tmp_path / out)[0] for out in ("first", "second"))
    assert a["source"]["key"] == b["source"]["key"] and not a["source"]["reused"] and b["source"]["reused"]
    assert a["metrics"] == b["metrics"] and len(SourceStore().entries()) == 1
