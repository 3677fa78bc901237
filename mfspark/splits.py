"""Train/test splits that never depend on partitioning.

Every random decision is a hash of the original ids and ``split.seed`` (``xxhash64``), so the
same input and seed give the same split with 1 or 100 partitions:

* ``random`` — a rating is in test when ``u(user, item) < test_fraction``, with ``u`` the hash
  mapped to [0, 1).
* ``user`` — a user with n ≥ 2 ratings puts ``min(n − 1, floor(f·n + v(user)))`` of them in
  test (``v`` a second hash in [0, 1): stochastic rounding keeps the overall fraction at f
  even when most users have few ratings); which ones is decided by ``u``. Every such user
  keeps at least one train rating; users with one rating keep it in train.
* ``time`` — like ``user`` but the test ratings are the user's latest by timestamp (ties by
  ``u``). Needs a timestamp on every row.
* ``predefined`` — train and test come from separate files (handled by the caller).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from mfspark import columns as C
from mfspark.config import SplitConfig
from mfspark.errors import InputError

_MANTISSA = (1 << 53) - 1
# Boolean column added by :func:`assign_test`: the rating is held out.
IS_TEST = "_is_test"


def unit_hash(*cols: Column) -> Column:
    """A deterministic pseudo-uniform double in [0, 1) from the given columns."""
    return (F.xxhash64(*cols).bitwiseAND(F.lit(_MANTISSA))).cast("double") / float(1 << 53)


def _per_user_split(df: DataFrame, cfg: SplitConfig, order: list[Column]) -> Column:
    seed = F.lit(cfg.seed)
    by_user = Window.partitionBy(C.USER_ID)
    n = F.count(F.lit(1)).over(by_user)
    n_test = F.least(
        n - 1, F.floor(F.lit(cfg.test_fraction) * n + unit_hash(F.col(C.USER_ID), seed, F.lit("n")))
    )
    rank = F.row_number().over(by_user.orderBy(*order))
    return rank <= n_test


def assign_test(df: DataFrame, cfg: SplitConfig, n_without_timestamp: int | None = None) -> DataFrame:
    """Add a boolean ``_is_test`` column according to ``split.method``.

    ``n_without_timestamp`` (rows of ``df`` whose timestamp is null) saves the ``time`` split a
    pass over ``df`` when the caller already knows it.
    """
    u = unit_hash(F.col(C.USER_ID), F.col(C.ITEM_ID), F.lit(cfg.seed))
    if cfg.method == "random":
        return df.withColumn(IS_TEST, u < F.lit(cfg.test_fraction))
    df = df.withColumn("_u", u)
    if cfg.method == "user":
        is_test = _per_user_split(df, cfg, [F.col("_u"), F.col(C.ITEM_ID)])
    elif cfg.method == "time":
        missing = n_without_timestamp
        if missing is None:
            missing = df.where(F.col(C.TIMESTAMP).isNull()).count()
        if missing:
            raise InputError(
                f'split.method = "time" needs a timestamp on every rating, but {missing} '
                'ratings have none; use split.method = "user" or "random"'
            )
        is_test = _per_user_split(df, cfg, [F.col(C.TIMESTAMP).desc(), F.col("_u"), F.col(C.ITEM_ID)])
    else:  # pragma: no cover - predefined is split by files, validated by the config
        raise ValueError(cfg.method)
    return df.withColumn(IS_TEST, is_test).drop("_u")


def split(df: DataFrame, cfg: SplitConfig) -> tuple[DataFrame, DataFrame]:
    """(train, test) of ``df`` for the random, user and time methods.

    The caller should cache ``df``'s assignment when it is expensive to recompute; both halves
    come from the same ``_is_test`` column, so they are disjoint and cover ``df``.
    """
    assigned = assign_test(df, cfg)
    train = assigned.where(~F.col(IS_TEST)).drop(IS_TEST)
    test = assigned.where(F.col(IS_TEST)).drop(IS_TEST)
    return train, test
