"""Exact sums: equal to the rational sum of the terms, rounded once, whatever the split into
partial sums and the order they are added in."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from mfspark.exactsum import MAX_TERMS, ExactSum


def rational_sum(column) -> float:
    return float(sum(Fraction(float(v)) for v in column))


def test_exact_sum_is_the_rounded_rational_sum_for_any_split_and_order():
    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(1, 200))
        x = rng.normal(0, 1, (n, 3)) * np.exp(rng.normal(0, 20, (n, 3)))  # magnitudes 1e-26..1e26
        x[rng.random((n, 3)) < 0.1] = 0.0
        want = [rational_sum(x[:, j]) for j in range(3)]
        assert list(ExactSum.of(x).value()) == want
        cuts = np.sort(rng.choice(n + 1, 4))
        parts = [ExactSum.of(p) for p in np.split(x[rng.permutation(n)], cuts)]
        total = parts[-1]
        for p in parts[-2::-1]:
            total = total + p
        assert list(total.value()) == want


def test_cancellation_and_scalars():
    # summed left to right in float64 these give 0.0 and 1.0
    assert ExactSum.of(np.array([1e20, 1.0, -1e20])).value() == 1.0
    assert ExactSum.of(np.array([1.0, 2.0**-53, 2.0**-53])).value() == 1.0 + 2.0**-52
    assert ExactSum().value() == 0.0 and ExactSum.of(np.zeros(0)).value() == 0.0
    with pytest.raises(ValueError, match="non-finite"):
        ExactSum.of(np.array([1.0, np.nan]))


def test_many_terms_carry_between_bins():
    """Bins carry into the next one, so sums past 2^24 units per bin stay exact."""
    x = np.full(3 * 2**20 + 7, 2.0**23 + 1.0)  # every term fills a whole bin
    assert ExactSum.of(x).value() == float(len(x)) * (2.0**23 + 1.0)
    assert MAX_TERMS == 2**28
