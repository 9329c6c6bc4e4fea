"""What tests share: the repository path, the tiny recipe, MNIST lookup, registered components
built from options, the digits CNN, a quiet run context, and the SIGKILL helper. Fixtures live in
conftest.py; tests import these from here."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
    # $RTK_DATA rather than --set source.data.root: a recipe that selects its source from another
    # recipe has no [source.data] of its own.
    previous = os.environ.get("RTK_DATA")
    os.environ["RTK_DATA"] = str(root)
    try:
        return Runner(load_recipe(path), default_registry(), out, show_progress=False).run()["runs"]
    finally:
        if previous is None:
            del os.environ["RTK_DATA"]
        else:
            os.environ["RTK_DATA"] = previous


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


def quiet_context(**options):
    """A RunContext on the CPU without progress bars. ``options`` are RunContext's fields or [run]'s
    (RunConfig: seed, amp, feature_cache_mb, ...), e.g. quiet_context(seed=3, out_dir=tmp_path)."""
    import dataclasses

    from rtk.config.schema import RunConfig
    from rtk.stages.context import RunContext

    run = {f.name for f in dataclasses.fields(RunConfig)} - {f.name for f in dataclasses.fields(RunContext)}
    config = RunConfig(**{key: options.pop(key) for key in list(options) if key in run})
    return RunContext(show_progress=False, run=config, **options)


def build(kind: str, name: str, options: dict | None = None, **kwargs):
    """The registered component ``name`` of ``kind`` (default registry) built from ``options`` as a
    recipe table builds it, instead of ``component.factory(build_config(component.config, options))``;
    ``kwargs`` go to the factory (num_classes)."""
    from rtk.registry import default_registry

    return default_registry().build(kind, name, options, **kwargs)


def small_cnn(num_classes: int):
    """small-cnn with channels [8, 16] and 32 features: trains in about a second on one thread."""
    return build("model", "small-cnn", {"channels": [8, 16], "feature_dim": 32}, num_classes=num_classes)


def train_digits_cnn(epochs: int, lr: float, batch_size: int, generator=None):
    """A small_cnn(10) trained with Adam on all digits (seed 0), returned in eval mode with the splits.

    ``generator`` draws the batch order; None uses the global RNG (seeded 0 here).
    """
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    splits = build("dataset", "digits")
    images, labels = splits.train.take(torch.arange(len(splits.train)))
    model = small_cnn(10)
    optimizer = torch.optim.Adam(model.parameters(), lr)
    for _ in range(epochs):
        for batch in torch.randperm(len(labels), generator=generator).split(batch_size):
            optimizer.zero_grad()
            F.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()
    return model.eval(), splits


def kill_cli_at_marker(registry_factory: str, args: list, marker: Path, env: dict, timeout: float = 300,
                       one_thread: bool = False) -> bytes:
    """Run `rtk ARGS` (``registry_factory`` = "tests.module:function" builds the registry) until a
    test plugin creates ``marker`` and hangs, then SIGKILL it. Returns the process's stderr.

    The plugin hangs instead of the test timing the kill, so the kill lands at an exact step.
    ``one_thread`` matches a test process that runs on one thread: float sums depend on the split.
    """
    module, _, function = registry_factory.partition(":")
    script = (f"import torch\nimport rtk.cli\nfrom rtk.registry import using\nfrom {module} import {function}\n"
              + ("torch.set_num_threads(1)\n" if one_thread else "")
              + f"with using({function}()):\n    rtk.cli.main()\n")
    process = subprocess.Popen([sys.executable, "-c", script, *map(str, args)],
                               env=dict(os.environ, HF_HUB_OFFLINE="1", **env), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.stderr.read()
