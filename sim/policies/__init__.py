"""Scheduling policies, written once against the Runtime protocol (no SimPy inside).

`build(scenario, jobs, solo)` returns one policy generator factory per rank. Each policy
module registers itself in POLICIES: name -> builder.
"""

from __future__ import annotations

from collections.abc import Callable

from sim.policies.common import PolicyContext, RankPolicy
from sim.policies.in_order import build_in_order

POLICIES: dict[str, Callable[[PolicyContext], list[RankPolicy]]] = {
    "in_order": build_in_order,
}


def build(ctx: PolicyContext) -> list[RankPolicy]:
    return POLICIES[ctx.policy.name](ctx)


__all__ = ["POLICIES", "PolicyContext", "build"]
