"""Error bars: binomial confidence intervals of accuracies and the per-point summary over seeds.

An accuracy measured on n test examples is a binomial proportion; its interval is the exact
Clopper-Pearson one (Clopper & Pearson, "The use of confidence or fiducial limits illustrated in
the case of the binomial", Biometrika 1934), computed by scipy. It covers the sampling noise of
the test set (how the number would move on another n examples from the same distribution), not
the seed-to-seed variation of training: that is the standard deviation over seeds.

A run's metrics (rtk.services.results: ``run["metrics"]`` and ``run["certify"]["metrics"]``) are
accuracy-type when they are fractions in [0, 1] of a known number of examples: everything in
``metrics`` (of ``run["n_eval"]`` examples) and the certifier's metrics (of ``run["certify"]["n"]``)
except the radius-type ones (rtk.config.recipe.UNBOUNDED_PAPER_METRICS: acr,
max_certifiable_radius), which get a mean and a std but no interval. Pure functions, no I/O.
"""
from __future__ import annotations

import math
import statistics

from rtk.config.recipe import SEED_KEY, UNBOUNDED_PAPER_METRICS

LEVEL = 0.95  # the confidence level of every interval that rtk reports ("ci95")


def binomial_interval(accuracy: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided ``level`` interval of a proportion ``accuracy``
    measured on ``n`` examples, with k = round(accuracy * n) successes: k=50, n=100 gives
    (0.398, 0.602). A ValueError for n < 1, an accuracy outside [0, 1] or a level outside (0, 1)."""
    from scipy.stats import binomtest

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of examples, got {n!r}")
    if not (isinstance(accuracy, (int, float)) and 0 <= accuracy <= 1):
        raise ValueError(f"accuracy must be a fraction in [0, 1], got {accuracy!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    k = min(n, max(0, round(accuracy * n)))
    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def run_metrics(run: dict) -> dict:
    """A run's accuracies followed by its certification metrics (certified accuracy, ACR...)."""
    certify = run.get("certify") or {}
    return {**run.get("metrics", {}), **(certify.get("metrics", {}) if isinstance(certify, dict) else {})}


def metric_names(runs: list[dict]) -> list[str]:
    """Accuracy columns (robust last: it summarises the columns before it), then certification's."""
    names: list[str] = []
    for run in runs:
        for key in run.get("metrics", {}):
            if key not in names:
                names.append(key)
    if "robust" in names:
        names.remove("robust")
        names.append("robust")
    for run in runs:
        for key in run_metrics(run):
            if key not in names:
                names.append(key)
    return names


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _fraction(value) -> float | None:
    """``value`` as a float when it is a finite number, else None (NaN, null, a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def sample_sizes(run: dict) -> dict[str, int]:
    """{metric: number of examples it was measured on} for the run's accuracy-type metrics (see
    the module docstring); a metric without a known n (no n_eval, a certifier that records no n)
    or of radius type is absent."""
    sizes = {}
    n_eval = _count(run.get("n_eval"))
    for name in run.get("metrics", {}):
        if n_eval is not None:
            sizes[name] = n_eval
    certify = run.get("certify")
    if isinstance(certify, dict) and isinstance(certify.get("metrics"), dict):
        n_certified = _count(certify.get("n"))
        for name in certify["metrics"]:
            sizes.pop(name, None)  # run_metrics lets the certifier's value win a shared name
            if n_certified is not None and name not in UNBOUNDED_PAPER_METRICS:
                sizes[name] = n_certified
    return sizes


def interval_of(value, n: int | None) -> list[float] | None:
    """[lo, hi] of an accuracy ``value`` on ``n`` examples, or None when either is unknown or
    ``value`` is no fraction in [0, 1]."""
    value = _fraction(value)
    if value is None or n is None or not 0 <= value <= 1:
        return None
    return list(binomial_interval(value, n))


def run_intervals(run: dict) -> dict[str, list[float]]:
    """{metric: [lo, hi]}: the 95% interval of each of the run's own accuracy-type metrics."""
    values, sizes = run_metrics(run), sample_sizes(run)
    found = {}
    for name, n in sizes.items():
        interval = interval_of(values.get(name), n)
        if interval is not None:
            found[name] = interval
    return found


def inside(paper, interval: list[float] | None) -> bool | None:
    """Whether the paper's number (a fraction, like every accuracy in results.json) lies in
    ``interval``; None when there is no interval or the paper gives no number ("unknown")."""
    paper = _fraction(paper)
    if interval is None or paper is None:
        return None
    return interval[0] <= paper <= interval[1]


def group_runs(runs: list[dict]) -> list[list[dict]]:
    """Runs grouped by their "point" (the seeds of one sweep point), in first-appearance order; a
    run without "point" (a recipe without [run] seeds) is a group of its own."""
    groups: dict[tuple, list[dict]] = {}
    for index, run in enumerate(runs):
        key = ("point", run["point"]) if "point" in run else ("run", index)
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def mean_std(values: list) -> tuple[float | None, float | None]:
    """(mean, sample std with ddof=1) of the finite numbers among ``values``; the std is None
    with fewer than two of them, the mean None with none."""
    present = [v for v in (_fraction(v) for v in values) if v is not None]
    mean = statistics.fmean(present) if present else None
    return mean, statistics.stdev(present) if len(present) > 1 else None


def metric_summary(name: str, group: list[dict]) -> dict:
    """{"mean", "std", "values", "n", "ci95"} of metric ``name`` over the runs of one point.

    ``values`` has one entry per run (null where a run lacks the metric or it is NaN); mean and
    std are over the present values. ``std`` is the sample standard deviation (ddof=1), null with
    fewer than two values: one seed says nothing about the spread, and 0 would claim it is none.
    ``n`` is the smallest number of examples any run measured the metric on (null for a
    radius-type metric or an unknown n); ``ci95`` the 95% Clopper-Pearson interval of the mean
    accuracy on n examples (null where n is)."""
    values = [_fraction(run_metrics(run).get(name)) for run in group]
    mean, std = mean_std(values)
    sizes = [sample_sizes(run).get(name) for run, value in zip(group, values) if value is not None]
    n = min(sizes) if sizes and None not in sizes else None
    return {"mean": mean, "std": std, "values": values, "n": n, "ci95": interval_of(mean, n)}


def point_summary(group: list[dict]) -> dict:
    """One point's entry of summarize()."""
    first = group[0]
    metrics = {name: metric_summary(name, group) for name in metric_names(group)}
    paper = dict(first.get("paper") or {})
    n_evals = [n for n in (_count(run.get("n_eval")) for run in group) if n is not None]
    inside_paper = {}
    for name, entry in metrics.items():
        found = inside(paper.get(name), entry["ci95"])
        if found is not None:
            inside_paper[name] = found
    return {"point": first.get("point", first.get("id")),
            "params": {k: v for k, v in (first.get("params") or {}).items() if k != SEED_KEY},
            "seeds": [run["seed"] for run in group if "seed" in run],
            "ids": [run.get("id") for run in group],
            "n_eval": min(n_evals) if n_evals else None,
            "metrics": metrics, "paper": paper, "paper_inside": inside_paper}


def summarize(runs: list[dict]) -> list[dict]:
    """One entry per sweep point, in first-appearance order: {"point" (the id without the seed),
    "params" (without run.seed), "seeds" (empty for runs without seeds), "ids" (the runs'),
    "n_eval" (the smallest of the runs'), "metrics": {name: metric_summary()}, "paper" (the
    published numbers), "paper_inside": {metric: whether the paper's number lies in ci95}}."""
    return [point_summary(group) for group in group_runs(runs)]


def seeded(runs: list[dict]) -> bool:
    """Whether the runs come from a recipe with [run] seeds (each run has its "seed")."""
    return any("seed" in run for run in runs)
