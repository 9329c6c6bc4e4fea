"""Importing checkpoints: declarations checked without a download, files fetched once from a local
HTTP server with their sha256 checked, nothing unpickled but tensors, and imported sources kept in
the store (a second run fetches and converts nothing)."""
from __future__ import annotations

import json
import os
import types

import pytest
import torch

import rtk
from rtk.config.recipe import load_recipe
from rtk.errors import RtkError, WeightsError
from rtk.importing import Importer, parse_import, safe_load
from rtk.registry import registry_with, using
from rtk.services.store import SourceStore
from rtk.stages.runner import Runner
from tests.http_server import serve


class PlainStateDict(Importer):
    """A test format: the file is the rtk small-cnn's own state dict, saved with torch.save."""

    def num_classes(self, contents):
        return contents["head.weight"].shape[0]

    def convert(self, contents, model):
        model.load_state_dict(contents)


def make_registry():
    plugin = types.SimpleNamespace(__name__="test_importer")

    @rtk.hookimpl
    def register_importers(register):
        register("plain", PlainStateDict, summary="a state dict saved with torch.save (test)")

    plugin.register_importers = register_importers
    return registry_with(plugin)


RECIPE = """
[run]
name = "import"
device = "cpu"

[source]
model = "small-cnn"
channels = [4, 8]
feature_dim = 16

[source.import]
format = "plain"
{location}
"""


def checkpoint(folder, name="cnn.pt"):
    from rtk.registry import default_registry

    torch.manual_seed(3)
    model = default_registry().build("model", "small-cnn", {"channels": [4, 8], "feature_dim": 16}, num_classes=5)
    path = folder / name
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model, path


def sha256(path) -> str:
    from rtk.services.store import sha256_file

    return sha256_file(path)


def run(recipe_text: str, tmp_path, name="out"):
    path = tmp_path / "recipe.toml"
    path.write_text(recipe_text)
    registry = make_registry()
    with using(registry):
        return Runner(load_recipe(path), registry, tmp_path / name, show_progress=False, overwrite=True).run()


@pytest.mark.parametrize("table, message", [
    ({"format": "x"}, "exactly one of path, url or hub"),
    ({"format": "x", "path": "a", "url": "https://b"}, "exactly one of path, url or hub"),
    ({"format": "x", "url": "ftp://host/file"}, "https:// address"),
    ({"format": "x", "hub": "repo-without-file"}, "owner/repo/path/to/file"),
    ({"format": "x", "url": "https://h/f", "sha256": "abc"}, "64 hex digits"),
    ({"format": "x", "url": "https://h/f", "revision": "main"}, "only a hub import"),
])
def test_bad_declarations_are_named(table, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        parse_import(table, tmp_path)


def test_an_import_downloads_once_and_converts_once(tmp_path, source_store):
    original, path = checkpoint(tmp_path / "www")
    with serve(tmp_path / "www") as server:
        text = RECIPE.format(location=f'url = "{server.url}/cnn.pt"\nsha256 = "{sha256(path)}"')
        first = run(text, tmp_path)
        assert server.requests == ["cnn.pt"]
        second = run(text, tmp_path, "again")
        assert server.requests == ["cnn.pt"]  # the second run fetched nothing
    (entry,) = SourceStore().entries()
    assert first["runs"][0]["source"]["key"] == second["runs"][0]["source"]["key"] == entry.key
    assert not first["runs"][0]["source"]["reused"] and second["runs"][0]["source"]["reused"]
    assert entry.info["imported"]["sha256"] == sha256(path) and entry.info["imported"]["url"].endswith("/cnn.pt")
    from rtk.models import read_state_dict

    stored = read_state_dict(entry.weights)
    assert all(torch.equal(stored[k], v) for k, v in original.state_dict().items())


def test_without_a_hash_the_key_is_the_content_hash(tmp_path, source_store):
    _, path = checkpoint(tmp_path / "www")
    with serve(tmp_path / "www") as server:
        run(RECIPE.format(location=f'url = "{server.url}/cnn.pt"'), tmp_path)
        run(RECIPE.format(location=f'url = "{server.url}/cnn.pt"'), tmp_path, "again")
        assert server.requests == ["cnn.pt"]  # kept in the store's downloads/, hashed, not fetched again
    local = run(RECIPE.format(location=f'path = "{path}"'), tmp_path, "local")  # the same file, from a path
    assert local["runs"][0]["source"]["reused"] and len(SourceStore().entries()) == 1


def test_a_wrong_hash_leaves_nothing(tmp_path, source_store):
    checkpoint(tmp_path / "www")
    with serve(tmp_path / "www") as server:
        with pytest.raises(RtkError, match=r"sha256 [0-9a-f]{64} does not match the expected 0{64}"):
            run(RECIPE.format(location=f'url = "{server.url}/cnn.pt"\nsha256 = "{"0" * 64}"'), tmp_path)
    assert not list((source_store / "downloads").rglob("*.pt")) and SourceStore().entries() == []


def test_a_download_cut_off_midway_leaves_no_partial_file(tmp_path, source_store):
    checkpoint(tmp_path / "www")
    with serve(tmp_path / "www", broken={"cnn.pt"}) as server:
        with pytest.raises(RtkError, match=r"cannot download .*cnn.pt .*place it at"):
            run(RECIPE.format(location=f'url = "{server.url}/cnn.pt"'), tmp_path)
    leftovers = [p for p in (source_store / "downloads").rglob("*") if p.is_file()]
    assert leftovers == [] and SourceStore().entries() == []


def test_an_http_error_names_the_url_and_where_to_put_the_file(tmp_path):
    (tmp_path / "www").mkdir()
    with serve(tmp_path / "www") as server:
        with pytest.raises(RtkError) as caught:
            run(RECIPE.format(location=f'url = "{server.url}/missing.pt"'), tmp_path)
    message = str(caught.value)
    assert f"{server.url}/missing.pt" in message and "404" in message and "place it at" in message
    assert len(message.splitlines()) == 1


def test_offline_hub_fails_fast_with_the_place_for_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RtkError, match=r"cannot download the plain checkpoint Hub file org/repo/cnn.pt .*place it at"):
        run(RECIPE.format(location='hub = "org/repo/cnn.pt"'), tmp_path)


def test_a_missing_path_says_where_to_put_it(tmp_path):
    with pytest.raises(RtkError, match=r"no such file; place the checkpoint there"):
        run(RECIPE.format(location=f'path = "{tmp_path / "nowhere.pt"}"'), tmp_path)


def test_validate_and_dry_run_download_nothing(tmp_path, cli, source_store):
    checkpoint(tmp_path / "www")
    path = tmp_path / "recipe.toml"
    with serve(tmp_path / "www") as server:
        path.write_text(RECIPE.format(location=f'url = "{server.url}/cnn.pt"'))
        with using(make_registry()):
            assert cli("validate", path).exit_code == 0
            plan = cli("run", path, "--dry-run")
        assert server.requests == []
    assert plan.exit_code == 0 and f"DOWNLOAD the plain checkpoint from the URL {server.url}/cnn.pt" in plan.stdout
    assert not (source_store / "downloads").exists()


class Hostile:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = "/tmp/rtk-test-hostile-marker"


def test_a_hostile_pickle_is_refused_and_never_runs(tmp_path):
    if os.path.exists(MARKER):
        os.remove(MARKER)
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Hostile()}, path)
    with pytest.raises(WeightsError, match=r"asks to unpickle .*system.*which rtk never does"):
        safe_load(path)
    assert not os.path.exists(MARKER)


def test_a_truncated_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save({"w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(WeightsError, match="not a readable torch checkpoint") as caught:
        safe_load(path)
    assert len(str(caught.value).splitlines()) == 1


def test_results_name_the_import(tmp_path):
    _, path = checkpoint(tmp_path / "www")
    results = run(RECIPE.format(location=f'path = "{path}"'), tmp_path)
    (entry,) = SourceStore().entries()
    assert entry.info["imported"]["path"] == str(path) and entry.info["num_classes"] == 5
    assert json.loads((tmp_path / "out" / "results.json").read_text())["runs"][0]["source"]["key"] == entry.key
    assert results["complete"]


def test_sources_import_adds_a_local_file_under_the_key_a_recipe_finds(tmp_path, cli, source_store):
    _, path = checkpoint(tmp_path / "www")
    with using(make_registry()):
        added = cli("sources", "import", path, "--format", "plain", "--model", "small-cnn",
                    "--option", "model.channels=[4, 8]", "--option", "model.feature_dim=16")
        assert added.exit_code == 0 and "added to the store" in added.stdout, added.stderr
        again = cli("sources", "import", path, "--format", "plain", "--model", "small-cnn",
                    "--option", "model.channels=[4, 8]", "--option", "model.feature_dim=16")
        assert "already in the store" in again.stdout
    (entry,) = SourceStore().entries()
    # A recipe naming the same file by URL (and its hash) finds it: no request reaches the server.
    with serve(tmp_path / "www") as server:
        results = run(RECIPE.format(location=f'url = "{server.url}/cnn.pt"\nsha256 = "{sha256(path)}"'), tmp_path)
        assert server.requests == []
    assert results["runs"][0]["source"]["key"] == entry.key and results["runs"][0]["source"]["reused"]
