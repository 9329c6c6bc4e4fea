"""Metrics of randomized-smoothing certification from per-example rows, torch-free.

A row is one certified example: ``index``, ``label``, ``prediction`` (-1 = abstain),
``radius`` (raw float, never rounded), ``correct`` (prediction == label), ``seconds``,
``pA_lower`` and ``nA`` (the estimation draws that voted for the selected class). The
definitions follow the analysis code of Cohen et al. ("Certified Adversarial Robustness via
Randomized Smoothing", arXiv:1902.02918, analyze.py) and Jeong & Shin ("Consistency
Regularization for Certified Robustness of Smoothed Classifiers", arXiv:2006.04062,
analyze.py ``acr()``):

- certified accuracy at r = mean over ALL certified examples of [correct and radius >= r]
  (an abstention has prediction -1, so it is never correct);
- ACR = mean over ALL certified examples of correct * radius (abstentions and wrong
  predictions count as radius 0; dividing by the correct ones only would inflate it);
- clean smoothed accuracy = certified accuracy at radius 0.

Cohen's certify.py prints radii with ``{:.3}``, so an ACR recomputed from its files is slightly
rounded; the TSV written here keeps ``repr(float)``.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

COLUMNS = ("index", "label", "prediction", "radius", "correct", "seconds", "pA_lower", "nA")
# Column names of Cohen's and Jeong's certify.py output, read as ours.
ALIASES = {"idx": "index", "predict": "prediction", "time": "seconds"}
INTS = ("index", "label", "prediction", "nA")
FLOATS = ("radius", "seconds", "pA_lower")


def certified_accuracy(rows: list[dict], radius: float) -> float:
    """Fraction of all rows that are correct with a certified radius of at least ``radius``."""
    if not rows:
        return float("nan")
    return sum(1 for r in rows if r["correct"] and r["radius"] >= radius) / len(rows)


def acr(rows: list[dict]) -> float:
    """Average certified radius: mean of correct * radius over all rows."""
    if not rows:
        return float("nan")
    return sum(r["radius"] for r in rows if r["correct"]) / len(rows)


def abstain_rate(rows: list[dict]) -> float:
    if not rows:
        return float("nan")
    return sum(1 for r in rows if r["prediction"] == -1) / len(rows)


def certified_curve(rows: list[dict], radii, plot: Path | str | None = None, title: str = "",
                    cap: float | None = None) -> list[list[float]]:
    """[[r, certified accuracy at r], ...] for each r of ``radii`` (sorted); with ``plot``, also
    draws the curve into that PNG file (atomically), with ``cap`` (the largest radius the
    sample size can certify) marked."""
    curve = [[float(r), certified_accuracy(rows, r)] for r in sorted(radii)]
    if plot is not None:
        plot_curve(curve, Path(plot), title, cap, rows)
    return curve


def plot_curve(curve: list[list[float]], path: Path, title: str = "", cap: float | None = None,
               rows: list[dict] | None = None) -> None:
    """The curve's points, over the exact certified accuracy of ``rows`` on a 0.001 grid (as
    Cohen's analyze.py plots it)."""
    # The object-oriented API renders with Agg without touching pyplot's global backend.
    from matplotlib.figure import Figure

    from rtk.services.state import atomic_write

    figure = Figure(figsize=(5, 3.5), layout="tight")
    axes = figure.add_subplot()
    if rows:
        fine = [i / 1000 for i in range(int(curve[-1][0] * 1000) + 1)]
        axes.plot(fine, [certified_accuracy(rows, r) for r in fine], linewidth=1.5)
    axes.plot([r for r, _ in curve], [a for _, a in curve], "o", markersize=4, color="C0")
    axes.set_xlabel("radius (L2, [0, 1] pixel units)")
    axes.set_ylabel("certified accuracy")
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    if cap is not None and cap < curve[-1][0]:
        axes.axvline(cap, color="gray", linestyle="--", linewidth=1, label=f"largest certifiable radius {cap:.3g}")
        axes.legend(fontsize=8)
    if title:
        axes.set_title(title, fontsize=9)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))


def metrics(rows: list[dict], radii=(0.5,)) -> dict:
    """The summary metrics: certified accuracy at each radius of ``radii`` and at 0.5, ACR,
    abstention rate and clean smoothed accuracy (certified accuracy at radius 0)."""
    found = {f"certified_accuracy@{r:g}": certified_accuracy(rows, r) for r in sorted({*radii, 0.5})}
    found.update(acr=acr(rows), abstain_rate=abstain_rate(rows), clean_smoothed_accuracy=certified_accuracy(rows, 0.0))
    return found


def format_tsv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in sorted(rows, key=lambda r: r["index"]):
        writer.writerow([_cell(row, key) for key in COLUMNS])
    return out.getvalue()


def _cell(row: dict, key: str):
    if key not in row:
        return "nan" if key in FLOATS else ""
    if key == "correct":
        return int(bool(row[key]))
    return repr(float(row[key])) if key in FLOATS else int(row[key])


def write_tsv(path: Path | str, rows: list[dict]) -> None:
    """The rows, sorted by index, as a tab-separated file (atomic; floats at full precision)."""
    from rtk.services.state import atomic_write_text

    atomic_write_text(Path(path), format_tsv(rows))


def _number(text: str, kind):
    try:
        return kind(text)
    except ValueError:
        return math.nan if kind is float else text


def read_tsv(path: Path | str) -> list[dict]:
    """Rows of a certification TSV: ours, or Cohen's certify.py output (idx/predict/time)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for raw in csv.DictReader(handle, delimiter="\t"):
            row = {ALIASES.get(key.strip(), key.strip()): value.strip() for key, value in raw.items() if key}
            for key in INTS:
                if key in row:
                    row[key] = int(row[key]) if row[key] else None
            for key in FLOATS:
                if key in row:
                    row[key] = _number(row[key], float)
            row["correct"] = row["correct"] in ("1", "True", "true")
            rows.append(row)
    return rows
