"""The results ``rtk.evaluate`` and ``rtk.certify`` return: EvaluationResult and CertificationResult,
their 95% intervals and their renderings (rich Table, plain text, notebook HTML, JSON-ready dict).

Importing this module loads neither torch nor rich: each method imports what it needs when called.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["CertificationResult", "EvaluationResult", "metric_intervals"]


def metric_intervals(metrics: dict, n: int) -> dict[str, tuple[float, float]]:
    """The 95% Clopper-Pearson interval of each accuracy-type metric measured on ``n`` examples
    (rtk.services.stats, as results.json's intervals); radius-type metrics (acr) get none."""
    from rtk.config.recipe import UNBOUNDED_PAPER_METRICS
    from rtk.services.stats import interval_of

    found = {}
    for name, value in metrics.items():
        interval = interval_of(value, n if n > 0 else None) if name not in UNBOUNDED_PAPER_METRICS else None
        if interval is not None:
            found[name] = (interval[0], interval[1])
    return found


def _interval_text(intervals: dict, name: str) -> str:
    low, high = intervals.get(name, (None, None))
    return "-" if low is None else f"[{low:.4f}, {high:.4f}]"


def _render(table: Table, flags: list[dict]) -> str:
    """The table as plain text, each flag on a line of its own below it (not in a narrow caption)."""
    import io

    from rich.console import Console

    table.caption = None
    out = io.StringIO()
    Console(file=out, width=100, force_terminal=False, color_system=None).print(table)
    lines = [f"flag {_flag_name(f)}: {f.get('message', '')}" for f in flags]
    return "\n".join([out.getvalue().rstrip(), *lines])


@dataclass
class EvaluationResult:
    """What ``evaluate`` returns.

    ``metrics``: accuracy by name: ``clean``, one per attack label, and ``robust`` (correct under
    every attack, the per-example worst case), as results.json's "metrics". ``n``: examples
    evaluated. ``flags``: the sanity checks' and the attacks' own flags (dicts with name, message,
    explanation, source). ``intervals``: the 95% Clopper-Pearson interval of each metric.
    ``per_class`` (with ``per_class=True``): each metric's accuracy per class, named by
    ``class_names``. ``correct`` and ``indices``: per-example correctness (bool tensors by metric)
    and the evaluated examples' positions in the data. ``result["robust"]`` reads a metric;
    ``table()`` gives a rich Table; ``to_dict()`` a JSON-ready dict.

    Example::

        >>> result = rtk.evaluate(model, "digits", attacks=["pgd"], eps=0.1, n=200)
        >>> result["robust"], result.intervals["robust"], [flag["name"] for flag in result.flags]
        (0.41, (0.341, 0.481), [])
    """

    metrics: dict[str, float]
    n: int
    flags: list[dict] = field(default_factory=list)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    attacks: list[str] = field(default_factory=list)
    attack_order: str = "independent"
    per_class: dict[str, list[float]] | None = None
    class_names: list[str] | None = None
    correct: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    indices: Any = field(default=None, repr=False, compare=False)

    def __getitem__(self, metric: str) -> float:
        return self.metrics[metric]

    def to_dict(self) -> dict:
        """The result as plain JSON types (no tensors): metrics, n, intervals, flags, attacks,
        attack_order, and per_class with class_names when evaluated."""
        found = {"metrics": dict(self.metrics), "n": self.n,
                 "intervals": {k: list(v) for k, v in self.intervals.items()}, "flags": [dict(f) for f in self.flags],
                 "attacks": list(self.attacks), "attack_order": self.attack_order}
        if self.per_class is not None:
            found.update(per_class=self.per_class, class_names=self.class_names)
        return found

    def table(self) -> Table:
        """A rich Table: each metric's accuracy and 95% interval; the flags in its caption."""
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=f"rtk.evaluate: {self.n} examples ({self.attack_order} attacks)")
        for column in ("metric", "accuracy", "95% interval"):
            table.add_column(column, justify="left" if column == "metric" else "right")
        for name, value in self.metrics.items():
            table.add_row(escape(name), f"{value:.4f}", _interval_text(self.intervals, name))
        if self.flags:
            table.caption = escape("flags: " + ", ".join(_flag_name(f) for f in self.flags))
        return table

    def __str__(self) -> str:
        return _render(self.table(), self.flags)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:.4f}" for k, v in self.metrics.items())
        return f"EvaluationResult(n={self.n}, {shown}, flags={[_flag_name(f) for f in self.flags]})"

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td><td>{_interval_text(self.intervals, k)}</td></tr>"
                       for k, v in self.metrics.items())
        flags = "".join(f"<li><b>{html.escape(_flag_name(f))}</b>: {html.escape(str(f.get('message', '')))}</li>"
                        for f in self.flags)
        return (f"<table><caption>rtk.evaluate: {self.n} examples</caption><tr><th>metric</th><th>accuracy</th>"
                f"<th>95% interval</th></tr>{rows}</table>" + (f"<ul>{flags}</ul>" if flags else ""))


def _flag_name(flag: dict) -> str:
    return f"{flag.get('attack')}: {flag.get('name')}" if flag.get("attack") else str(flag.get("name"))


@dataclass
class CertificationResult:
    """What ``certify`` returns.

    ``metrics``: the certifier's metrics (cohen: ``certified_accuracy@R``, ``acr``,
    ``abstain_rate``, ``clean_smoothed_accuracy``), as results.json's "certify" "metrics".
    ``n``: examples certified. ``certifier``: its name. ``summary``: the certifier's whole result
    (cohen: sigma, n0, n_samples, alpha, curve, max_certifiable_radius, warnings). ``flags``: its
    warnings as flags, as a run reports them. ``rows``: one dict per certified example (index in
    the data, label, prediction, radius, correct, ...) from a per-example certifier, else None.
    ``intervals``: the 95% Clopper-Pearson interval of each accuracy-type metric (not of acr).
    ``table()`` gives a rich Table; ``to_dict()`` a JSON-ready dict.

    Example::

        >>> result = rtk.certify(model, "digits", sigma=0.25, n=1000, n_examples=100)
        >>> result.metrics["certified_accuracy@0.5"], result.metrics["acr"], result.summary["sigma"]
        (0.52, 0.61, 0.25)
    """

    metrics: dict[str, float]
    n: int
    certifier: str
    summary: dict = field(default_factory=dict, repr=False)
    flags: list[dict] = field(default_factory=list)
    rows: list[dict] | None = field(default=None, repr=False)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)

    def __getitem__(self, metric: str) -> float:
        return self.metrics[metric]

    def to_dict(self) -> dict:
        """The result as plain JSON types: metrics, n, certifier, intervals, summary, flags and rows."""
        return {"metrics": dict(self.metrics), "n": self.n, "certifier": self.certifier,
                "intervals": {k: list(v) for k, v in self.intervals.items()}, "summary": self.summary,
                "flags": [dict(f) for f in self.flags], "rows": self.rows}

    def table(self) -> Table:
        """A rich Table of the metrics; the flags in its caption."""
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=f"rtk.certify ({self.certifier}): {self.n} examples")
        for column in ("metric", "value", "95% interval"):
            table.add_column(column, justify="left" if column == "metric" else "right")
        for name, value in self.metrics.items():
            shown = f"{value:.4f}" if isinstance(value, float) else escape(str(value))
            table.add_row(escape(name), shown, _interval_text(self.intervals, name))
        if self.flags:
            table.caption = escape("flags: " + "; ".join(str(f.get("message", f.get("name"))) for f in self.flags))
        return table

    def __str__(self) -> str:
        return _render(self.table(), self.flags)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(f'{v:.4f}' if isinstance(v, float) else str(v))}"
                       "</td></tr>" for k, v in self.metrics.items())
        return (f"<table><caption>rtk.certify ({html.escape(self.certifier)}): {self.n} examples</caption>"
                f"<tr><th>metric</th><th>value</th></tr>{rows}</table>")
