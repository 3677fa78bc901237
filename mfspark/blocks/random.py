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
    with np.errstate(over="ignore"):
        key = np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
    return (std * _standard_normal(key, entity_idx, dim)).astype(np.float32)


def keyed_normal(seed: int, stream: int, entity_idx: np.ndarray, dim: int) -> np.ndarray:
    """Standard-normal draws (float64, shape (n, dim)) that depend only on (seed, stream,
    entity, dimension): a sampler keys ``stream`` by its sweep and side, so every entity gets
    the same noise in a sweep whatever block or partition it is drawn in, and different
    streams (or seeds) give independent draws."""
    with np.errstate(over="ignore"):
        key = _splitmix64(
            np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ _splitmix64(np.uint64(stream & 0xFFFFFFFFFFFFFFFF))
        )
    return _standard_normal(key, entity_idx, dim)


def _standard_normal(key: np.uint64, entity_idx: np.ndarray, dim: int) -> np.ndarray:
    idx = np.asarray(entity_idx, dtype=np.uint64)[:, None]
    dims = np.arange(dim, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        base = (idx * np.uint64(2 * dim) + dims * np.uint64(2)) ^ key
        u1 = _to_unit(_splitmix64(base))
        u2 = _to_unit(_splitmix64(base + np.uint64(1)))
    radius = np.sqrt(-2.0 * np.log1p(-u1))  # u1 in [0, 1): log1p(-u1) is finite
    return radius * np.cos(2.0 * np.pi * u2)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _to_unit(z: np.ndarray) -> np.ndarray:
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
