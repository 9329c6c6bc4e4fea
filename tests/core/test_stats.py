"""rtk.services.stats: Clopper-Pearson intervals against closed forms, and the per-point summary over seeds."""
from __future__ import annotations

import math

import pytest

from rtk.services.stats import binomial_interval, inside, mean_std, run_intervals, sample_sizes, summarize


def test_interval_of_half_on_a_hundred():
    lo, hi = binomial_interval(0.5, 100)
    assert (round(lo, 3), round(hi, 3)) == (0.398, 0.602)
    assert lo + hi == pytest.approx(1.0)  # symmetric at k = n/2


@pytest.mark.parametrize("n", [1, 20, 50, 1000])
def test_interval_at_the_edges_has_a_closed_form(n):
    # k = 0: upper = 1 - (alpha/2)^(1/n); k = n: lower = (alpha/2)^(1/n)
    assert binomial_interval(0.0, n) == (0.0, pytest.approx(1 - 0.025 ** (1 / n)))
    assert binomial_interval(1.0, n) == (pytest.approx(0.025 ** (1 / n)), 1.0)
    assert binomial_interval(0.0, n, level=0.9)[1] == pytest.approx(1 - 0.05 ** (1 / n))


def test_interval_counts_round_float32_accuracies():
    # 34/50 as a float32 mean reads 0.6800000071525574: still k = 34
    assert binomial_interval(0.6800000071525574, 50) == binomial_interval(34 / 50, 50)
    assert binomial_interval(0.6800000071525574, 50) != binomial_interval(35 / 50, 50)


@pytest.mark.parametrize("accuracy, n", [(0.5, 0), (0.5, -3), (1.2, 10), (-0.1, 10), (float("nan"), 10), (0.5, 2.5)])
def test_interval_refuses_what_is_no_proportion(accuracy, n):
    with pytest.raises(ValueError):
        binomial_interval(accuracy, n)


def test_mean_std_skips_missing_values_and_has_no_std_for_one():
    assert mean_std([0.6, 0.7, 0.8]) == (pytest.approx(0.7), pytest.approx(0.1))
    assert mean_std([0.6, None, float("nan")]) == (0.6, None)
    assert mean_std([]) == (None, None)


def seeded_run(point, seed, clean, robust, acr=None, certified=None, n_eval=100):
    run = {"id": f"{point},seed={seed}", "point": point, "seed": seed,
           "params": {"transfer.lr": point, "run.seed": seed}, "metrics": {"clean": clean, "robust": robust},
           "paper": {"clean": 0.7, "robust": 0.1}, "n_eval": n_eval}
    if acr is not None:
        run["certify"] = {"n": 20, "metrics": {"certified_accuracy@0.5": certified, "acr": acr}}
    return run


def test_summary_of_seeds():
    runs = [seeded_run("lr=0.1", s, c, r, acr=a, certified=q)
            for s, c, r, a, q in [(0, 0.6, 0.30, 0.5, 0.45), (1, 0.7, 0.35, 0.7, 0.55), (2, 0.8, 0.40, 0.6, 0.50)]]
    (entry,) = summarize(runs)
    assert entry["point"] == "lr=0.1" and entry["seeds"] == [0, 1, 2] and entry["n_eval"] == 100
    assert entry["params"] == {"transfer.lr": "lr=0.1"}  # run.seed is what varies inside a point
    clean = entry["metrics"]["clean"]
    assert clean["values"] == [0.6, 0.7, 0.8] and clean["n"] == 100
    assert clean["mean"] == pytest.approx(0.7) and clean["std"] == pytest.approx(0.1)  # sample std (ddof=1)
    assert clean["ci95"] == list(binomial_interval(0.7, 100))
    robust = entry["metrics"]["robust"]
    assert robust["std"] == pytest.approx(0.05) and robust["ci95"] == list(binomial_interval(0.35, 100))
    # certified accuracy: its n is the certifier's (20 examples), not n_eval
    certified = entry["metrics"]["certified_accuracy@0.5"]
    assert certified["n"] == 20 and certified["ci95"] == list(binomial_interval(0.5, 20))
    # ACR is a radius: mean and std, no interval
    acr = entry["metrics"]["acr"]
    assert acr["mean"] == pytest.approx(0.6) and acr["std"] == pytest.approx(0.1) and acr["ci95"] is None
    assert acr["n"] is None
    # 0.7 lies in [0.60, 0.79]; 0.1 lies far below [0.26, 0.45]
    assert entry["paper"] == {"clean": 0.7, "robust": 0.1}
    assert entry["paper_inside"] == {"clean": True, "robust": False}


def test_points_keep_their_first_appearance_order_and_unseeded_runs_stand_alone():
    runs = [seeded_run("b", 0, 0.5, 0.2), seeded_run("a", 0, 0.6, 0.3), seeded_run("b", 1, 0.7, 0.4),
            {"id": "plain", "params": {}, "metrics": {"clean": 0.9}, "n_eval": 50},
            {"id": "plain", "params": {}, "metrics": {"clean": 0.8}, "n_eval": 50}]
    summary = summarize(runs)
    assert [e["point"] for e in summary] == ["b", "a", "plain", "plain"]
    assert [e["seeds"] for e in summary] == [[0, 1], [0], [], []]
    assert summary[0]["metrics"]["clean"]["mean"] == pytest.approx(0.6)
    assert summary[1]["metrics"]["clean"]["std"] is None  # one seed says nothing about the spread
    alone = summary[2]["metrics"]["clean"]
    assert (alone["mean"], alone["std"], alone["ci95"]) == (0.9, None, list(binomial_interval(0.9, 50)))
    assert summary[2]["paper"] == {} and summary[2]["paper_inside"] == {}


def test_no_interval_without_a_known_n_or_a_proportion():
    runs = [{"id": "x", "params": {}, "metrics": {"clean": 0.9, "robust": float("nan")}, "paper": {"clean": "unknown"}}]
    (entry,) = summarize(runs)
    assert entry["metrics"]["clean"]["ci95"] is None and entry["n_eval"] is None and entry["paper_inside"] == {}
    assert entry["metrics"]["robust"]["mean"] is None and entry["metrics"]["robust"]["values"] == [None]
    assert run_intervals(runs[0]) == {}


def test_run_intervals_and_sample_sizes():
    run = seeded_run("p", 0, 0.5, 0.25, acr=0.4, certified=0.45, n_eval=100)
    assert sample_sizes(run) == {"clean": 100, "robust": 100, "certified_accuracy@0.5": 20}
    found = run_intervals(run)
    assert set(found) == {"clean", "robust", "certified_accuracy@0.5"}
    assert [round(v, 3) for v in found["clean"]] == [0.398, 0.602]
    assert found["certified_accuracy@0.5"] == list(binomial_interval(0.45, 20))


def test_inside():
    assert inside(0.5, [0.4, 0.6]) and inside(0.4, [0.4, 0.6]) and not inside(0.61, [0.4, 0.6])
    assert inside("unknown", [0.4, 0.6]) is None and inside(0.5, None) is None


def test_large_n_comes_close_to_the_normal_approximation():
    wald = 1.96 * math.sqrt(0.93 * 0.07 / 1000)
    lo, hi = binomial_interval(0.93, 1000)
    assert math.isclose(lo, 0.93 - wald, abs_tol=3e-3) and math.isclose(hi, 0.93 + wald, abs_tol=3e-3)
    assert hi - 0.93 < 0.93 - lo  # exact intervals lean away from the nearer bound
