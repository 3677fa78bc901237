"""Shared by the tests: what a fit may leave behind (persistent RDDs, stored block files)."""

from __future__ import annotations

import os

import pytest

from mfspark.blocks import spark as blocks


def persistent_rdds(spark) -> int:
    return int(spark.sparkContext._jsc.sc().getPersistentRDDs().size())


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
