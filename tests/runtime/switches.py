"""Switching a compiled module's instruction path (AVX-512, AVX2 or portable C) for a block of test code.

The modules' ``set_simd``/``set_avx512`` return the previous setting, so the block can hand it back
even when an assertion inside fails, and later tests see the path the CPU would pick.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator


@contextlib.contextmanager
def switched(set_flag: Callable[[bool], bool], on: bool) -> Iterator[None]:
    """Run the block with ``set_flag(on)``, then restore the setting it replaced."""
    previous = set_flag(on)
    try:
        yield
    finally:
        set_flag(previous)
