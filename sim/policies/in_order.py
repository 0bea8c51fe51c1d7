"""The plain in-order policy: one stream per GPU, jobs one after another, tensor parallel.

Each job's kernels are launched as soon as the job has arrived and the previous job has
completed (the host syncs on the job's last kernel, as a serving loop returning results
does). With `tp` = all GPUs this is the `intra_op` baseline without its later refinements.
"""

from __future__ import annotations

from sim.policies.common import PolicyContext, RankPolicy, launch_layer
from sim.runtime import PolicyGen, Runtime


def build_in_order(ctx: PolicyContext) -> list[RankPolicy]:
    group = tuple(range(ctx.world))
    layers = ctx.model.layers

    def run(rt: Runtime) -> PolicyGen:
        stream = rt.new_stream(0)
        done = rt.new_event()
        for job in ctx.jobs:
            yield rt.sleep_until(job.arrival_s)
            specs = ctx.layer(ctx.world, job.batch, job.seq_len)
            for layer in range(layers):
                launch_layer(rt, specs, stream, job.request_id, layer, group)
            rt.record(done, stream)
            yield rt.sync(done)

    return [run] * ctx.world
