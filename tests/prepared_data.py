"""Shared by the tests: a small prepared dataset (the layout of ``prepared/*``) built from
(user_idx, item_idx, rating) frames, with original ids offset from the indices so joins on ids
are really exercised."""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import types as T

from mfspark import columns as C


def prepared_frames(
    spark,
    train: pd.DataFrame,
    test: pd.DataFrame,
    n_users: int,
    n_items: int,
    user_id0: int,
    item_id0: int,
):
    """prepared/{train,test,users,items} DataFrames from (user_idx, item_idx, rating) frames."""

    def with_ids(df: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(
            {
                C.USER_ID: df[C.USER_IDX].astype(np.int64) + user_id0,
                C.ITEM_ID: df[C.ITEM_IDX].astype(np.int64) + item_id0,
                C.USER_IDX: df[C.USER_IDX].astype(np.int32),
                C.ITEM_IDX: df[C.ITEM_IDX].astype(np.int32),
                C.RATING: df[C.RATING].astype(float),
                C.TIMESTAMP: pd.array([None] * len(df), dtype="Int64"),
            }
        )

    user_n = np.bincount(train[C.USER_IDX], minlength=n_users)
    item_n = np.bincount(train[C.ITEM_IDX], minlength=n_items)
    test_pd = with_ids(test)
    test_pd[C.COLD_USER] = user_n[test[C.USER_IDX]] == 0
    test_pd[C.COLD_ITEM] = item_n[test[C.ITEM_IDX]] == 0
    users = pd.DataFrame(
        {
            C.USER_ID: np.arange(n_users) + user_id0,
            C.USER_IDX: np.arange(n_users, dtype=np.int32),
            C.N_TRAIN: user_n,
        }
    )
    items = pd.DataFrame(
        {
            C.ITEM_ID: np.arange(n_items) + item_id0,
            C.ITEM_IDX: np.arange(n_items, dtype=np.int32),
            C.N_TRAIN: item_n,
        }
    )
    entity = lambda id_col, idx_col: T.StructType(  # noqa: E731
        [
            T.StructField(id_col, T.LongType(), False),
            T.StructField(idx_col, T.IntegerType(), False),
            T.StructField(C.N_TRAIN, T.LongType(), False),
        ]
    )
    return (
        spark.createDataFrame(with_ids(train), C.ratings_schema(T.LongType())),
        spark.createDataFrame(test_pd, C.test_schema(T.LongType())),
        spark.createDataFrame(users, entity(C.USER_ID, C.USER_IDX)),
        spark.createDataFrame(items, entity(C.ITEM_ID, C.ITEM_IDX)),
    )


def write_prepared(spark, out: str, frames) -> None:
    """Commit (train, test, users, items) as ``prepared/*`` the way the prepare stage does, so
    stages that read only committed inputs accept them."""
    from mfspark.io import staged_outputs

    names = (C.PREPARED_TRAIN, C.PREPARED_TEST, C.PREPARED_USERS, C.PREPARED_ITEMS)
    with staged_outputs(spark, out, stage="prepare") as stage:
        for df, name in zip(frames, names, strict=True):
            stage.write(df, name)
