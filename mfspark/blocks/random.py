"""Randomness keyed by entity: draws that depend only on (seed, …, entity, dimension).

A counter-based generator (splitmix64 of the cell's coordinates, then Box-Muller) instead of
a stateful one, so an entity gets the same numbers whatever block or partition it lands in,
and in whatever order the blocks run.
"""

from __future__ import annotations

import numpy as np


def seeded_normal(seed: int, entity_idx: np.ndarray, dim: int, std: float) -> np.ndarray:
    """Initial factors: N(0, std²) entries that depend only on (seed, entity, dimension).

    A counter-based generator (splitmix64 of the cell's coordinates, then Box-Muller), so an
    entity gets the same start whatever block or partition it lands in.
    """
    idx = np.asarray(entity_idx, dtype=np.uint64)[:, None]
    dims = np.arange(dim, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        base = (idx * np.uint64(2 * dim) + dims * np.uint64(2)) ^ (
            np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
        )
        u1 = _to_unit(_splitmix64(base))
        u2 = _to_unit(_splitmix64(base + np.uint64(1)))
    radius = np.sqrt(-2.0 * np.log1p(-u1))  # u1 in [0, 1): log1p(-u1) is finite
    return (std * radius * np.cos(2.0 * np.pi * u2)).astype(np.float32)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _to_unit(z: np.ndarray) -> np.ndarray:
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
