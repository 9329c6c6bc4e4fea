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


def bars_and_lines(fig):
    """(bar containers, error-bar containers, plain lines) over every panel of a figure."""
    from matplotlib.container import BarContainer, ErrorbarContainer

    containers = [c for ax in fig.axes for c in ax.containers]
    bars = [c for c in containers if isinstance(c, BarContainer)]
    errorbars = [c for c in containers if isinstance(c, ErrorbarContainer)]
    return bars, errorbars, [line for ax in fig.axes for line in ax.lines]


def test_numeric_axis_draws_lines_categorical_axis_draws_grouped_bars():
    from rtk.services.plots import figure

    numeric = figure(plot_series(payload()))
    bars, _, lines = bars_and_lines(numeric)
    assert not bars and len(numeric.axes) == 3
    assert {tuple(line.get_xdata()) for line in lines} >= {tuple(sorted(LAMBDAS))}
    data = plot_series(payload(), x="source.objective")  # 2 categories, 4 lambda series per metric panel
    fig = figure(data)
    bars, _, lines = bars_and_lines(fig)
    assert len(fig.axes) == 3 and len(bars) == 3 * len(LAMBDAS)
    for ax, metric in zip(fig.axes, data.metrics):
        assert ax.get_title() == metric and [t.get_text() for t in ax.get_xticklabels()] == data.ticks
        for container, line in zip(ax.containers, (s for s in data.series if s.metric == metric)):
            assert [p.get_height() for p in container.patches] == pytest.approx(line.ys)
    first = sorted((c.patches[0].get_x(), c.patches[0].get_width()) for c in fig.axes[0].containers)
    assert len(first) == len(LAMBDAS) and -0.5 < first[0][0] and sum(first[-1]) < 0.5  # around category 0
    assert all(a + width <= b + 1e-9 for (a, width), (b, _) in zip(first, first[1:]))  # side by side
    paper = [line for line in lines if line.get_marker() == "D"]  # the paper's numbers sit on their bar
    assert paper and all(line.get_markerfacecolor() == "none" for line in paper)


def test_one_series_categorical_sweep_is_one_panel_with_a_bar_per_metric():
    from rtk.services.plots import figure

    runs = [{"id": f"pretrained={flag}", "params": {"source.pretrained": flag},
             "metrics": {"clean": 0.7 + 0.1 * flag, "robust": 0.2 + 0.1 * flag}, "paper": {"robust": 0.25}}
            for flag in (False, True)]
    data = plot_series({"runs": runs})
    assert data.categorical and [t.lower() for t in data.ticks] == ["false", "true"]
    fig = figure(data)
    bars, _, lines = bars_and_lines(fig)
    assert len(fig.axes) == 1 and [c.get_label() for c in bars] == ["clean", "robust"]
    assert [p.get_height() for p in bars[0].patches] == pytest.approx([0.7, 0.8])
    robust_centres = [p.get_x() + p.get_width() / 2 for p in bars[1].patches]
    paper = next(line for line in lines if line.get_marker() == "D")
    assert list(paper.get_xdata()) == pytest.approx(robust_centres) and list(paper.get_ydata()) == [0.25, 0.25]


def seeded_payload(seeds=(0, 1, 2)):
    """Two objectives x two lambda_d, each repeated per seed, as `[run] seeds` writes them."""
    runs = []
    for source in ("natural", "robust"):
        for lam in (0.01, 1.0):
            for seed in seeds:
                point = f"lambda_d={lam:g},objective={source}"
                runs.append({"id": f"{point},seed={seed}", "point": point, "seed": seed,
                             "params": {"transfer.lambda_d": lam, "source.objective": {"name": source},
                                        "run.seed": seed},
                             "metrics": {"clean": 0.5 + lam / 4 + 0.01 * seed * (source == "robust")}})
    return {"recipe": "seeds", "complete": True, "runs": runs}


def test_seeds_are_averaged_with_their_std_never_an_axis(tmp_path):
    import statistics

    from rtk.errors import RtkError
    from rtk.services.plots import figure

    payload_ = seeded_payload()
    data = plot_series(payload_)
    assert data.x_key == "transfer.lambda_d" and data.seeds == 3
    assert sorted(s.group for s in data.series) == ["objective=natural", "objective=robust"]  # no seed series
    for line in data.series:
        for x, y, err in zip(line.xs, line.ys, line.errs):
            values = [r["metrics"]["clean"] for r in payload_["runs"]
                      if r["params"]["transfer.lambda_d"] == x and line.group.endswith(r["point"].split("=")[-1])]
            assert len(values) == 3 and y == pytest.approx(statistics.fmean(values))
            assert err == pytest.approx(statistics.stdev(values))
    robust = next(s for s in data.series if s.group == "objective=robust")
    assert robust.errs[0] > 0 and next(s for s in data.series if s.group == "objective=natural").errs == [0, 0]
    _, errorbars, _ = bars_and_lines(figure(data))
    assert len(errorbars) == 1  # the robust line; the natural one has nothing to show
    bars = plot_series(payload_, x="source.objective")
    assert len(bars.series) == 2 and all(len(s.ys) == 2 for s in bars.series)
    assert "mean ± std over 3 seeds" in figure(bars).axes[0].get_xlabel()
    with pytest.raises(RtkError, match="seeds repeat one point"):
        plot_series(payload_, x="run.seed")


def test_seeds_without_a_sweep_are_one_bar_per_metric(tmp_path):
    runs = [{"id": f"seed={s}", "point": "smoke", "seed": s, "params": {"run.seed": s},
             "metrics": {"clean": 0.6 + 0.1 * s, "robust": 0.3}} for s in range(3)]
    data = plot_series({"runs": runs})
    assert data.categorical and data.x_key == "point" and data.ticks == ["smoke"]
    assert [(s.metric, s.ys, s.errs) for s in data.series] == [
        ("clean", [pytest.approx(0.7)], [pytest.approx(0.1)]), ("robust", [0.3], [0.0])]
    run = write(tmp_path / "run", {"complete": True, "runs": runs})
    assert plot_run(run) == run / "plot.png" and png_size(run / "plot.png")


def test_a_category_holds_only_its_bars_centred_on_its_tick():
    from rtk.services.plots import figure

    runs = [{"id": f"{obj},{lr}", "params": {"source.objective": obj, "transfer.lr": lr}, "metrics": {"clean": 0.5}}
            for obj, lr in (("natural", "a"), ("natural", "b"), ("robust", "b"), ("trades", "c"))]
    fig = figure(plot_series({"runs": runs}, x="source.objective"))
    bars, _, _ = bars_and_lines(fig)
    centres = {c.get_label(): [p.get_x() + p.get_width() / 2 for p in c.patches] for c in bars}
    assert centres["lr=b"] == pytest.approx([0.2, 1.0]) and centres["lr=a"] == pytest.approx([-0.2])
    assert centres["lr=c"] == pytest.approx([2.0])  # alone in its category: on the tick, no gap beside it
