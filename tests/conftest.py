"""Shared fixtures. Tests never touch the network and load plugins hermetically where they add any."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_NUM_THREADS", "2")
# Never the user's store: fixtures wider than a test (module-scoped runs) use this one; each
# test gets its own below.
os.environ["RTK_HOME"] = tempfile.mkdtemp(prefix="rtk-test-home-")

from tests.helpers import TINY_RECIPE


@pytest.fixture(autouse=True)
def source_store(tmp_path_factory, monkeypatch):
    """Every test gets its own empty source store ($RTK_HOME, which subprocesses inherit), so no
    test reuses a source that another trained, and none writes to the user's ~/.cache/rtk."""
    home = tmp_path_factory.mktemp("rtk-home")
    monkeypatch.setenv("RTK_HOME", str(home))
    return home


@pytest.fixture
def cli():
    """Invoke the rtk CLI in-process: cli("run", path, ...) -> click Result (stdout, stderr, exit_code)."""
    from click.testing import CliRunner

    from rtk.cli import cli as group

    def invoke(*args):
        return CliRunner().invoke(group, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture
def write_recipe(tmp_path):
    """Write a recipe text into tmp_path and return its path."""

    def write(text: str, name: str = "recipe.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def tiny_recipe(write_recipe):
    """A recipe that trains, transfers and attacks in a few seconds."""
    return write_recipe(TINY_RECIPE)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models are thousands of small ops: on a 2-core machine one thread beats two, by far under load."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_collection_modifyitems(items):
    """Everything under tests/e2e/ (subprocesses, SIGKILL, torchrun, whole recipes) is marked e2e,
    so that ``pytest -m "not e2e"`` skips it locally; CI runs it."""
    for item in items:
        if "e2e" in item.path.parts:
            item.add_marker(pytest.mark.e2e)
