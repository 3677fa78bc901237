"""Bayesian MF kernels and the Gibbs loop in numpy (no Spark): each checked against a dense
numpy computation, Monte-Carlo moments, or a planted low-rank truth."""

from __future__ import annotations

import numpy as np
import pytest

from mfspark.blocks.random import keyed_normal
from mfspark.blocks.rows import ITEM, USER, RatingRows
from mfspark.config import load_config
from mfspark.errors import ConfigError, MfsparkError
from mfspark.models.bpmf.kernels import (
    Hyper,
    HyperPrior,
    draw_hyper,
    draw_rows,
    posterior_parameters,
    row_stream,
)
from mfspark.models.bpmf.sampler import BPMFParams, LocalSampler, run_gibbs


def small_block(rng, n_rows=6, n_fixed=9, k=3, per_row=5):
    rows = np.repeat(np.arange(n_rows), per_row)
    cols = np.concatenate([rng.choice(n_fixed, per_row, replace=False) for _ in range(n_rows)])
    values = rng.integers(1, 6, len(rows)).astype(float)
    fixed_f = rng.normal(0, 0.5, (n_fixed, k))
    fixed_b = rng.normal(0, 0.3, n_fixed)
    return rows, cols, values, fixed_f, fixed_b


def random_hyper(rng, dim):
    a = rng.normal(size=(dim, dim))
    return Hyper(rng.normal(0, 0.2, dim), a @ a.T / dim + np.eye(dim))


def dense_conditional(cols, values, fixed_f, fixed_b, mu, hyper, alpha):
    """The conditional of one row from its dense design matrix: the obvious formula."""
    x = np.hstack([fixed_f[cols], np.ones((len(cols), 1))])
    t = values - mu - fixed_b[cols]
    precision = hyper.precision + alpha * x.T @ x
    cov = np.linalg.inv(precision)
    return cov @ (hyper.precision @ hyper.mean + alpha * x.T @ t), cov, precision


def test_row_draw_is_conditional_mean_plus_keyed_noise_through_the_cholesky_factor():
    rng = np.random.default_rng(0)
    rows, cols, values, fixed_f, fixed_b = small_block(rng)
    block = RatingRows.from_coo(rows, cols, values, entities=np.arange(7))  # row 6: no ratings
    hyper, alpha, mu = random_hyper(rng, 4), 1.7, 3.2
    got = draw_rows(block, fixed_f, fixed_b, mu, hyper, alpha, 5, 3, USER, np.float64)
    z = keyed_normal(5, row_stream(3, USER), np.arange(7), 4)
    for r in range(6):
        mine = rows == r
        mean, cov, precision = dense_conditional(
            cols[mine], values[mine], fixed_f, fixed_b, mu, hyper, alpha
        )
        # x = m + L⁻ᵀ z with P = L Lᵀ: mean m, covariance L⁻ᵀL⁻¹ = P⁻¹
        low = np.linalg.cholesky(precision)
        want = mean + np.linalg.solve(low.T, z[r])
        np.testing.assert_allclose(np.r_[got.factors[r], got.bias[r]], want, rtol=1e-10, atol=1e-12)
        # the per-row squared error of the drawn row, from scratch
        x = np.hstack([fixed_f[cols[mine]], np.ones((mine.sum(), 1))])
        resid = values[mine] - mu - fixed_b[cols[mine]] - x @ want
        assert got.row_sse[r] == pytest.approx(resid @ resid, rel=1e-9)
    assert not got.factors[6].any() and got.bias[6] == 0 and got.row_sse[6] == 0  # kept at 0


def test_row_draws_have_the_dense_conditional_mean_and_covariance():
    """Monte Carlo: 20,000 entities with the same ratings are 20,000 independent draws."""
    rng = np.random.default_rng(1)
    k, n = 2, 20_000
    fixed_f, fixed_b = rng.normal(0, 0.6, (8, k)), rng.normal(0, 0.3, 8)
    cols = np.array([0, 2, 3, 5, 7])
    values = np.array([4.0, 2.0, 5.0, 3.0, 1.0])
    block = RatingRows.from_coo(
        np.repeat(np.arange(n), len(cols)), np.tile(cols, n), np.tile(values, n), width=None
    )
    hyper, alpha, mu = random_hyper(rng, k + 1), 0.9, 3.0
    got = draw_rows(block, fixed_f, fixed_b, mu, hyper, alpha, 11, 1, ITEM, np.float64)
    x = np.hstack([got.factors, got.bias[:, None]])
    mean, cov, _ = dense_conditional(cols, values, fixed_f, fixed_b, mu, hyper, alpha)
    se = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(axis=0) - mean) < 4.5 * se)
    np.testing.assert_allclose(np.cov(x.T), cov, atol=0.05 * np.max(np.diag(cov)))


def test_hyper_posterior_parameters_and_wishart_moments():
    rng = np.random.default_rng(2)
    dim, n = 3, 50
    x = rng.normal(0.4, 0.7, (n, dim))
    prior = HyperPrior(beta0=2.0, nu0=0.0, w0_scale=0.5)
    stats = (n, x.sum(0), x.T @ x)
    mu, beta, w, nu = posterior_parameters(stats, prior, dim)
    xbar = x.mean(0)
    scatter = (x - xbar).T @ (x - xbar)
    want_w = np.linalg.inv(np.eye(dim) / 0.5 + scatter + (2.0 * n / (2.0 + n)) * np.outer(xbar, xbar))
    np.testing.assert_allclose(w, want_w, rtol=1e-10)
    np.testing.assert_allclose(mu, n * xbar / (2.0 + n))
    assert (beta, nu) == (2.0 + n, dim + n)
    draws = [draw_hyper(stats, prior, dim, np.random.default_rng(s)) for s in range(3000)]
    lam = np.mean([d.precision for d in draws], axis=0)
    np.testing.assert_allclose(lam, nu * w, rtol=0.05, atol=0.05 * np.abs(nu * w).max())  # E Λ = νW
    means = np.array([d.mean for d in draws])
    np.testing.assert_allclose(
        means.mean(0), mu, atol=4 * np.sqrt(np.diag(np.linalg.inv(beta * nu * w)) / 3000).max() + 0.01
    )


def test_non_positive_definite_precision_names_entity_and_sweep():
    rng = np.random.default_rng(3)
    rows, cols, values, fixed_f, fixed_b = small_block(rng)
    block = RatingRows.from_coo(rows + 40, cols, values)
    bad = Hyper(np.zeros(4), -50.0 * np.eye(4))
    with pytest.raises(MfsparkError, match=r"bpmf sweep 7: .* item idx 40 is not positive definite"):
        draw_rows(block, fixed_f, fixed_b, 3.0, bad, 1.0, 1, 7, ITEM)
    nan = Hyper(np.zeros(4), np.full((4, 4), np.nan))
    with pytest.raises(MfsparkError, match="sweep 2"):
        draw_rows(block, fixed_f, fixed_b, 3.0, nan, 1.0, 1, 2, ITEM)


def test_keyed_normal_depends_only_on_its_key():
    a = keyed_normal(7, 3, np.arange(1000), 5)
    np.testing.assert_array_equal(keyed_normal(7, 3, np.arange(500, 1000), 5), a[500:])
    assert not np.allclose(keyed_normal(8, 3, np.arange(1000), 5), a)
    assert not np.allclose(keyed_normal(7, 4, np.arange(1000), 5), a)
    assert abs(a.mean()) < 0.1 and abs(a.std() - 1) < 0.05


def planted(seed=4, n_users=300, n_items=200, rank=3, density=0.25, noise=0.5):
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.6, (n_users, rank))
    v = rng.normal(0, 0.6, (n_items, rank))
    bu, bi = rng.normal(0, 0.3, n_users), rng.normal(0, 0.3, n_items)
    cells = rng.choice(n_users * n_items, int(density * n_users * n_items), replace=False)
    u, i = cells // n_items, cells % n_items
    signal = 3.0 + bu[u] + bi[i] + np.einsum("ij,ij->i", w[u], v[i])
    r = signal + rng.normal(0, noise, len(u))
    test = rng.random(len(u)) < 0.2
    return (u, i, r, signal, test), n_users, n_items


def test_planted_truth_is_recovered_and_intervals_cover_95_percent():
    (u, i, r, signal, test), n_users, n_items = planted()
    params = BPMFParams(rank=3, burn_in=30, samples=130, seed=3, saved_samples=5)
    sampler = LocalSampler(
        (u[~test], i[~test], r[~test]), n_users, n_items, params, (u[test], i[test], r[test])
    )
    res = run_gibbs(sampler, params)
    order = np.lexsort((res.test_users, res.test_items))  # the sampler's own order → ours
    ours = np.lexsort((u[test], i[test]))
    pred, sd = np.empty(test.sum()), np.empty(test.sum())
    pred[ours], sd[ours] = res.test_mean[order], res.test_sd[order]
    truth_rmse = np.sqrt(np.mean((pred - signal[test]) ** 2))
    assert truth_rmse < 0.5 * 0.5  # the signal is recovered well within the noise level (sd 0.5)
    test_rmse = np.sqrt(np.mean((pred - r[test]) ** 2))
    assert 0.5 < test_rmse < 0.5 * 1.15
    coverage = np.mean(np.abs(r[test] - pred) <= 1.96 * sd)
    assert 0.93 <= coverage <= 0.97
    assert res.noise_variance == pytest.approx(0.25, rel=0.1)  # E[1/α] ≈ the planted σ²
    assert res.n_kept == 100 and [s.sweep for s in res.samples] == [31, 56, 81, 105, 130]
    # the posterior-mean parameters also predict the signal (plug-in), within the noise level
    mean = res.posterior_mean.predict(u[test], i[test])
    assert np.sqrt(np.mean((mean - signal[test]) ** 2)) < 0.5 * 0.5


def test_same_seed_same_chain_different_seed_different_draws():
    (u, i, r, _, test), n_users, n_items = planted(n_users=60, n_items=40, density=0.3)
    train = (u[~test], i[~test], r[~test])

    def run(seed):
        params = BPMFParams(rank=2, burn_in=2, samples=5, seed=seed)
        return run_gibbs(
            LocalSampler(train, n_users, n_items, params, (u[test], i[test], r[test])), params
        )

    a, b, c = run(1), run(1), run(2)
    np.testing.assert_array_equal(a.test_mean, b.test_mean)
    np.testing.assert_array_equal(a.posterior_mean.user_factors, b.posterior_mean.user_factors)
    assert not np.allclose(a.posterior_mean.user_factors, c.posterior_mean.user_factors)


@pytest.mark.parametrize(
    "override, key",
    [
        ("bpmf.burn_in=200", "bpmf.burn_in"),
        ("bpmf.rank=0", "bpmf.rank"),
        ("bpmf.beta0=0", "bpmf.beta0"),
        ("bpmf.w0_scale=0", "bpmf.w0_scale"),
        ("bpmf.noise_precision=0", "bpmf.noise_precision"),
        ("bpmf.noise_rate=-1", "bpmf.noise_rate"),
        ("bpmf.nu0=3", "bpmf.nu0"),
        ("bpmf.thin=500", "bpmf.thin"),
    ],
)
def test_bad_bpmf_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_bad_bpmf_config_fails_before_spark_starts(run_job):
    result = run_job("train_bpmf", "--set", "bpmf.burn_in=500", timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bpmf.burn_in" in lines[0] and "bpmf.samples" in lines[0]
