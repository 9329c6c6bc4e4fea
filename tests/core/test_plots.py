"""`rtk plot` and rtk.services.plots: series equal the results, a real PNG is written, errors are one line."""
from __future__ import annotations

import json
import struct

import pytest

from rtk.services.plots import plot_run, plot_series

LAMBDAS = [1e-7, 1e-3, 5e-3, 0.1]


def payload(complete=True):
    """Two sources x four lambda_d, paper numbers for the robust source only, one metric missing."""
    runs = []
    for source in ("natural", "robust"):
        for i, lam in enumerate(LAMBDAS):
            shift = 0.0 if source == "natural" else 0.3
            robust = source == "robust"
            metrics = {"clean": 0.9 - 0.05 * i, "PGD-20": 0.1 * i * robust, "robust": 0.09 * i * robust}
            paper = {"clean": 0.8 - 0.04 * i, "PGD-20": "unknown" if i == 0 else shift} if robust else {}
            runs.append({"id": f"lambda_d={lam:g},objective={source}",
                         "params": {"transfer.lambda_d": lam, "source.objective": {"name": source}},
                         "metrics": metrics, "paper": paper})
    runs.reverse()  # the series are sorted by x whatever the order of the runs
    return {"recipe": "test", "complete": complete, "runs": runs}


def write(folder, data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(data))
    return folder


def png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_series_equal_the_results():
    data = plot_series(payload())
    assert data.x_key == "transfer.lambda_d" and not data.categorical and data.log_x
    assert data.metrics == ["clean", "PGD-20", "robust"]
    assert {(s.metric, s.group) for s in data.series} == {
        (m, f"objective={g}") for m in data.metrics for g in ("natural", "robust")}
    runs = payload()["runs"]
    for line in data.series:
        source = line.group.split("=")[1]
        mine = sorted((r["params"]["transfer.lambda_d"], r["metrics"][line.metric]) for r in runs
                      if r["params"]["source.objective"]["name"] == source)
        assert list(zip(line.xs, line.ys)) == mine
        published = sorted((r["params"]["transfer.lambda_d"], r["paper"].get(line.metric)) for r in runs
                           if r["params"]["source.objective"]["name"] == source
                           and isinstance(r["paper"].get(line.metric), float))
        assert sorted(zip(line.paper_xs, line.paper_ys)) == published
    robust_pgd = next(s for s in data.series if s.metric == "PGD-20" and s.group == "objective=robust")
    assert len(robust_pgd.paper_xs) == len(LAMBDAS) - 1  # "unknown" is not drawn


def test_categorical_and_linear_axes():
    runs = [{"id": str(i), "params": {"target": {"dataset": "cifar100", **({"classes": [1, 2]} if i else {})}},
             "metrics": {"clean": 0.5 + i / 10}} for i in range(2)]
    data = plot_series({"runs": runs})
    assert data.categorical and not data.log_x
    assert data.ticks[0] != data.ticks[1] and all(t.startswith("cifar100") for t in data.ticks)
    assert data.series[0].xs == [0, 1] and data.series[0].ys == [0.5, 0.6]
    linear = plot_series({"runs": [{"id": str(k), "params": {"transfer.k": k}, "metrics": {"clean": k / 20}}
                                   for k in (1, 5, 17)]})
    assert not linear.log_x and linear.series[0].xs == [1, 5, 17]


def test_metric_and_x_choice():
    data = plot_series(payload(), x="source.objective", metrics=["clean"])
    assert data.categorical and data.ticks == ["robust", "natural"] and data.metrics == ["clean"]
    assert len(data.series) == len(LAMBDAS) and {len(s.ys) for s in data.series} == {2}


def test_plot_command_writes_png(cli, tmp_path):
    run = write(tmp_path / "run", payload())
    result = cli("plot", run)
    assert result.exit_code == 0, result.output
    width, height = png_size(run / "plot.png")
    assert 600 <= width <= 3000 and 200 <= height <= 1500
    assert 5_000 < (run / "plot.png").stat().st_size < 2_000_000
    assert not list(run.glob(".plot.png.*"))  # the atomic writer left no temporary behind
    other = tmp_path / "elsewhere" / "p.png"
    assert cli("plot", run, "--metric", "clean", "--out", other).exit_code == 0
    assert png_size(other)[0] < width  # one panel instead of three


@pytest.mark.parametrize("case, expected", [
    ("missing", "is not a folder"),
    ("no-results", "results.json does not exist"),
    ("incomplete", "is incomplete"),
    ("garbage", "is unreadable"),
    ("unswept", "nothing was swept"),
    ("metric", "available: clean, PGD-20, robust"),
    ("x", "swept keys: transfer.lambda_d, source.objective"),
])
def test_plot_errors_are_one_line(cli, tmp_path, case, expected):
    run = tmp_path / "run"
    args = []
    if case == "no-results":
        run.mkdir()
    elif case == "incomplete":
        write(run, payload(complete=False))
    elif case == "garbage":
        run.mkdir()
        (run / "results.json").write_text("{not json")
    elif case == "unswept":
        write(run, {"complete": True, "runs": [{"id": "r", "params": {}, "metrics": {"clean": 0.5}}]})
    elif case in ("metric", "x"):
        write(run, payload())
        args = ["--metric", "accuracy"] if case == "metric" else ["--x", "transfer.lr"]
    result = cli("plot", run, *args)
    assert result.exit_code == 2
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (run / "plot.png").exists()


def test_plot_run_is_quiet_without_a_sweep_and_never_raises(tmp_path):
    from io import StringIO

    from rich.console import Console

    single = write(tmp_path / "single",
                   {"complete": True, "runs": [{"id": "r", "params": {}, "metrics": {"clean": 0.5}}]})
    assert plot_run(single) is None and not (single / "plot.png").exists()
    swept = write(tmp_path / "swept", payload())
    assert plot_run(swept) == swept / "plot.png" and png_size(swept / "plot.png")
    out = StringIO()
    assert plot_run(tmp_path / "missing", console=Console(file=out, width=300)) is None
    assert "no plot" in out.getvalue()
