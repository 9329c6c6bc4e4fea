"""`rtk compare` on two run folders written by hand: the terminal tables, the Markdown file and its
footnotes, --metric, results.json files without a summary, one-line errors."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rtk.compare_command import compare
from rtk.services.results import write_results
from rtk.services.stats import binomial_interval


def seeded_runs(shift: float, seeds: list[int], points=("lr=0.1", "lr=0.01")) -> list[dict]:
    runs = []
    for p, point in enumerate(points):
        for seed in seeds:
            clean, robust = 0.6 + p / 10 + shift + seed / 50, 0.3 + shift + seed / 50
            runs.append({"id": f"{point},seed={seed}", "point": point, "seed": seed,
                         "params": {"transfer.lr": point, "run.seed": seed},
                         "metrics": {"clean": clean, "PGD-20": robust, "robust": robust},
                         "paper": {"clean": 0.65} if p == 0 else {}, "n_eval": 100, "flags": []})
    return runs


def make_run(folder, runs, recipe="tiny", profile="smoke", summary=True):
    folder.mkdir(parents=True)
    write_results(folder, {"recipe": recipe, "recipe_path": f"{recipe}.toml", "profile": profile, "overrides": [],
                           "rtk_version": "9.9.9", "complete": True, "runs": runs})
    if not summary:  # a results.json from before summaries
        payload = json.loads((folder / "results.json").read_text())
        del payload["summary"]
        (folder / "results.json").write_text(json.dumps(payload))


def invoke(*args):
    return CliRunner().invoke(compare, [str(a) for a in args], catch_exceptions=False)


def cell(mean: float, std: float, n: int = 100) -> str:
    lo, hi = binomial_interval(mean, n)
    return f"{mean:.3f} ± {std:.3f} [{lo:.3f}, {hi:.3f}]"


@pytest.fixture
def two_runs(tmp_path):
    make_run(tmp_path / "baseline", seeded_runs(0.0, [0, 1, 2]))
    make_run(tmp_path / "ours", seeded_runs(0.1, [0, 1], points=("lr=0.1", "lr=0.001")), summary=False)
    return tmp_path / "baseline", tmp_path / "ours"


def test_compare_prints_tables_and_writes_markdown(two_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(*two_runs)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "…" not in text
    assert max(len(line) for line in text.splitlines() if not line.startswith("markdown: ")) <= 80
    for piece in ("baseline", "ours", "lr=0.1", "lr=0.01", "lr=0.001", "0.620 ± 0.020", "0.710 ± 0.014", "paper"):
        assert piece in text, piece
    assert f"markdown: {tmp_path / 'compare.md'}" in text
    md = (tmp_path / "compare.md").read_text()
    assert "## clean" in md and "## PGD-20" in md and "## robust" in md
    assert "| point | baseline[^1] | ours[^2] | paper |" in md  # only clean has paper numbers
    assert "| point | baseline[^1] | ours[^2] |" in md
    # points: the union in order of appearance; a point a run lacks is "-"
    assert f"| lr=0.1 | {cell(0.62, 0.02)} | {cell(0.71, 0.0141)} | 0.650 |" in md
    assert f"| lr=0.01 | {cell(0.72, 0.02)} | - | - |" in md
    assert f"| lr=0.001 | - | {cell(0.81, 0.0141)} | - |" in md
    assert md.index("| lr=0.1 |") < md.index("| lr=0.01 |") < md.index("| lr=0.001 |")
    footnotes = [line for line in md.splitlines() if line.startswith("[^")]
    assert footnotes == [
        f"[^1]: `{two_runs[0]}`: recipe tiny; profile smoke; seeds 0, 1, 2; n_eval 100; rtk 9.9.9.",
        f"[^2]: `{two_runs[1]}`: recipe tiny; profile smoke; seeds 0, 1; n_eval 100; rtk 9.9.9."]


def test_compare_one_metric_to_a_given_file_and_labels_differing_recipes(tmp_path):
    make_run(tmp_path / "a" / "run", seeded_runs(0.0, [0]), recipe="one")
    make_run(tmp_path / "b" / "run", seeded_runs(0.0, [0]), recipe="two", profile=None)
    out = tmp_path / "tables" / "appendix.md"
    out.parent.mkdir()
    result = invoke(tmp_path / "a" / "run", tmp_path / "b" / "run", "--metric", "robust", "--out", out)
    assert result.exit_code == 0, result.output
    md = out.read_text()
    assert "## robust" in md and "## clean" not in md
    lo, hi = binomial_interval(0.3, 100)
    assert f"0.300 [{lo:.3f}, {hi:.3f}]" in md  # one seed: no std
    # same folder names: their paths; different recipes: recipe/profile beside them
    assert f"{tmp_path / 'a' / 'run'} (one/smoke)[^1]" in md and f"{tmp_path / 'b' / 'run'} (two)[^2]" in md
    assert "profile (none)" in md


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.stderr
    return lines[0]


def test_compare_errors(two_runs, tmp_path):
    missing = tmp_path / "never-ran"
    missing.mkdir()
    assert f"{missing} has no results.json" in one_line_error(invoke(two_runs[0], missing))
    assert "--metric accuracy: none of the runs has it; they have clean, PGD-20, robust" in one_line_error(
        invoke(*two_runs, "--metric", "accuracy"))
    (missing / "results.json").write_text("{not json")
    assert "cannot be read as JSON" in one_line_error(invoke(missing))
    assert not (tmp_path / "compare.md").exists()
