"""Slowdown factors for kernels that overlap on one GPU.

The table maps (victim class, other class, victim's priority relative to the other's, which of
the two started first) to how many times slower the victim runs beside the other. Launch order
matters because a kernel that starts second waits for the SMs the first one holds: on an H100 an
emulated collective beside a GEMM ran 1.06-1.36x slower when it started first and 1.9-2.3x when
the GEMM did. An entry with priority `any` applies when no entry names the exact relation, and
one with first `any` when none names the order (or both started at once). Several co-runners add
their excess slowdowns, 1 + Σ(f_i − 1): two same-class kernels at f = 2 each run at 1/2, three
at 1/3, which is processor sharing of the resource they both saturate.
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


FIRSTS = ("victim", "other", "any")


class ContentionTable:
    def __init__(self, pairs: Iterable[tuple]):
        """`pairs`: (victim, other, priority, slowdown) or (victim, other, priority, slowdown, first)."""
        self.entries: dict[tuple[str, str, str, str], float] = {}
        for victim, other, prio, slowdown, *first in pairs:
            self.entries[(victim, other, prio, first[0] if first else "any")] = float(slowdown)
        self._cache: dict[tuple[str, str, int, int, str], float] = {}

    def factor(self, victim: str, other: str, victim_priority: int = 0, other_priority: int = 0,
               first: str = "any") -> float:
        key = (victim, other, victim_priority, other_priority, first)
        f = self._cache.get(key)
        if f is None:
            rel, e = relation(victim_priority, other_priority), self.entries
            f = next((e[k] for k in ((victim, other, rel, first), (victim, other, rel, "any"),
                                     (victim, other, "any", first), (victim, other, "any", "any")) if k in e), 1.0)
            self._cache[key] = f
        return f

    def slowdown(self, victim: str, others: Iterable[str], victim_priority: int = 0,
                 other_priorities: Iterable[int] | None = None) -> float:
        others = list(others)
        prios = list(other_priorities) if other_priorities is not None else [0] * len(others)
        return 1.0 + sum(self.factor(victim, o, victim_priority, p) - 1.0 for o, p in zip(others, prios))
