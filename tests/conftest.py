"""Shared fixtures. Tests never touch the network and load plugins hermetically where they add any."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]


def mnist_root() -> Path | None:
    """RTK_DATA, else ../shared/data beside the repository, when it holds MNIST/raw."""
    for candidate in (os.environ.get("RTK_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file():
            return Path(candidate)
    return None


def require_mnist() -> Path:
    """mnist_root(), or skip the test when MNIST is absent."""
    root = mnist_root()
    if root is None:
        pytest.skip("MNIST not found: set RTK_DATA to a folder holding MNIST/raw/ (or put it in ../shared/data)")
    return root


def run_on_mnist(path: Path, out: Path) -> list[dict]:
    """Run a recipes/mini recipe as shipped, its datasets read from mnist_root(); its runs'
    results. Skips the test when MNIST is absent."""
    from rtk.config.recipe import load_recipe
    from rtk.registry import default_registry
    from rtk.stages.runner import Runner

    root = require_mnist()
    recipe = load_recipe(path, overrides=[f"source.data.root={root}", f"target.root={root}"])
    return Runner(recipe, default_registry(), out, show_progress=False).run()["runs"]


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


TINY_RECIPE = """
[run]
name = "tiny"
seed = 0
device = "cpu"

[source]
model = "small-cnn"
channels = [8, 16]
feature_dim = 32

[source.data]
dataset = "digits"
classes = [0, 1, 2, 3, 4]

[source.train]
epochs = 2
batch_size = 64
lr = 3e-3

[target]
dataset = "digits"
classes = [5, 6, 7, 8, 9]

[transfer]
strategy = "linear-probe"
epochs = 3
lr = 1e-2

[eval]
n = 60

[[eval.attacks]]
name = "pgd"
label = "PGD-5"
eps = 0.1
steps = 5
"""


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
