"""Shared by the tests: what a fit may leave behind (persistent RDDs, stored block files)."""

from __future__ import annotations

import os

import pytest

from mfspark.blocks import spark as blocks
from mfspark.session import persisted_rdds


def new_persistent_rdds(spark, before: frozenset[int]) -> frozenset[int]:
    """The RDDs persisted now that were not in ``before``. Compared by id, not by count: an
    RDD an earlier test left unreferenced may be unpersisted by Spark's ContextCleaner at any
    moment (a JVM garbage collection), which made a count comparison fail at random."""
    return persisted_rdds(spark) - before


def worker_root(spark) -> str:
    return spark.sparkContext.parallelize([0], 1).map(lambda _: blocks._local_root()).collect()[0]


@pytest.fixture
def stores(monkeypatch):
    """The BlockStores created during a test (their store_dir), also when set-up fails."""
    made = []
    original = blocks.BlockStore.__init__

    def recording_init(self, *args, **kwargs):
        original_set_up = self._set_up

        def set_up(*a, **k):
            made.append(self)
            return original_set_up(*a, **k)

        self._set_up = set_up
        original(self, *args, **kwargs)

    monkeypatch.setattr(blocks.BlockStore, "__init__", recording_init)
    return made


def leftover_dirs(spark, stores) -> list[str]:
    root = worker_root(spark)
    return [s.store_dir for s in stores if os.path.exists(os.path.join(root, s.store_dir))]
