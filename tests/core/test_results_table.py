"""The results files (intervals, summary, CSVs) and the results table in 80 and 200 columns: every
number whole (no "…"), stacked when the table cannot fit."""
from __future__ import annotations

import copy
import csv
import io
import json

from rich.console import Console

from rtk.services.results import curves_line, results_view, table_width, write_results
from rtk.services.shards import print_report
from rtk.services.stats import binomial_interval


def run(i: int, metrics: dict, paper: dict | None = None, certify: dict | None = None) -> dict:
    found = {"id": f"objective=v{i}", "params": {"source.objective": {"name": f"v{i}"}},
             "metrics": metrics, "paper": paper or {}, "n_eval": 50, "attack_order": "independent", "flags": [],
             "source": {"key": f"{i}f76fc8bbfdb009e", "reused": i == 1, "clean": 0.896 - i / 10}}
    if certify:
        found["certify"] = certify
    return found


def quickstart_runs() -> list[dict]:
    return [run(0, {"clean": 34 / 50, "PGD-20": 4 / 50, "robust": 4 / 50}, paper={"clean": 0.93, "robust": 0.08}),
            run(1, {"clean": 23 / 50, "PGD-20": 15 / 50, "robust": 15 / 50})]


def wide_runs() -> list[dict]:
    attacks = {f"attack-{j}": (20 + j) / 50 for j in range(5)}
    certify = {"n": 20, "metrics": {"certified_accuracy@0.5": 0.45, "acr": 0.412, "clean_smoothed_accuracy": 0.6}}
    return [run(i, {"clean": (40 - i) / 50, **attacks, "robust": 0.4}, certify=certify) for i in range(2)]


def seeded(runs: list[dict], seeds=(0, 1, 2)) -> list[dict]:
    found = []
    for base in runs:
        for seed in seeds:
            one = copy.deepcopy(base)
            one.update(id=f"{base['id']},seed={seed}", point=base["id"], seed=seed)
            one["params"]["run.seed"] = seed
            one["metrics"] = {k: v + seed / 50 for k, v in base["metrics"].items()}
            one["source"]["key"] = f"{seed}{base['source']['key'][1:]}"
            found.append(one)
    return found


def rendered(runs: list[dict], width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(results_view(runs, "quickstart", width=console.width))
    return console.export_text()


def interval(value: float, n: int = 50) -> str:
    lo, hi = binomial_interval(value, n)
    return f"[{lo:.3f}, {hi:.3f}]"


def assert_whole(text: str, width: int, pieces: list[str]) -> None:
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    for piece in pieces:
        assert piece in text, piece


def expected_pieces(runs: list[dict]) -> list[str]:
    pieces = []
    for one in runs:
        for name, value in one["metrics"].items():
            pieces += [f"{value:.3f}", interval(value)]
        for name, value in one.get("certify", {}).get("metrics", {}).items():
            pieces.append(f"{value:.3f}")
            if name != "acr":
                pieces.append(interval(value, 20))
        pieces.append(f"{one['source']['clean']:.3f}")
    return pieces


def test_quickstart_table_fits_80_and_200_columns():
    runs = quickstart_runs()
    assert table_width(runs) <= 80
    for width in (80, 200):
        text = rendered(runs, width)
        assert any("PGD-20" in line and "robust" in line for line in text.splitlines())  # a table's header
        assert "clean: " not in text  # not the stacked form
        assert_whole(text, width, expected_pieces(runs) + ["(paper 0.930,", "(paper 0.080,"])
        # 0.930 lies outside clean's [0.533, 0.805]; 0.080 inside robust's [0.022, 0.192]
        assert text.count("outside") == 1 and text.count("inside") == 1
    assert "objective=v0" in rendered(runs, 200)  # ids are not folded when there is room


def test_too_many_columns_print_stacked_at_80_and_as_a_table_at_200():
    runs = wide_runs()
    assert 80 < table_width(runs) <= 200
    text = rendered(runs, 80)
    assert_whole(text, 80, expected_pieces(runs))
    assert "  certified_accuracy@0.5: 0.450 " + interval(0.45, 20) in text  # full names when stacked
    assert "  acr: 0.412\n" in text  # a radius: no interval
    wide = rendered(runs, 200)
    assert_whole(wide, 200, expected_pieces(runs))
    assert "certified@0.5" in wide and "clean: " not in wide


def test_seeded_rows_are_points_with_mean_std_and_seeds():
    runs = seeded(quickstart_runs())
    for width in (80, 200):
        text = rendered(runs, width)
        assert_whole(text, width, ["0.700 ± 0.020", interval(0.7), "0.100 ± 0.020", interval(0.1), "0,1,2",
                                   "0.480 ± 0.020", "0.320 ± 0.020", "3 trained", "(paper 0.930,"])
        assert ",seed=" not in text  # one row per point, not per run
    wide = rendered(seeded(wide_runs(), (0, 1)), 80)
    assert_whole(wide, 80, ["seeds 0,1", "0.790 ± 0.014", interval(0.79)])


def test_write_results_adds_intervals_summary_and_csv_columns(tmp_path):
    runs = quickstart_runs()
    payload = {"recipe": "quickstart", "complete": True, "runs": runs}
    before = copy.deepcopy(payload)
    write_results(tmp_path, payload)
    assert payload == before  # the caller's runs are not touched
    written = json.loads((tmp_path / "results.json").read_text())
    assert list(written) == ["recipe", "complete", "runs", "summary"]
    first = written["runs"][0]
    assert list(first)[:4] == ["id", "params", "metrics", "intervals"]
    assert first["intervals"]["clean"] == list(binomial_interval(34 / 50, 50))
    assert [e["point"] for e in written["summary"]] == ["objective=v0", "objective=v1"]
    assert written["summary"][0]["paper_inside"] == {"clean": False, "robust": True}
    rows = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert list(rows[0])[:6] == ["id", "source.objective", "clean", "clean.ci_lo", "clean.ci_hi", "PGD-20"]
    assert float(rows[1]["robust.ci_hi"]) == binomial_interval(15 / 50, 50)[1] and rows[1]["paper.clean"] == ""
    summary = list(csv.DictReader(io.StringIO((tmp_path / "summary.csv").read_text())))
    assert [r["point"] for r in summary] == ["objective=v0", "objective=v1"]
    assert summary[0]["clean.std"] == "" and float(summary[0]["clean.ci_lo"]) == binomial_interval(0.68, 50)[0]


def test_seeded_summary_csv(tmp_path):
    write_results(tmp_path, {"recipe": "q", "runs": seeded(quickstart_runs())})
    rows = list(csv.DictReader(io.StringIO((tmp_path / "summary.csv").read_text())))
    assert len(rows) == 2 and rows[0]["seeds"] == "0 1 2" and "run.seed" not in rows[0]
    assert abs(float(rows[0]["clean.mean"]) - 0.7) < 1e-12 and abs(float(rows[0]["clean.std"]) - 0.02) < 1e-12
    results = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert len(results) == 6 and [r["run.seed"] for r in results[:3]] == ["0", "1", "2"]


def test_curves_line_and_report(tmp_path):
    assert curves_line(tmp_path) is None
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    assert curves_line(tmp_path) == f"curves: {tmp_path / 'metrics.jsonl'} (rtk plot --curves {tmp_path})"
    console = Console(width=80, record=True, file=io.StringIO())
    print_report(console, quickstart_runs(), "quickstart", "results: here", out_dir=tmp_path)
    text = console.export_text(styles=False)
    assert "curves: " in text and text.rstrip().endswith("results: here")
    console = Console(width=80, record=True, file=io.StringIO())
    print_report(console, quickstart_runs(), "quickstart", "results: here")  # the old call: no curves line
    assert "curves: " not in console.export_text()


def test_ids_fold_only_between_parts_and_a_copied_robust_column_is_left_out():
    runs = [run(i, {"clean": 0.9, "PGD-20": 0.2, "robust": 0.2}) for i in range(2)]
    for one in runs:
        one["id"] = one["id"].replace("objective=v", "objective=natural-and-long-") + ",seed=0"
    text = rendered(runs, 80)
    assert "objective=natural-and-long-0" in text  # whole: folded only at the comma
    assert "robust" not in text.split("\n\n")[0].splitlines()[1]  # PGD-20 alone: robust would repeat it
    runs[0]["metrics"]["robust"] = 0.1  # two attacks' worth of difference: robust is its own column again
    runs[0]["metrics"]["FGSM"] = 0.3
    assert "robust" in rendered(runs, 200)
