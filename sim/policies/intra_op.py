"""`intra_op` (alias `in_order`): tensor parallel over all GPUs, one stream, FIFO jobs.

Each job's kernels are launched once the job has arrived and the previous job has
completed (the host syncs on the job's last kernel, as a serving loop returning results
does): communication blocks compute, nothing of two jobs overlaps.
"""

from __future__ import annotations

from sim.policies.common import PolicyContext, RankPolicy, launch_steps
from sim.runtime import PolicyGen, Runtime


def build_intra_op(ctx: PolicyContext) -> list[RankPolicy]:
    group = ctx.ranks

    def run(rt: Runtime) -> PolicyGen:
        stream = rt.new_stream(0)
        done = rt.new_event()
        for job in ctx.jobs:
            yield rt.sleep_until(job.arrival_s)
            launch_steps(rt, ctx.steps(ctx.world, job.batch, job.seq_len), stream, job.request_id, group)
            rt.record(done, stream)
            yield rt.sync(done)

    return [run] * ctx.world
