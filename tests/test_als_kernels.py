"""ALS kernels without Spark: block solver vs a per-row loop, monotone J, planted recovery."""

from __future__ import annotations

import numpy as np
import pytest

from mfspark.blocks import compiled
from mfspark.blocks.random import seeded_normal
from mfspark.blocks.rows import RatingRows
from mfspark.models.als.kernels import Regularization, half_step, reference_half_step
from mfspark.models.als.train import ALSParams, LocalSolver, objective, run_als
from mfspark.models.factors import squared_error


def random_ratings(rng, n_rows, n_cols, nnz):
    cells = rng.choice(n_rows * n_cols, size=nnz, replace=False)
    return cells // n_cols, cells % n_cols, rng.uniform(0.5, 5.0, nnz)


def planted(rng, n_users, n_items, nnz, rank, noise, mu=3.5):
    u, i, _ = random_ratings(rng, n_users, n_items, nnz)
    w = rng.normal(0, 0.6, (n_users, rank))
    v = rng.normal(0, 0.6, (n_items, rank))
    b = rng.normal(0, 0.4, n_users)
    c = rng.normal(0, 0.5, n_items)
    clean = mu + b[u] + c[i] + np.einsum("ij,ij->i", w[u], v[i])
    return u, i, clean + rng.normal(0, noise, nnz), clean


@pytest.mark.parametrize("strategy", ["compiled", "sparse", "dense"])
@pytest.mark.parametrize("scaling,width", [("none", 16), ("count", 16), ("none", None)])
def test_block_solver_equals_per_row_solve(scaling, width, strategy, monkeypatch):
    import mfspark.blocks.rows as K

    monkeypatch.setattr(K, "DENSE_BATCH_CELLS", 200)  # many batches per padded length
    monkeypatch.setattr(compiled, "SEGMENT", 5)  # many gathered segments per row
    rng = np.random.default_rng(0)
    n_rows, n_cols, k = 300, 80, 6
    rows, cols, vals = random_ratings(rng, n_rows, n_cols, 4000)
    # include rows without ratings: they must come out as zeros
    block = RatingRows.from_coo(rows, cols, vals, entities=np.arange(n_rows + 5), width=width)
    assert len(np.unique(K.padded_length(block.counts()[block.counts() > 0]))) > 3
    fixed = rng.normal(0, 0.5, (n_cols, k))
    fixed_bias = rng.normal(0, 0.3, n_cols)
    reg = Regularization(0.07, 0.03, scaling)
    want_f, want_b = reference_half_step(block, fixed, fixed_bias, 3.3, reg)
    for dtype, atol in ((np.float64, 1e-8), (np.float32, 2e-4)):
        got = half_step(
            block,
            fixed.astype(dtype),
            fixed_bias.astype(dtype),
            3.3,
            reg,
            dtype=dtype,
            chunk_rows=64,
            strategy=strategy,
        )
        assert got.factors.dtype == dtype
        np.testing.assert_allclose(got.factors, want_f, rtol=0, atol=atol)
        np.testing.assert_allclose(got.bias, want_b, rtol=0, atol=atol)
        assert not got.factors[n_rows:].any() and not got.bias[n_rows:].any()
        # the free SSE from the normal equations equals a direct computation
        sse, _, n = squared_error(3.3, got.factors, got.bias, fixed, fixed_bias, block)
        assert n == 4000
        assert got.sse == pytest.approx(sse, rel=1e-9 if dtype == np.float64 else 1e-4)


@pytest.mark.parametrize("strategy", ["compiled", "sparse", "dense"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_normal_equations_equal_per_row_products(strategy, dtype, monkeypatch):
    """G_i = Xᵢᵀ Xᵢ, b_i = Xᵢᵀ t_i and Σ t² per row, against numpy on each row's own gathered
    matrix; tiles, chunks, gathered segments, an odd and an even k + 1, and rows without
    ratings."""
    from mfspark.blocks.rows import normal_equations

    monkeypatch.setattr(compiled, "SEGMENT", 6)

    rng = np.random.default_rng(7)
    for k, width in ((5, 16), (6, None)):
        rows, cols, vals = random_ratings(rng, 90, 50, 1500)
        block = RatingRows.from_coo(rows, cols, vals, entities=np.arange(93), width=width)
        fixed = rng.normal(0, 0.5, (50, k)).astype(dtype)
        bias = rng.normal(0, 0.3, 50).astype(dtype)
        pieces = list(
            normal_equations(block, fixed, bias, 3.2, dtype, 40, row_sums=True, strategy=strategy)
        )
        assert [(p.start, p.stop) for p in pieces] == [(0, 40), (40, 80), (80, 93)]
        gram = np.concatenate([p.gram for p in pieces])
        rhs = np.concatenate([p.rhs for p in pieces])
        row_sq = np.concatenate([p.row_target_sq for p in pieces])
        rtol = 1e-12 if dtype == np.float64 else 1e-5
        for r in range(93):
            mine = rows == r
            x = np.hstack([fixed[cols[mine]].astype(np.float64), np.ones((mine.sum(), 1))])
            t = vals[mine].astype(np.float32).astype(np.float64) - 3.2 - bias[cols[mine]]
            np.testing.assert_allclose(gram[r], x.T @ x, rtol=rtol, atol=rtol)
            atol = 1e-4 if dtype == np.float32 else 1e-9
            np.testing.assert_allclose(rhs[r], x.T @ t, rtol=rtol, atol=atol)
            assert row_sq[r] == pytest.approx(t @ t, rel=rtol, abs=1e-4)
        assert sum(p.target_sq for p in pieces) == pytest.approx(row_sq.sum(), rel=max(rtol, 1e-9) * 10)


@pytest.mark.parametrize("strategy", ["compiled", "sparse"])
def test_unregularised_rows_with_too_few_ratings_are_a_clear_error(strategy):
    rows = np.array([0, 0, 1, 1, 1, 1])
    cols = np.array([0, 1, 0, 1, 2, 3])
    block = RatingRows.from_coo(rows, cols, np.full(6, 4.0))
    fixed = np.random.default_rng(0).normal(0, 1, (4, 3))
    with pytest.raises(np.linalg.LinAlgError, match="fewer ratings than rank"):
        unregularised = Regularization(0.0, 0.0)
        half_step(block, fixed, np.zeros(4), 3.0, unregularised, np.float64, strategy=strategy)


def test_gram_strategy_by_rank_and_its_tiles():
    from mfspark.blocks.rows import ONE_TILE, gram_strategy, padded_length, tile_width

    assert gram_strategy(10) == "compiled" and gram_strategy(50) == "compiled"
    assert gram_strategy(100, "sparse") == "sparse" and gram_strategy(2, "dense") == "dense"
    with pytest.raises(ValueError, match="one of auto, compiled, sparse, dense"):
        gram_strategy(10, "fast")
    assert tile_width(10) == ONE_TILE and tile_width(50, "dense") == ONE_TILE
    assert tile_width(10, "sparse") < ONE_TILE
    counts = np.arange(1, 5000)
    length = padded_length(counts)
    assert (length >= counts).all() and (length >= 8).all()
    assert (length[counts >= 8] <= counts[counts >= 8] * 1.125 + 1e-9).all()  # ≤ 12.5 % padding


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_product_equals_public_scipy_product(monkeypatch, dtype):
    """half_step calls scipy's private CSR kernel to accumulate in place; its results must
    be those of the public ``csr_matrix @ dense`` it falls back to."""
    import mfspark.blocks.rows as K

    rng = np.random.default_rng(5)
    rows, cols, vals = random_ratings(rng, 200, 90, 3000)
    block = RatingRows.from_coo(rows, cols, vals, width=32)
    fixed = rng.normal(0, 0.5, (90, 5)).astype(dtype)
    fixed_bias = rng.normal(0, 0.3, 90).astype(dtype)
    reg = Regularization(0.1, 0.05, "count")
    fast = half_step(block, fixed, fixed_bias, 3.1, reg, dtype=dtype, chunk_rows=50)
    monkeypatch.setattr(K, "_csr_matvecs", None)
    slow = half_step(block, fixed, fixed_bias, 3.1, reg, dtype=dtype, chunk_rows=50)
    np.testing.assert_allclose(fast.factors, slow.factors, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast.bias, slow.bias, rtol=1e-5, atol=1e-6)
    assert np.abs(fast.factors).max() > 0.01  # the products really happened


@pytest.mark.parametrize(
    "strategy,width",
    [(s, w) for s in ("compiled", "sparse", "dense") for w in (None, 16)],
)
def test_block_split_does_not_change_rows(strategy, width, monkeypatch):
    import mfspark.blocks.rows as K

    monkeypatch.setattr(K, "DENSE_BATCH_CELLS", 300)
    monkeypatch.setattr(compiled, "SEGMENT", 7)
    rng = np.random.default_rng(1)
    rows, cols, vals = random_ratings(rng, 500, 120, 9000)
    fixed = rng.normal(0, 0.5, (120, 4)).astype(np.float32)
    fixed_bias = rng.normal(0, 0.3, 120).astype(np.float32)
    reg = Regularization(0.05, 0.05, "count")

    def solve(keep, local=False):
        c, col_ids = cols[keep], None
        if local:  # block-local columns, as the Spark blocks store them
            col_ids = np.unique(c)
            c = np.searchsorted(col_ids, c)
        block = RatingRows.from_coo(rows[keep], c, vals[keep], width=width, col_ids=col_ids)
        if local:
            assert block.n_tiles < -(-120 // (width or 120)) or width is None
            np.testing.assert_array_equal(np.sort(block.global_cols()), np.sort(cols[keep]))
        return half_step(
            block,
            block.local(fixed),
            block.local(fixed_bias),
            3.0,
            reg,
            chunk_rows=70,
            strategy=strategy,
        )

    whole = solve(np.ones(len(rows), bool))
    for local in (False, True):
        # rows dealt to 3 blocks by idx mod 3; the local blocks use only some columns each
        parts = [solve((rows % 3 == b) & ((cols % 4 != b) | (not local)), local) for b in range(3)]
        if local:  # the dropped ratings change the rows: compare with global columns instead
            want = [solve((rows % 3 == b) & (cols % 4 != b)) for b in range(3)]
            for p, w in zip(parts, want, strict=True):
                np.testing.assert_array_equal(p.factors, w.factors)
                np.testing.assert_array_equal(p.bias, w.bias)
            continue
        order = np.argsort(np.concatenate([p.rows for p in parts]))
        np.testing.assert_array_equal(np.concatenate([p.factors for p in parts])[order], whole.factors)
        np.testing.assert_array_equal(np.concatenate([p.bias for p in parts])[order], whole.bias)


@pytest.mark.parametrize("scaling", ["none", "count"])
def test_objective_never_increases(scaling):
    rng = np.random.default_rng(2)
    u, i, r, _ = planted(rng, 400, 200, 12000, 4, 0.7)
    r = r.astype(np.float32)  # ratings are held as float32, as the solvers hold them
    params = ALSParams(
        rank=6, max_iter=8, reg=Regularization(0.08, 0.02, scaling), tol=0, dtype=np.float64
    )
    solver = LocalSolver((u, i, r), 400, 200, params)
    result = run_als(solver, params)
    j = np.array(result.half_step_objectives)
    assert len(j) == 16
    assert np.all(np.diff(j) <= 1e-9 * j[:-1]), np.diff(j)
    # the loop's bookkeeping equals J recomputed from the final model
    assert result.history[-1].objective == pytest.approx(
        objective(result.model, (u, i, r), params.reg), rel=1e-9
    )


def test_planted_model_recovered_to_noise_floor():
    rng = np.random.default_rng(3)
    n_users, n_items, nnz, noise = 1000, 800, 200_000, 0.5
    u, i, r, _ = planted(rng, n_users, n_items, nnz, rank=5, noise=noise)
    test = rng.random(nnz) < 0.1
    # plain L2 is the MAP estimate of probabilistic MF: λ = σ²/σ_prior², from the planted
    # prior (factor entries sd 0.6, biases sd 0.4 and 0.5)
    reg = Regularization(noise**2 / 0.6**2, noise**2 / 0.45**2, "none")
    params = ALSParams(rank=5, max_iter=25, reg=reg)
    solver = LocalSolver(
        (u[~test], i[~test], r[~test]), n_users, n_items, params, test=(u[test], i[test], r[test])
    )
    result = run_als(solver, params)
    pred = result.model.predict(u[test], i[test])
    rmse = float(np.sqrt(np.mean((r[test] - pred) ** 2)))
    assert rmse <= 1.05 * noise, rmse
    # the history's masked test RMSE is the same number, computed inside the half-step
    assert result.history[-1].test_rmse == pytest.approx(rmse, rel=1e-6)


def test_seeded_normal_depends_only_on_entity():
    a = seeded_normal(7, np.arange(1000), 8, 0.1)
    b = seeded_normal(7, np.arange(500, 1000), 8, 0.1)
    np.testing.assert_array_equal(a[500:], b)
    assert abs(a.std() - 0.1) < 0.005 and abs(a.mean()) < 0.005
    assert not np.array_equal(a, seeded_normal(8, np.arange(1000), 8, 0.1))


@pytest.mark.parametrize("spread", [3, 10**7], ids=["table", "sorted"])
def test_distinct_and_positions_equal_unique_and_searchsorted(spread):
    from mfspark.blocks.rows import distinct, positions

    rng = np.random.default_rng(3)
    ids = rng.integers(0, 5000, 20000) * spread  # spread 10**7: too sparse for a lookup table
    values, pos = distinct(ids)
    want_values, want_pos = np.unique(ids, return_inverse=True)
    np.testing.assert_array_equal(values, want_values)
    np.testing.assert_array_equal(pos, want_pos)
    np.testing.assert_array_equal(positions(values, ids[::7]), np.searchsorted(values, ids[::7]))
    with pytest.raises(ValueError, match="not among the entities"):
        positions(values[1:], ids)  # the smallest id is no longer an entity
    with pytest.raises(ValueError, match="not among the entities"):
        positions(values, np.array([values[-1] + 1]))


@pytest.mark.parametrize("width", [7, None])
def test_from_coo_packed_sort_equals_stable_argsort(width, monkeypatch):
    """The packed (key, value) sort and the argsort fallback store the same arrays, and both
    equal a per-rating oracle: rows in entity order, columns ascending within a row and tile."""
    import mfspark.blocks.rows as K

    rng = np.random.default_rng(4)
    rows, cols, vals = random_ratings(rng, 60, 40, 900)
    vals = vals.astype(np.float32) - 3.0  # negative values too: their sign bit is in the key's word
    entities = np.arange(-1, 66) * 2 + 2  # sorted ids, some without ratings
    rows = rows * 2 + 2
    packed = K.RatingRows.from_coo(rows, cols, vals, entities, width)
    monkeypatch.setattr(K, "PACKED_KEYS", 0)
    fallback = K.RatingRows.from_coo(rows, cols, vals, entities, width)
    for name in ("rows", "indptr", "cols", "values"):
        np.testing.assert_array_equal(getattr(packed, name), getattr(fallback, name))
    w = width or 40
    order = sorted(range(len(rows)), key=lambda p: (cols[p] // w, rows[p], cols[p]))
    np.testing.assert_array_equal(packed.global_cols(), cols[order])
    np.testing.assert_array_equal(packed.values, vals[order])
    np.testing.assert_array_equal(packed.rows[packed.row_positions()], rows[order])
