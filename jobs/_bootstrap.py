"""Let `python jobs/NAME.py` run from a source checkout even before `pip install -e .`.

When mfspark is not importable, the checkout root goes on sys.path and on PYTHONPATH (so
local-mode Python workers, which are separate processes, import the same package).
"""

from __future__ import annotations

import os
import sys

try:
    import mfspark  # noqa: F401
except ImportError:
    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, _root)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_root, os.environ.get("PYTHONPATH", "")) if p)
