"""Ridge weights for a blend, from sufficient statistics — no Spark here.

With members' predictions p_1..p_m on the validation ratings y and A = [1, p_1, …, p_m],

    min over θ = (a, w):  Σ (y − a − wᵀp)² + λ ‖w‖²   ⇔   (AᵀA + λ diag(0, 1, …, 1)) θ = Aᵀy

(the intercept a is not penalised). Only AᵀA, Aᵀy, Σy² and n are needed, which Spark sums
without moving a rating; every member's validation error comes from the same numbers:
Σ (y − p_m)² = Σy² − 2 (Aᵀy)_m + (AᵀA)_mm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class RidgeStats:
    gram: np.ndarray  # (m+1, m+1): AᵀA, first row/column the intercept's
    rhs: np.ndarray  # (m+1,): Aᵀy
    y_sq: float  # Σ y²
    n: int

    @classmethod
    def from_arrays(cls, predictions: np.ndarray, y: np.ndarray) -> RidgeStats:
        a = np.hstack([np.ones((len(y), 1)), np.asarray(predictions, np.float64)])
        y = np.asarray(y, np.float64)
        return cls(a.T @ a, a.T @ y, float(y @ y), len(y))

    def solve(self, l2: float) -> tuple[float, np.ndarray]:
        """(intercept, weights)."""
        penalty = np.full(len(self.rhs), l2)
        penalty[0] = 0.0
        theta = np.linalg.solve(self.gram + np.diag(penalty), self.rhs)
        return float(theta[0]), theta[1:]

    def sse(self, intercept: float, weights: np.ndarray) -> float:
        theta = np.r_[intercept, weights]
        return float(theta @ self.gram @ theta - 2 * theta @ self.rhs + self.y_sq)

    def rmse(self, intercept: float, weights: np.ndarray) -> float:
        return math.sqrt(max(self.sse(intercept, weights), 0.0) / self.n)

    def member_rmse(self, m: int) -> float:
        """Validation RMSE of member m alone (weight 1, intercept 0)."""
        weights = np.zeros(len(self.rhs) - 1)
        weights[m] = 1.0
        return self.rmse(0.0, weights)
