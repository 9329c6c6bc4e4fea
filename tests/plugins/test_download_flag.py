"""``rtk run --download`` and ``rtk eval --download`` end to end, offline: torchvision's MNIST
mirrors point at an HTTP server on 127.0.0.1 that serves tiny gzip'd IDX files made here (their
md5s patched in, as torchvision checks them). With neither root nor $RTK_DATA, the files land in
the store's data folder ($RTK_HOME/data) and later runs read them from there without --download.
Nothing here reaches the internet."""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import struct
import threading
from pathlib import Path

import pytest
import torch

from rtk.errors import DataError

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")

RECIPE = """
[run]
name = "mnist-download"
seed = 0
device = "cpu"

[source]
model = "small-cnn"
channels = [4, 8]
feature_dim = 16

[source.data]
dataset = "mnist"
classes = [0, 1, 2, 3, 4]
per_class = 4

[source.train]
epochs = 1
batch_size = 32
lr = 1e-2

[target]
dataset = "mnist"
classes = [5, 6, 7, 8, 9]
per_class = 4

[transfer]
strategy = "linear-probe"
epochs = 1
lr = 1e-2

[eval]
n = 10
"""


def idx_files(n_train: int = 40, n_test: int = 20) -> dict[str, bytes]:
    """The four MNIST IDX files (valid headers, random 28x28 uint8 images, labels i % 10), gzip'd."""
    g = torch.Generator().manual_seed(0)
    files = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        labels = (torch.arange(n) % 10).to(torch.uint8)
        files[f"{prefix}-images-idx3-ubyte"] = struct.pack(">iiii", 0x803, n, 28, 28) + images.numpy().tobytes()
        files[f"{prefix}-labels-idx1-ubyte"] = struct.pack(">ii", 0x801, n) + labels.numpy().tobytes()
    return {f"{name}.gz": gzip.compress(data, mtime=0) for name, data in files.items()}


class Mirror:
    """A local MNIST mirror: an HTTP server in a thread, and the paths it was asked for."""

    def __init__(self, folder: Path):
        self.requests: list[str] = []
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                mirror.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):  # quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                      functools.partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.thread.join()
        self.server.server_close()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """torchvision's MNIST downloads from a local server only (its mirrors and md5s patched); neither
    root nor $RTK_DATA is set, so rtk's data root is the store's data folder."""
    import torchvision

    folder = tmp_path / "mirror"
    folder.mkdir()
    resources = []
    for name, data in idx_files().items():
        (folder / name).write_bytes(data)
        resources.append((name, hashlib.md5(data).hexdigest()))
    server = Mirror(folder)
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [server.url])
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources", resources)
    monkeypatch.delenv("RTK_DATA", raising=False)
    for var in PROXY_VARS:  # straight to 127.0.0.1, never through a proxy
        monkeypatch.delenv(var, raising=False)
    yield server
    server.stop()


@pytest.fixture
def recipe(write_recipe):
    return write_recipe(RECIPE)


def raw_folder(store: Path) -> Path:
    return store / "data" / "MNIST" / "raw"


def test_run_download_fetches_into_the_store_data_folder_and_later_runs_read_it_there(
        cli, recipe, mirror, source_store, tmp_path, one_thread):
    result = cli("run", recipe, "--download", "--quiet", "--out", tmp_path / "first")
    assert result.exit_code == 0, result.output
    # (torchvision's redirect probe is a GET too, so each file is asked for more than once)
    assert {Path(p).name for p in mirror.requests} == {f"{name}.gz" for name in MNIST_FILES}
    raw = raw_folder(source_store)
    for name in MNIST_FILES:
        assert (raw / name).is_file()
    assert (raw / "t10k-images-idx3-ubyte").stat().st_size == 16 + 20 * 28 * 28
    assert (tmp_path / "first" / "results.json").is_file()

    mirror.stop()  # the second run must not need the network
    served = len(mirror.requests)
    result = cli("run", recipe, "--quiet", "--out", tmp_path / "second")
    assert result.exit_code == 0, result.output
    assert len(mirror.requests) == served
    assert (tmp_path / "second" / "results.json").is_file()


def test_run_without_download_is_a_one_line_error_naming_the_folder_and_the_flag(cli, recipe, mirror, source_store,
                                                                               tmp_path):
    result = cli("run", recipe, "--quiet", "--out", tmp_path / "out")
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1  # the whole message on one line
    message = errors[0]
    assert "--download" in message and str(raw_folder(source_store)) in message and "RTK_DATA" in message
    assert mirror.requests == [] and not (source_store / "data").exists()


@pytest.mark.parametrize("flags", [(), ("--download",)])
def test_dry_run_never_downloads(cli, recipe, mirror, source_store, flags):
    result = cli("run", recipe, "--dry-run", *flags)
    assert result.exit_code == 0, result.output
    assert "data not here yet" in result.output
    assert mirror.requests == [] and not (source_store / "data").exists()


def test_eval_download_fetches_the_dataset(cli, mirror, source_store, tmp_path):
    from safetensors.torch import save_file

    from tests.helpers import build

    model = build("model", "small-cnn", {"channels": [4, 8], "feature_dim": 16}, num_classes=10)
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    args = ("eval", "--model", "small-cnn", "--model-option", "channels=[4,8]", "--model-option", "feature_dim=16",
            "--weights", weights, "--dataset", "mnist", "--n", "8", "--device", "cpu", "--quiet")
    result = cli(*args, "--out", tmp_path / "offline")
    assert result.exit_code == 2 and "--download" in result.stderr and mirror.requests == []
    result = cli(*args, "--download", "--out", tmp_path / "online")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "online" / "results.json").is_file()
    assert all((raw_folder(source_store) / name).is_file() for name in MNIST_FILES)


def test_explicit_root_is_used_as_given(tmp_path, monkeypatch, source_store):
    from rtk_plugins.datasets.vision_data import resolve_root

    monkeypatch.setenv("RTK_DATA", str(tmp_path / "env"))
    assert resolve_root(str(tmp_path / "given"))[0] == tmp_path / "given"
    assert resolve_root(None)[0] == tmp_path / "env"
    monkeypatch.delenv("RTK_DATA")
    assert resolve_root(None)[0] == source_store / "data"


def test_stanford_cars_is_never_asked_to_download(tmp_path):
    """torchvision's StanfordCars.download always raises (its site is gone), even over complete
    files; --download must not break a run whose files are there, and says it cannot fetch them."""
    from rtk_plugins.study_datasets import DATASETS
    from rtk_plugins.study_datasets import torchvision_data

    config = DATASETS["stanford-cars"][0](root=str(tmp_path), download=True)
    assert not torchvision_data.downloading("stanford-cars", config)
    with pytest.raises(DataError) as info:
        torchvision_data.load(config)
    message = str(info.value)
    assert "\n" not in message and "--download cannot fetch it" in message and str(tmp_path) in message
