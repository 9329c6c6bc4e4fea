"""Every benchmark runs with tiny settings and writes the result that ``python -m benchmarks``
collects. No timing is asserted here (speed targets are the benchmarks' own output); what is
asserted is that each compares two real paths that computed the same thing."""
from __future__ import annotations

import json

import pytest

from benchmarks import __main__ as suite
from benchmarks.common import paired_ratio, timing_summary

TINY = {
    "bench_pgd": ["--n", "32", "--steps", "2", "--repeats", "1"],
    "bench_autoattack": ["--n", "8", "--repeats", "1"],
    "bench_certify": ["--k", "2", "--n0", "10", "--n", "100", "--batch-size", "50", "--repeats", "1"],
    "bench_linear_probe": ["--n", "128", "--epochs", "2", "--repeats", "1"],
    "bench_lwf": ["--n", "128", "--repeats", "1"],
    "bench_pgd_bound": ["--batch-size", "8", "--steps", "2", "--repeats", "1"],
    "bench_import": ["--repeats", "1"],
}


def test_every_benchmark_has_tiny_settings_here():
    assert set(suite.discover()) == set(TINY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_benchmark_runs_and_writes_its_ratio(name, tmp_path, one_thread):
    import importlib

    out = tmp_path / f"{name}.json"
    assert importlib.import_module(f"benchmarks.{name}").main([*TINY[name], "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["ratio_rtk_over_reference"] > 0 and isinstance(result["meets_target"], bool)
    assert result["meets_target"] == (result["ratio_rtk_over_reference"] <= result["target"])
    if name == "bench_import":  # fresh interpreters that import rtk: neither torch nor a plugin comes along
        assert result["loads_torch"] is False and result["loads_plugins"] == []
        return
    assert result["torch_threads"] == 1 and result["torch"]
    if name == "bench_pgd":
        assert result["same_robust_accuracy"]  # both paths attacked with the same seeds
    if name == "bench_autoattack":
        assert result["identical_adversarial_images"]


def test_paired_ratio_is_the_median_of_per_repeat_ratios():
    times = {"rtk": [1.0, 2.2, 3.0], "ref": [1.0, 2.0, 1.0]}
    assert paired_ratio(times, "rtk", "ref") == pytest.approx(1.1)
    summary = timing_summary(times, "rtk", "ref")
    # the medians (2.2 s, 1.0 s) come from different repeats; the paired ratio compares each repeat with itself
    assert summary["ratio_of_medians"] == pytest.approx(2.2) and summary["ratio_of_minimums"] == 1.0
    assert summary["median_seconds"] == {"rtk": 2.2, "ref": 1.0}


def test_suite_prints_the_table_and_writes_json(tmp_path, capsys, monkeypatch, one_thread):
    import benchmarks.bench_pgd_bound as bound

    real = bound.main
    monkeypatch.setattr(bound, "main", lambda argv: real([*TINY["bench_pgd_bound"], *argv]))
    out = tmp_path / "all.json"
    assert suite.main(["--only", "pgd_bound", "--json", str(out)]) == 0
    assert "bench_pgd_bound" in capsys.readouterr().out
    assert set(json.loads(out.read_text())["benchmarks"]) == {"bench_pgd_bound"}
