"""Randomized-smoothing PREDICT and CERTIFY (Cohen et al., "Certified Adversarial Robustness via
Randomized Smoothing", arXiv:1902.02918; locuslab/smoothing code/core.py), as an rtk certifier.

Sampling draws one preallocated noise buffer per example batch after batch (no allocation per
batch), counts the base classifier's votes with bincount on the device and copies the counts to
the host once per example. The noise of example ``i`` comes from its own generator, seeded from
(seed, i), so that a row does not depend on which examples were certified before it.

Finished rows go to the run's resume state ``ctx.state("certify")`` (rtk.services.state: one
flushed line per example, after a fingerprint of the config, the weights and the data), so a
resumed run does not certify finished examples again; the state is removed once the run's
summary is written. It is one state per run point: processes that certify shards of one run
concurrently need their own ``ctx.out_dir`` (or none) and hand their rows to one ``summarize``.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from rtk_plugins.smoothing import report as certify_report
from rtk.models import model_mode
from rtk.evaluation.certifier import Certifier
from rtk.evaluation.robust_accuracy import batch_seed
from rtk.services.state import model_digest, tensor_digest

ABSTAIN = -1


def lower_confidence_bound(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on pA from nA successes in n draws:
    statsmodels' proportion_confint(nA, n, alpha=2*alpha, method="beta")[0], which core.py uses."""
    from scipy.special import betaincinv  # beta.ppf's kernel, without scipy.stats' ~0.5 ms of argument checks

    return 0.0 if n_a == 0 else float(betaincinv(n_a, n - n_a + 1, alpha))


def certify_from_counts(selected: int, n_a: int, n: int, alpha: float, sigma: float) -> tuple[int, float, float]:
    """(prediction, radius, pA_lower) of CERTIFY once the class ``selected`` (argmax of the n0
    selection counts) got ``n_a`` of the n estimation draws."""
    from scipy.special import ndtri  # = scipy.stats.norm.ppf

    p_lower = lower_confidence_bound(n_a, n, alpha)
    if p_lower < 0.5:
        return ABSTAIN, 0.0, p_lower
    return selected, float(sigma * ndtri(p_lower)), p_lower


def predict_from_counts(counts, alpha: float) -> tuple[int, float]:
    """(prediction, p-value) of PREDICT: the top class unless the two-sided binomial test of
    its count against the runner-up's cannot reject p = 0.5 at level alpha (then ABSTAIN).
    scipy.stats.binom_test, which core.py calls, was removed in SciPy 1.12: binomtest replaces it."""
    from scipy.stats import binomtest

    counts = [int(c) for c in counts]
    order = sorted(range(len(counts)), key=lambda c: -counts[c])  # stable: ties go to the lower class
    n_a = counts[order[0]]
    n_b = counts[order[1]] if len(order) > 1 else 0
    p_value = float(binomtest(n_a, n_a + n_b, 0.5).pvalue)
    return (ABSTAIN if p_value > alpha else order[0]), p_value


def sample_counts(model, x: torch.Tensor, num: int, sigma: float, buffer: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
    """Votes of ``model`` over ``num`` copies of ``x`` (shape (1, C, H, W)) plus N(0, sigma^2 I)
    noise, in batches of at most ``len(buffer)``; the counts stay on the device."""
    counts = None
    remaining = num
    while remaining > 0:
        size = min(len(buffer), remaining)
        remaining -= size
        noisy = buffer[:size].normal_(0.0, sigma, generator=generator).add_(x)
        logits = model(noisy)
        if counts is None:
            counts = torch.zeros(logits.shape[1], dtype=torch.long, device=logits.device)
        counts += torch.bincount(logits.argmax(1), minlength=logits.shape[1])
    return counts


class CohenCertifier(Certifier):
    def __init__(self, config):
        self.config = config

    def positions(self, total: int, indices=None) -> list[int]:
        """Every skip-th position, at most max_examples of them, restricted to ``indices``."""
        chosen = list(range(0, total, self.config.skip))[:self.config.max_examples]
        if indices is None:
            return chosen
        wanted = {int(i) for i in indices}
        return [p for p in chosen if p in wanted]

    def seed(self, ctx) -> int:
        return ctx.seed if self.config.seed is None else self.config.seed

    def certify_one(self, model, x: torch.Tensor, buffer: torch.Tensor, generator: torch.Generator) -> dict:
        cfg = self.config
        if cfg.mode == "predict":
            counts = sample_counts(model, x, cfg.n, cfg.sigma, buffer, generator).cpu()
            prediction, p_value = predict_from_counts(counts.tolist(), cfg.alpha)
            return {"prediction": prediction, "radius": 0.0, "pA_lower": float("nan"), "nA": int(counts.max()),
                    "p_value": p_value}
        selection = sample_counts(model, x, cfg.n0, cfg.sigma, buffer, generator)
        estimation = sample_counts(model, x, cfg.n, cfg.sigma, buffer, generator)
        both = torch.stack([selection, estimation]).cpu()  # the one copy to the host
        selected = int(both[0].argmax())  # first maximum on ties, as numpy's argmax in core.py
        n_a = int(both[1, selected])
        prediction, radius, p_lower = certify_from_counts(selected, n_a, cfg.n, cfg.alpha, cfg.sigma)
        return {"prediction": prediction, "radius": radius, "pA_lower": p_lower, "nA": n_a}

    def certify_examples(self, model, data, ctx, indices=None) -> list[dict]:
        cfg = self.config
        positions = self.positions(len(data), indices)
        seed = self.seed(ctx)
        for warning in self.warnings():
            ctx.console.print(f"[yellow]warning[/yellow] cohen: {warning}", highlight=False)
        state = ctx.state("certify", "certification")
        log = state.rows(self.fingerprint(model, data, seed)) if state is not None else None
        done = {row["index"]: row for row in log.done} if log is not None else {}
        rows, noise = [], {}
        samples = f", n={cfg.n}" if cfg.mode == "certify" else ""
        what = f"{cfg.mode} (sigma={cfg.sigma:g}{samples})"  # "certify (sigma=0.25, n=100000)", "predict (sigma=0.25)"
        try:
            with model_mode(model, train=False), torch.inference_mode(), ctx.progress(what, len(positions)) as advance:
                for position in positions:
                    if position in done:
                        row = done[position]
                    else:
                        row = self.certify_row(model, data, position, seed, ctx, noise)
                        if log is not None:
                            log.append(row)
                    rows.append(row)
                    advance()
        finally:
            if log is not None:
                log.close()
        return rows

    def certify_row(self, model, data, position: int, seed: int, ctx, noise: dict) -> dict:
        """The row of example ``position``; ``noise`` keeps the noise buffer and generator between examples."""
        started = time.perf_counter()
        image, label = data.take(torch.tensor([position]))
        x = image.to(ctx.device)
        buffer = noise.get("buffer")
        if buffer is None or buffer.shape[1:] != x.shape[1:] or buffer.dtype != x.dtype:
            size = min(self.config.batch_size, max(self.config.n, self.config.n0))
            noise["buffer"] = torch.empty((size, *x.shape[1:]), dtype=x.dtype, device=x.device)
            noise["generator"] = torch.Generator(device=x.device)
        noise["generator"].manual_seed(batch_seed(seed, position, "cohen"))
        row = {"index": position, "label": int(label[0])}
        row.update(self.certify_one(model, x, noise["buffer"], noise["generator"]))
        row["correct"] = row["prediction"] == row["label"]
        row["seconds"] = time.perf_counter() - started
        return row

    def fingerprint(self, model, data, seed: int) -> dict:
        """What a saved row state must match: the config, the seed, the weights and the data."""
        return {"config": dataclasses.asdict(self.config), "seed": seed, "model": model_digest(model),
                "examples": len(data), "labels": tensor_digest(data.labels.long())}

    def warnings(self) -> list[str]:
        """A warning when n caps every radius below 0.5, the radius of the headline metric."""
        import math
        from statistics import NormalDist

        from rtk_plugins.smoothing.bounds import max_certifiable_radius

        cfg = self.config
        if cfg.mode != "certify" or cfg.sigma == 0:
            return []
        cap = max_certifiable_radius(cfg.sigma, cfg.n, cfg.alpha)
        if cap >= 0.5:
            return []
        needed = NormalDist().cdf(0.5 / cfg.sigma)
        hint = f"; n >= {math.ceil(math.log(cfg.alpha) / math.log(needed))} reaches 0.5" if needed < 1 else ""
        return [f"n={cfg.n} at alpha={cfg.alpha:g} caps every certified radius at {cap:.3f}"
                f" (sigma * Phi^-1(alpha^(1/n))); certified_accuracy@0.5 is 0 by construction{hint}"]

    def summarize(self, rows: list[dict], ctx) -> dict:
        cfg = self.config
        rows = sorted(rows, key=lambda r: r["index"])
        result = {"n": len(rows), "sigma": cfg.sigma, "mode": cfg.mode, "n0": cfg.n0, "n_samples": cfg.n,
                  "alpha": cfg.alpha}
        out = Path(ctx.out_dir) if ctx.out_dir is not None else None
        tsv = f"certify-{ctx.run_index}.tsv"
        if out is not None:
            certify_report.write_tsv(out / tsv, rows)
            ctx.state("certify").remove()  # the TSV now holds every row
        result["tsv"] = tsv if out is not None else None
        if cfg.mode == "predict":
            result["metrics"] = {"clean_smoothed_accuracy": certify_report.certified_accuracy(rows, 0.0),
                                 "abstain_rate": certify_report.abstain_rate(rows)}
            return result
        from rtk_plugins.smoothing.bounds import max_certifiable_radius

        plot = out / f"certify-{ctx.run_index}.png" if out is not None and rows else None
        title = f"smoothing sigma={cfg.sigma:g}, n={cfg.n}, alpha={cfg.alpha:g}, {len(rows)} examples"
        cap = max_certifiable_radius(cfg.sigma, cfg.n, cfg.alpha)
        result["curve"] = certify_report.certified_curve(rows, cfg.radii, plot=plot, title=title, cap=cap)
        result["plot"] = plot.name if plot is not None else None
        result["metrics"] = certify_report.metrics(rows)
        result["max_certifiable_radius"] = cap
        result["warnings"] = self.warnings()
        return result
