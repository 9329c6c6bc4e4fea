"""rtk.services.curves.plot_curves / read_metrics: metrics.jsonl drawn as training curves, resumed
epochs de-duplicated, broken lines skipped, one-line errors when there is nothing to draw."""
from __future__ import annotations

import json

import pytest

from rtk.errors import RtkError
from rtk.services.curves import CURVE_QUANTITIES, curve_series, curves_figure, plot_curves, read_metrics

SOURCE = "source 5009383294552c87"
TRANSFER = "transfer objective=natural"


def epoch(stage, fit, n, **extra):
    return {"stage": stage, "fit": fit, "kind": "epoch", "epoch": n, "epochs": 3, "step": 5 * n,
            "steps_per_epoch": 5, "loss": 1.0 / n, "lr": 0.1 / n, "clean_acc": 0.5 + 0.1 * n,
            "clean_acc_on": "train", "seconds": 2.0 * n, "examples_per_s": 800.0 + n,
            "time": "2026-12-04T07:00:00", **extra}


def records():
    """A source training, a transfer probe + train with RoLI-style validation, step records, a
    resume that repeats epoch 2 of the source with other numbers, and two broken lines."""
    lines = [epoch(SOURCE, "train", n) for n in (1, 2, 3)]
    lines += [{"stage": SOURCE, "fit": "train", "kind": "step", "epoch": 1, "step": s, "steps_per_epoch": 5,
               "loss": 2.0 - 0.1 * s} for s in (2, 4, 7)]
    lines.append(epoch(SOURCE, "train", 2, loss=0.42))  # the resumed run's epoch 2: it wins
    for fit in ("probe", "train"):
        lines += [epoch(TRANSFER, fit, n) for n in (1, 2)]
    lines += [{"stage": TRANSFER, "fit": "train", "kind": "validation", "epoch": n, "val_robust_acc": 0.2 * n}
              for n in (1, 2)]
    lines.append({"stage": TRANSFER, "fit": "train", "kind": "epoch", "epoch": 3})  # keys may be missing
    text = "\n".join(json.dumps(line) for line in lines)
    return text[:40] + "\n" + text + "\n[1, 2]\n{\"stage\": \"cut by a kill"


def write(tmp_path, text):
    run = tmp_path / "run"
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text(text)
    return run


def test_read_metrics_keeps_the_last_record_of_each_epoch(tmp_path):
    run = write(tmp_path, records())
    parsed = read_metrics(run)
    assert parsed == read_metrics(run / "metrics.jsonl")
    source_epochs = [r for r in parsed if r["stage"] == SOURCE and r["kind"] == "epoch"]
    assert sorted(r["epoch"] for r in source_epochs) == [1, 2, 3]
    assert next(r for r in source_epochs if r["epoch"] == 2)["loss"] == 0.42
    assert len([r for r in parsed if r["kind"] == "step"]) == 3
    assert len(parsed) == 3 + 3 + 2 * 2 + 2 + 1  # the broken lines are gone, nothing else


def test_curves_are_one_line_per_training_and_quantity(tmp_path):
    curves = curve_series(read_metrics(write(tmp_path, records())))
    by = {(c.training, c.quantity, c.steps): c for c in curves}
    trainings = {c.training for c in curves}
    assert trainings == {f"{SOURCE} / train", f"{TRANSFER} / probe", f"{TRANSFER} / train"}
    source_loss = by[(f"{SOURCE} / train", "loss", False)]
    assert source_loss.xs == [1, 2, 3] and source_loss.ys == [1.0, 0.42, pytest.approx(1 / 3)]
    steps = by[(f"{SOURCE} / train", "loss", True)]
    assert steps.xs == [0.4, 0.8, 1.4] and steps.ys == pytest.approx([1.8, 1.6, 1.3])
    assert not any(c.steps and c.quantity != "loss" for c in curves)  # step records: loss only
    validation = by[(f"{TRANSFER} / train", "val_robust_acc", False)]
    assert validation.xs == [1, 2] and validation.ys == pytest.approx([0.2, 0.4])
    assert (f"{TRANSFER} / probe", "val_robust_acc", False) not in by
    assert by[(f"{TRANSFER} / train", "lr", False)].xs == [1, 2]  # the epoch 3 record without numbers adds none


def test_figure_has_a_panel_per_quantity_and_a_line_per_training(tmp_path):
    curves = curve_series(read_metrics(write(tmp_path, records())))
    fig = curves_figure(curves, "t", "train")
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == ["loss", "lr", "clean_acc (on train)", "val_robust_acc",
                                                "examples_per_s"]
    assert [len(ax.lines) for ax in shown] == [4, 3, 3, 1, 3]  # the loss panel has the thin step line too
    thin = [line for line in shown[0].lines if line.get_linewidth() < 1]
    assert len(thin) == 1 and list(thin[0].get_xdata()) == [0.4, 0.8, 1.4]
    colours = {ax.get_title(): {line.get_label(): line.get_color() for line in ax.lines} for ax in shown}
    assert colours["loss"][f"{TRANSFER} / probe"] == colours["lr"][f"{TRANSFER} / probe"]  # one colour a training
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [f"{SOURCE} / train", f"{TRANSFER} / probe",
                                                          f"{TRANSFER} / train"]


def test_plot_curves_writes_a_png_and_panels_follow_the_quantities(tmp_path):
    run = write(tmp_path, records())
    out = plot_curves(run)
    assert out == run / "curves.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000 and not list(run.glob(".curves.png.*"))
    only_loss = "\n".join(json.dumps({"stage": "s", "fit": "train", "kind": "epoch", "epoch": n, "loss": 1 / n})
                          for n in (1, 2))
    other = plot_curves(write(tmp_path / "b", only_loss), tmp_path / "elsewhere" / "c.png")
    assert other == tmp_path / "elsewhere" / "c.png" and other.stat().st_size > 5_000
    fig = curves_figure(curve_series(read_metrics(tmp_path / "b" / "run")))
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["loss"]
    assert set(CURVE_QUANTITIES) == {"loss", "lr", "clean_acc", "val_robust_acc", "examples_per_s"}


def test_many_trainings_put_the_legend_below_in_columns():
    from rtk.services.curves import Curve

    curves = [Curve(f"transfer objective=natural,lambda_d={i},seed={i % 3} / train", "loss", [1, 2], [1.0, 0.5])
              for i in range(30)]
    fig = curves_figure(curves)
    legend = fig.legends[0]
    fig.draw_without_rendering()  # lays the legend out
    columns = {round(text.get_window_extent().x0) for text in legend.get_texts()}
    assert len(legend.get_texts()) == 30 and len(columns) == 3 and fig.get_size_inches()[0] > 8
    styles = {(line.get_color(), line.get_linestyle()) for line in fig.axes[0].lines}
    assert len(styles) == 30  # every training tells apart from the others


@pytest.mark.parametrize("case, expected", [
    ("no-folder", "is not a folder"),
    ("no-file", "has no metrics.jsonl: training writes it"),
    ("empty", "holds no training curves"),
    ("garbage", "holds no training curves (no epoch, step or validation record with a number among loss, lr,"),
    ("no-numbers", "holds no training curves"),
])
def test_nothing_to_draw_is_a_one_line_error(tmp_path, case, expected):
    run = tmp_path / "run"
    if case != "no-folder":
        run.mkdir()
    if case == "empty":
        (run / "metrics.jsonl").write_text("")
    elif case == "garbage":
        (run / "metrics.jsonl").write_bytes(b"{oops\n\xff\xfe\n[]\n")
    elif case == "no-numbers":
        (run / "metrics.jsonl").write_text(json.dumps({"stage": "s", "kind": "epoch", "epoch": 1, "loss": None}))
    with pytest.raises(RtkError) as info:
        plot_curves(run)
    message = str(info.value)
    assert expected in message and "\n" not in message
    assert ("3 unreadable lines skipped" in message) == (case == "garbage")
    assert not (run / "curves.png").exists()
    if case == "no-file":
        with pytest.raises(RtkError, match="does not exist"):
            read_metrics(run)


def test_plots_still_exports_plot_curves_and_read_metrics():
    from rtk.services import curves, plots

    assert plots.plot_curves is curves.plot_curves and plots.read_metrics is curves.read_metrics
    assert not hasattr(plots, "curve_series")  # only the two re-exports, nothing else leaks through
