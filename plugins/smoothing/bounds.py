"""Sample-size bounds of Cohen et al.'s PREDICT and CERTIFY (arXiv:1902.02918): what a given n and
alpha can answer or certify at all. Pure arithmetic (math, statistics), so that the configs in
rtk_plugins.smoothing can refuse a hopeless n while ``rtk validate`` stays torch- and scipy-free.
"""
from __future__ import annotations

import math
from statistics import NormalDist


def min_certify_n(alpha: float) -> int:
    """The smallest n at which CERTIFY can certify anything at level alpha: even when all n
    draws agree, the one-sided Clopper-Pearson bound is alpha^(1/n), which must reach 0.5."""
    n = max(1, math.ceil(math.log(alpha) / math.log(0.5)))
    while alpha ** (1 / n) < 0.5:  # guard the float rounding of the logarithms
        n += 1
    while n > 1 and alpha ** (1 / (n - 1)) >= 0.5:
        n -= 1
    return n


def min_predict_n(alpha: float) -> int:
    """The smallest n at which PREDICT can answer at all: with nA = n and nB = 0 the two-sided
    binomial p-value is 2 * 0.5^n, which must not exceed alpha (locuslab/smoothing issue #8)."""
    n = max(1, math.ceil(math.log2(2 / alpha)))
    while min(1.0, 2 * 0.5 ** n) > alpha:
        n += 1
    while n > 1 and min(1.0, 2 * 0.5 ** (n - 1)) <= alpha:
        n -= 1
    return n


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can ever return with these settings: sigma * Phi^-1(alpha^(1/n))."""
    bound = alpha ** (1 / n)
    return sigma * NormalDist().inv_cdf(bound) if 0.5 <= bound < 1 else 0.0
