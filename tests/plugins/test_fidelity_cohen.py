"""Cohen's certifier against locuslab/smoothing code/certify.py and code/core.py (issue 17, item 14):
max_examples is a count where certify.py's --max is an index bound, and PREDICT's order of tied
classes cannot change its answer."""
from __future__ import annotations

import numpy as np
import pytest

from rtk_plugins.smoothing import CohenConfig
from rtk_plugins.smoothing.cohen import ABSTAIN, CohenCertifier, predict_from_counts


def certify_py_indices(total: int, skip: int, max_index: int) -> list[int]:
    """The test indices certify.py's loop certifies (lines 41-47)."""
    chosen = []
    for i in range(total):
        if i % skip != 0:
            continue
        if i == max_index:
            break
        chosen.append(i)
    return chosen


@pytest.mark.parametrize("skip, max_index", [(1, 7), (20, 500), (3, 30), (5, 5), (1, -1), (4, -1)])
def test_max_examples_is_certify_py_max_divided_by_skip(skip, max_index):
    total = 1000
    count = None if max_index < 0 else max_index // skip
    ours = CohenCertifier(CohenConfig(skip=skip, max_examples=count)).positions(total)
    assert ours == certify_py_indices(total, skip, max_index)


def test_certify_py_max_not_a_multiple_of_skip_bounds_nothing():
    # the quirk the docstring names: its index test is never reached, so every skip-th image is certified
    assert certify_py_indices(100, 3, 10) == list(range(0, 100, 3))


def core_py_predict(counts, alpha: float) -> int:
    """Smooth.predict of core.py from its counts (binom_test, removed from SciPy, as binomtest)."""
    from scipy.stats import binomtest

    counts = np.asarray(counts)
    top2 = counts.argsort()[::-1][:2]
    count1, count2 = int(counts[top2[0]]), int(counts[top2[1]])
    return ABSTAIN if binomtest(count1, count1 + count2, 0.5).pvalue > alpha else int(top2[0])


def test_predict_matches_core_py_including_ties():
    rng = np.random.default_rng(0)
    cases = [[5, 7, 7, 1], [7, 7, 0], [0, 40, 40, 3, 40], [30, 0, 2, 2, 2], [50, 50]]
    cases += [list(rng.integers(0, 6, size=k)) for k in (2, 3, 10, 100) for _ in range(25)]
    cases += [[int(c) for c in rng.multinomial(200, [0.7] + [0.3 / 9] * 9)] for _ in range(25)]
    for counts in cases:
        if sum(counts) == 0:
            continue
        for alpha in (0.001, 0.05, 0.5, 0.999):
            assert predict_from_counts(counts, alpha)[0] == core_py_predict(counts, alpha), (counts, alpha)


def test_a_tie_at_the_top_abstains_whatever_the_order():
    for counts in ([3, 9, 9], [9, 9, 3], [0, 0, 4, 4]):
        prediction, p_value = predict_from_counts(counts, 0.999)
        assert prediction == ABSTAIN and p_value == pytest.approx(1.0)
