"""Every CPU-scale reproduction in recipes/mini/ runs end to end on real MNIST under its smoke
profile (seconds each; skipped when MNIST is absent). The full runs and their findings are the
slow tests of test_mini_shafahi.py, test_mini_study.py and test_mini_cartl_roli.py."""
from __future__ import annotations

import json

import pytest

from rtk.config.recipe import load_recipe
from tests.helpers import REPO, require_mnist

MINI = sorted((REPO / "recipes" / "mini").glob("*.toml"))


def test_there_are_eight_mini_recipes():
    assert len(MINI) == 8


@pytest.mark.data
@pytest.mark.parametrize("path", MINI, ids=lambda p: p.stem)
def test_mini_smoke_profile_runs_on_mnist(cli, tmp_path, one_thread, path, monkeypatch):
    monkeypatch.setenv("RTK_DATA", str(require_mnist()))  # also reaches a source selected from another recipe
    out = tmp_path / "out"
    result = cli("run", path, "--profile", "smoke", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output + result.stderr
    payload = json.loads((out / "results.json").read_text())
    assert payload["complete"] and len(payload["runs"]) == len(load_recipe(path, "smoke").points())
    for run in payload["runs"]:
        assert 0 <= run["metrics"]["clean"] <= 1
        if "certify" in run:
            assert run["certify"]["n"] >= 1 and (out / run["certify"]["tsv"]).is_file()
        else:
            assert 0 <= run["metrics"]["robust"] <= run["metrics"]["clean"]
