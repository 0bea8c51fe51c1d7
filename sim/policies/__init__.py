"""Scheduling policies, written once against the Runtime protocol (no SimPy inside).

`build(scenario, jobs, solo)` returns one policy generator factory per rank. Each policy
module registers itself in POLICIES: name -> builder.
"""

from __future__ import annotations

from collections.abc import Callable

from sim.policies.common import PolicyContext, RankPolicy
from sim.policies.generative import build_gen_interleaved, build_gen_intra_op, build_gen_pipeline
from sim.policies.interleaved import build_interleaved
from sim.policies.intra_op import build_intra_op
from sim.policies.pipeline import build_pipeline

POLICIES: dict[str, Callable[[PolicyContext], list[RankPolicy]]] = {
    "intra_op": build_intra_op,
    "in_order": build_intra_op,
    "inter_op": build_pipeline,
    "hybrid": build_pipeline,
    "interleaved": build_interleaved,
}
GENERATIVE: dict[str, Callable[[PolicyContext], list[RankPolicy]]] = {
    "intra_op": build_gen_intra_op,
    "in_order": build_gen_intra_op,
    "inter_op": build_gen_pipeline,
    "hybrid": build_gen_pipeline,
    "interleaved": build_gen_interleaved,
}


def build(ctx: PolicyContext) -> list[RankPolicy]:
    table = GENERATIVE if ctx.serving is not None and ctx.serving.mode == "generative" else POLICIES
    return table[ctx.policy.name](ctx)


__all__ = ["POLICIES", "PolicyContext", "build"]
