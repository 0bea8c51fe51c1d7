"""Slowdown factors for kernels that overlap on one GPU.

The table maps (victim class, other class, victim's priority relative to the other's)
to how many times slower the victim runs beside the other. An entry with priority `any`
applies when no entry names the exact relation. Several co-runners add their excess
slowdowns, 1 + Σ(f_i − 1): two same-class kernels at f = 2 each run at 1/2, three at 1/3,
which is processor sharing of the resource they both saturate.
"""

from __future__ import annotations

from collections.abc import Iterable


def relation(victim_priority: int, other_priority: int) -> str:
    """`higher` when the victim's stream has the higher priority (CUDA: lower number)."""
    if victim_priority < other_priority:
        return "higher"
    if victim_priority > other_priority:
        return "lower"
    return "equal"


class ContentionTable:
    def __init__(self, pairs: Iterable[tuple[str, str, str, float]]):
        self.entries: dict[tuple[str, str, str], float] = {}
        for victim, other, prio, slowdown in pairs:
            self.entries[(victim, other, prio)] = float(slowdown)
        self._cache: dict[tuple[str, str, int, int], float] = {}

    def factor(self, victim: str, other: str, victim_priority: int = 0, other_priority: int = 0) -> float:
        key = (victim, other, victim_priority, other_priority)
        f = self._cache.get(key)
        if f is None:
            rel = relation(victim_priority, other_priority)
            f = self.entries.get((victim, other, rel), self.entries.get((victim, other, "any"), 1.0))
            self._cache[key] = f
        return f

    def slowdown(self, victim: str, others: Iterable[str], victim_priority: int = 0,
                 other_priorities: Iterable[int] | None = None) -> float:
        others = list(others)
        prios = list(other_priorities) if other_priorities is not None else [0] * len(others)
        return 1.0 + sum(self.factor(victim, o, victim_priority, p) - 1.0 for o, p in zip(others, prios))
