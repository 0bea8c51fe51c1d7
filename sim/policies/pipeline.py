"""`inter_op` (pipeline, tp = 1) and `hybrid` (TP groups inside pipeline stages).

Layers are cut into `pp` contiguous stages balanced by cost, not by count: the first stage
also embeds and the last also runs the LM head, so the partition minimises the slowest
stage's profiled time at the workload's typical job shape (linear partition by dynamic
programming). Each rank has a compute stream and two communication streams (receive, send); activations go
from each TP rank of a stage to the same TP rank of the next with P2P send/recv on the
communication streams, so a stage computes job j+1 while job j's activations travel.
Several jobs are in flight on different stages; with `microbatches` > 1 a job's batch is
cut into that many micro-batches that flow through the pipeline one after another.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.kernels import Kernel, collective
from sim.policies.common import PolicyContext, RankPolicy, after, launch_steps
from sim.runtime import PolicyGen, Runtime


@dataclass(frozen=True)
class Stage:
    index: int
    layers: range
    ranks: tuple[int, ...]


def partition(costs: list[float] | list[list[float]], parts: int) -> list[range]:
    """Cut the layers into `parts` contiguous ranges minimising the largest range's cost. `costs`
    is each layer's cost, or, per stage, each layer's cost on that stage's GPUs (on a topology
    whose links differ, one TP group's all-reduce is slower than another's)."""
    rows = np.asarray(costs, dtype=float)
    rows = np.broadcast_to(rows, (parts, rows.shape[-1])) if rows.ndim == 1 else rows
    n = rows.shape[1]
    if parts > n:
        raise ValueError(f"cannot cut {n} layers into {parts} stages")
    prefix = np.concatenate([np.zeros((parts, 1)), np.cumsum(rows, axis=1)], axis=1)
    inf = float("inf")
    best = np.full((parts + 1, n + 1), inf)
    cut = np.zeros((parts + 1, n + 1), dtype=int)
    best[0, 0] = 0.0
    for p in range(1, parts + 1):
        pre = prefix[p - 1]
        for j in range(p, n - parts + p + 1):
            for i in range(p - 1, j):
                v = max(best[p - 1, i], pre[j] - pre[i])
                if v < best[p, j]:
                    best[p, j], cut[p, j] = v, i
    bounds, j = [], n
    for p in range(parts, 0, -1):
        i = cut[p, j]
        bounds.append(range(i, j))
        j = i
    return bounds[::-1]


def stages(ctx: PolicyContext, tp: int, pp: int) -> list[Stage]:
    m = ctx.model
    jobs = ctx.typical_jobs or ctx.jobs  # one partition for every replica, from the whole workload
    batch = int(round(np.median([j.batch for j in jobs])))
    seq = int(round(np.median([j.seq_len for j in jobs])))
    groups = [tuple(range(ctx.base + s * tp, ctx.base + (s + 1) * tp)) for s in range(pp)]
    layers = [ctx.steps(tp, batch, seq, range(layer, layer + 1), first=layer == 0, last=layer == m.layers - 1)
              for layer in range(m.layers)]
    costs = [[sum(ctx.spec_solo(st.spec, group if st.spec.is_collective else None) for st in steps)
              for steps in layers] for group in groups]  # a stage's all-reduces run over its own GPUs
    cuts = partition(costs, pp)
    return [Stage(s, cuts[s], groups[s]) for s in range(pp)]


def micro_batches(batch: int, parts: int) -> list[int]:
    parts = max(1, min(parts, batch))
    return [batch // parts + (1 if i < batch % parts else 0) for i in range(parts)]


def build_pipeline(ctx: PolicyContext) -> list[RankPolicy]:
    pol = ctx.policy
    tp = pol.tp or 1
    pp = pol.pp or ctx.world // tp
    stage_list = stages(ctx, tp, pp)
    dtype = ctx.model.dtype_bytes

    def make(stage: Stage, local: int) -> RankPolicy:
        group = stage.ranks
        prev_rank = stage_list[stage.index - 1].ranks[local] if stage.index > 0 else None
        next_rank = stage_list[stage.index + 1].ranks[local] if stage.index < pp - 1 else None
        first, last = stage.index == 0, stage.index == pp - 1

        def run(rt: Runtime) -> PolicyGen:
            compute = rt.new_stream(0)
            inbox = rt.new_stream(0)  # receives, so job j+1 arrives while job j computes
            outbox = rt.new_stream(0)  # sends
            for job in ctx.jobs:
                yield rt.sleep_until(job.arrival_s)
                for mb in micro_batches(job.batch, pol.microbatches):
                    nbytes = mb * job.seq_len * ctx.model.hidden * dtype
                    if prev_rank is not None:
                        recv = collective("recv", "recv_activations", nbytes)
                        rt.launch(Kernel(recv, rt.rank, job.request_id, stage.layers.start,
                                         tuple(sorted((prev_rank, rt.rank)))), inbox)
                        after(rt, inbox, compute)
                    steps = ctx.steps(tp, mb, job.seq_len, stage.layers, first=first, last=last)
                    launch_steps(rt, steps, compute, job.request_id, group)
                    if next_rank is not None:
                        after(rt, compute, outbox)
                        send = collective("send", "send_activations", nbytes)
                        rt.launch(Kernel(send, rt.rank, job.request_id, stage.layers.stop - 1,
                                         tuple(sorted((rt.rank, next_rank)))), outbox)

        return run

    policies: list[RankPolicy] = [None] * ctx.world  # type: ignore[list-item]
    for stage in stage_list:
        for local, rank in enumerate(stage.ranks):
            policies[rank - ctx.base] = make(stage, local)
    return policies
