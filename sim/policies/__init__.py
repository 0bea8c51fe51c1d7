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


# The scenario fields each policy reads beyond the model, hardware and workload (encoder-style
# jobs, then generative serving): a sweep varying another one would draw identical lines.
KNOBS: dict[str, tuple[str, ...]] = {
    "intra_op": (), "in_order": (), "inter_op": ("policy.microbatches",), "hybrid": ("policy.microbatches",),
    "interleaved": ("policy.depth", "policy.split", "policy.split_collectives", "policy.contention"),
}
GENERATIVE_KNOBS: dict[str, tuple[str, ...]] = {
    "intra_op": ("policy.prefill_replicas", "policy.prefill_tp", "policy.kv_transfer"),
    "in_order": ("policy.prefill_replicas", "policy.prefill_tp", "policy.kv_transfer"),
    "inter_op": ("serving.groups", "serving.pipeline_admission"), "hybrid": ("serving.groups", "serving.pipeline_admission"),
    "interleaved": ("serving.groups", "policy.split", "policy.split_collectives", "policy.contention"),
}
POLICY_FIELDS = ("policy.depth", "policy.split", "policy.split_collectives", "policy.contention",
                 "policy.microbatches", "policy.prefill_replicas", "policy.prefill_tp", "policy.kv_transfer", "serving.groups",
                 "serving.pipeline_admission")  # the fields some policy reads and another not


def reads(policy: str, key: str, generative: bool) -> bool:
    """Whether `policy` reads the scenario field `key` (a field outside POLICY_FIELDS, or a policy
    this table does not know, counts as read: the schema judges those)."""
    table = GENERATIVE_KNOBS if generative else KNOBS
    if key not in POLICY_FIELDS or policy not in table:
        return True
    return key in table[policy]


def build(ctx: PolicyContext) -> list[RankPolicy]:
    table = GENERATIVE if ctx.serving is not None and ctx.serving.mode == "generative" else POLICIES
    return table[ctx.policy.name](ctx)


__all__ = ["POLICIES", "KNOBS", "GENERATIVE_KNOBS", "PolicyContext", "build", "reads"]
