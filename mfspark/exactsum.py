"""Exact, order-independent sums of float64 arrays: the same result however the terms are split
into blocks and in whatever order the partial sums are added.

A distributed sum is normally added block by block, so its last bits depend on the blocking.
Where a sum feeds a random draw (the Gibbs sampler's hyper-parameters and noise precision),
those bits would make the chain depend on the number of blocks. :class:`ExactSum` instead keeps
the sum *exactly*, split into bins: bin b holds a multiple of 2^(24·b). Each term is cut at the
bin boundaries (``trunc`` by a power of two: exact), so a bin receives pieces of at most 24
significant bits; up to 2^28 such pieces add exactly in float64 whatever the order, and after
every addition a bin's excess is carried (exactly) into the next. Partial sums merge by adding
bins, still exactly. :meth:`ExactSum.value` rounds the exact total once (``math.fsum`` over the
bins): a function of the multiset of terms alone.

Cost: one pass per bin the terms span (a few for factor-sized values), vectorised over the
terms; no Python loop over terms.
"""

from __future__ import annotations

import math

import numpy as np

#: Bits per bin. A bin sums pieces of < 2^BITS units exactly while it holds < 2^(52 − BITS)
#: of them (one bit of headroom for a carry); carries keep every bin below 2^BITS units
#: between additions.
BITS = 24
MAX_TERMS = 1 << (52 - BITS)


class ExactSum:
    """The exact sum of float64 terms over axis 0, kept as bins (module docstring)."""

    __slots__ = ("bins", "shape")

    def __init__(self, shape: tuple[int, ...] = ()):
        self.shape = tuple(shape)
        self.bins: dict[int, np.ndarray] = {}

    @classmethod
    def of(cls, terms) -> ExactSum:
        """The exact sum of ``terms`` along their first axis (a scalar sum for a 1-d array)."""
        x = np.asarray(terms, dtype=np.float64)
        out = cls(x.shape[1:])
        if not x.size:
            return out
        if not np.isfinite(x).all():
            raise ValueError("an exact sum of non-finite values")
        for start in range(0, x.shape[0], MAX_TERMS):
            out._add_terms(x[start : start + MAX_TERMS])
        return out

    def _add_terms(self, x: np.ndarray) -> None:
        rest = np.array(x, dtype=np.float64, order="C").reshape(len(x), -1)
        top = float(np.abs(rest).max())
        if top == 0.0:
            return
        b = _bin_of(top)
        piece = np.empty_like(rest)
        while True:  # down to the last nonzero bit of any term
            self._add_bin(b, _take_bin(rest, piece, b).sum(axis=0).reshape(self.shape))
            if not np.count_nonzero(rest):
                break
            b -= 1
        self._carry()

    def _add_bin(self, b: int, value) -> None:
        value = np.asarray(value, dtype=np.float64)
        if b in self.bins:
            self.bins[b] = self.bins[b] + value
        else:
            self.bins[b] = np.array(value, dtype=np.float64)

    def _carry(self) -> None:
        """Move every bin's part at or above 2^(24·(b+1)) into bin b + 1 (exact), lowest bin
        first, so every bin ends below 2^24 of its units."""
        if not self.bins:
            return
        b = min(self.bins)
        while b <= max(self.bins):
            if b in self.bins:
                unit = math.ldexp(1.0, BITS * (b + 1))
                high = np.trunc(self.bins[b] / unit) * unit
                if high.any():
                    self.bins[b] = self.bins[b] - high
                    self._add_bin(b + 1, high)
            b += 1
        self.bins = {b: v for b, v in self.bins.items() if v.any()}

    def __add__(self, other: ExactSum) -> ExactSum:
        out = ExactSum(self.shape)
        for b, v in self.bins.items():
            out._add_bin(b, v)
        for b, v in other.bins.items():
            out._add_bin(b, v)
        out._carry()
        return out

    def value(self) -> np.ndarray | float:
        """The exact total, rounded once to float64 (a float for a scalar sum)."""
        if not self.bins:
            total = np.zeros(self.shape)
        else:
            stacked = np.stack([self.bins[b] for b in sorted(self.bins)]).reshape(len(self.bins), -1)
            total = np.array([math.fsum(col) for col in stacked.T]).reshape(self.shape)
        return float(total) if not self.shape else total


def _take_bin(rest: np.ndarray, piece: np.ndarray, b: int) -> np.ndarray:
    """Move the part of ``rest`` at or above 2^(24·b) into ``piece`` (in place, exactly:
    scaling by powers of two and truncation) and return ``piece``."""
    np.multiply(rest, math.ldexp(1.0, -BITS * b), out=piece)
    np.trunc(piece, out=piece)
    np.multiply(piece, math.ldexp(1.0, BITS * b), out=piece)
    np.subtract(rest, piece, out=rest)
    return piece


def _bin_of(magnitude: float) -> int:
    """The bin holding the leading bit of a positive ``magnitude``."""
    return (math.frexp(magnitude)[1] - 1) // BITS


def exact_total(parts):
    """The sum of several :class:`ExactSum` (or of anything else that adds exactly, such as
    statistics made of them); None when there are none."""
    total = None
    for part in parts:
        total = part if total is None else total + part
    return total
