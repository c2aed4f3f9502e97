"""Progress bars for long work: shown on a terminal, silent in pipes, logs and with ``--quiet``.

tqdm is optional (it comes with the ``torch`` extra); without it there is simply no bar.
"""
from __future__ import annotations

import sys
from typing import Iterable, TypeVar

T = TypeVar("T")

LARGE_FILE_BYTES = 16 << 20  # below this, loading is too quick for a bar to be worth drawing


def bar(items: Iterable[T], desc: str, enabled: bool | None = None, total: int | None = None) -> Iterable[T]:
    """``items`` wrapped in a tqdm bar when ``enabled`` (None: when stderr is a terminal)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, total=total, leave=False, file=sys.stderr)
