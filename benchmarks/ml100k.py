"""What the MovieLens 100K fold scripts share: the canonical folds and their files."""

from __future__ import annotations

import json
import os
import sys

FOLDS = [f"u{k}" for k in range(1, 6)]


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


def write_json(path: str | None, figures) -> None:
    """Write ``figures`` to ``path`` (nothing when no path was given)."""
    if path:
        with open(path, "w") as f:
            json.dump(figures, f, indent=1)
