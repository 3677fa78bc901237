"""Full-batch optimisers for AutoRec, on the driver: L-BFGS and Rprop (the paper's two).

Both see the model only through ``evaluate(theta, iteration) -> Evaluation``: the objective J
and its gradient over all training rows (computed wherever the rows are: in-process, or on
Spark executors and reduced). They keep their state in the parameters' dtype (float32 by
default) so driver memory is a small multiple of |θ|:

* L-BFGS (``history`` pairs): θ, g, direction, trial θ, g_prev and 2·history vectors of
  curvature pairs: (5 + 2·history)·|θ|;
* Rprop (iRprop⁻): θ, g, g_prev, per-weight step: 4·|θ| (plus the trial θ the caller may keep).

Inner products are accumulated in float64 whatever the storage dtype.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

OPTIMIZERS = ("lbfgs", "rprop")
# Elements per chunk of the element-wise Rprop update: bounds its temporaries.
CHUNK = 1 << 22


@dataclass
class Evaluation:
    """J(θ), ∇J(θ) and whatever the evaluator reports alongside (errors, counts)."""

    objective: float
    gradient: np.ndarray
    info: dict = field(default_factory=dict)


Evaluate = Callable[[np.ndarray, int], Evaluation]


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """a·b accumulated in float64, chunk by chunk (no full-size float64 copy)."""
    total = 0.0
    for i in range(0, len(a), CHUNK):
        total += float(np.dot(a[i : i + CHUNK].astype(np.float64), b[i : i + CHUNK].astype(np.float64)))
    return total


class LBFGS:
    """Limited-memory BFGS with a backtracking (Armijo) line search.

    One :meth:`step` is one iteration: a two-loop-recursion direction, then trial points
    θ + α d (α = 1, halved up to ``max_backtracks`` times; the very first step is scaled to
    unit length) until J decreases sufficiently. A pair (s, y) with sᵀy ≤ 0 is not stored.
    """

    def __init__(self, history: int = 5, max_backtracks: int = 12, c1: float = 1e-4):
        self.history = history
        self.max_backtracks = max_backtracks
        self.c1 = c1
        self.pairs: list[tuple[np.ndarray, np.ndarray, float]] = []  # (s, y, 1/sᵀy)
        self.evaluations = 0

    def direction(self, g: np.ndarray) -> np.ndarray:
        q = -g.copy()
        alphas = []
        for s, y, rho in reversed(self.pairs):
            a = rho * dot(s, q)
            q -= (a * y).astype(q.dtype, copy=False)
            alphas.append(a)
        if self.pairs:
            s, y, _ = self.pairs[-1]
            q *= dot(s, y) / dot(y, y)
        else:
            q /= max(math.sqrt(dot(g, g)), 1e-12)
        for (s, y, rho), a in zip(self.pairs, reversed(alphas), strict=True):
            b = rho * dot(y, q)
            q += ((a - b) * s).astype(q.dtype, copy=False)
        return q

    def step(self, theta: np.ndarray, current: Evaluation, evaluate: Evaluate, iteration: int):
        """One iteration from (θ, J(θ), ∇J(θ)); returns (θ_new, Evaluation at θ_new, ok)."""
        g = current.gradient
        d = self.direction(g)
        slope = dot(g, d)
        if slope >= 0:  # not a descent direction: forget the curvature, go down the gradient
            self.pairs.clear()
            d = self.direction(g)
            slope = dot(g, d)
        alpha = 1.0
        for _ in range(self.max_backtracks + 1):
            trial = theta + (alpha * d).astype(theta.dtype, copy=False)
            new = evaluate(trial, iteration)
            self.evaluations += 1
            if (
                math.isfinite(new.objective)
                and new.objective <= current.objective + self.c1 * alpha * slope
            ):
                s = trial - theta
                y = new.gradient - g
                sy = dot(s, y)
                if sy > 1e-12 * math.sqrt(dot(s, s) * dot(y, y)):
                    self.pairs.append((s, y, 1.0 / sy))
                    if len(self.pairs) > self.history:
                        self.pairs.pop(0)
                return trial, new, True
            alpha *= 0.5
        log.info("L-BFGS: no sufficient decrease after %d halvings; stopping", self.max_backtracks)
        return theta, current, False


class Rprop:
    """iRprop⁻ (Igel & Hüsken 2000): a per-weight step that grows ×``increase`` while the
    gradient keeps its sign and shrinks ×``decrease`` when it flips (that weight then skips
    one update); θ moves by −sign(g)·step. One gradient per iteration, no line search."""

    def __init__(
        self,
        size: int,
        dtype,
        initial_step: float = 1e-3,
        increase: float = 1.2,
        decrease: float = 0.5,
        min_step: float = 1e-8,
        max_step: float = 1.0,
    ):
        self.step_size = np.full(size, initial_step, dtype=dtype)
        self.previous = np.zeros(size, dtype=dtype)
        self.increase, self.decrease = increase, decrease
        self.min_step, self.max_step = min_step, max_step
        self.evaluations = 0

    def step(self, theta: np.ndarray, current: Evaluation, evaluate: Evaluate, iteration: int):
        g = current.gradient.copy()
        trial = theta.copy()
        for a in range(0, len(theta), CHUNK):
            sl = slice(a, a + CHUNK)
            gs, prev, size = g[sl], self.previous[sl], self.step_size[sl]
            agree = gs * prev
            grow, shrink = agree > 0, agree < 0
            size[grow] = np.minimum(size[grow] * self.increase, self.max_step)
            size[shrink] = np.maximum(size[shrink] * self.decrease, self.min_step)
            gs[shrink] = 0.0
            trial[sl] -= np.sign(gs) * size
            prev[...] = gs
        new = evaluate(trial, iteration)
        self.evaluations += 1
        return trial, new, math.isfinite(new.objective)
