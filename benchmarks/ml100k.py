"""What the MovieLens 100K fold scripts share: the canonical folds and their files."""

from __future__ import annotations

import json
import os
import sys

FOLDS = [f"u{k}" for k in range(1, 6)]
COLUMNS = ["user", "item", "rating", "timestamp"]


def require_folds(root: str, folds: list[str] = FOLDS) -> None:
    """Exit with one line (code 2) when ``root`` lacks a fold's ``.base`` or ``.test`` file."""
    for fold in folds:
        for suffix in ("base", "test"):
            if not os.path.exists(os.path.join(root, f"{fold}.{suffix}")):
                print(
                    f"error: {root} lacks {fold}.{suffix}: give the MovieLens 100K directory",
                    file=sys.stderr,
                )
                raise SystemExit(2)


def read_fold(root: str, fold: str):
    """A fold's ``(base, test)`` as pandas frames with ``COLUMNS`` (ids as in the files, 1..n)."""
    import pandas as pd

    def read(name: str):
        return pd.read_csv(os.path.join(root, name), sep="\t", names=COLUMNS)

    return read(f"{fold}.base"), read(f"{fold}.test")


def write_json(path: str | None, figures) -> None:
    """Write ``figures`` to ``path`` (nothing when no path was given)."""
    if path:
        with open(path, "w") as f:
            json.dump(figures, f, indent=1)
