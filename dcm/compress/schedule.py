"""Pruning schedules: how much of the final sparsity applies at a given pruning step."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class OneShot:
    """Prune to the final sparsity at the first step, then only retrain."""

    def fraction(self, step: int) -> float:
        return 1.0


@dataclass
class Steps:
    """Iterative pruning (the paper's prune/retrain loop): ``n`` equal increments, one per ``every`` steps."""

    n: int = 4
    every: int = 1

    def fraction(self, step: int) -> float:
        return min(1.0, (step // self.every + 1) / self.n)


@dataclass
class Gradual:
    """Zhu & Gupta (2017): s_t = s_f (1 - (1 - t / T)^3) over ``steps`` pruning steps after ``begin``."""

    steps: int = 10
    begin: int = 0

    def fraction(self, step: int) -> float:
        t = min(max(step - self.begin + 1, 0), self.steps)
        return 1.0 - (1.0 - t / self.steps) ** 3
