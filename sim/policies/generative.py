"""Generative serving under each policy: iterations of continuous batching (sim.serving)
launched as the policy launches jobs.

- `intra_op`: tensor parallel, one batch; each iteration is launched whole and the host
  syncs on its end before batching the next (it needs the sampled tokens).
- `interleaved`: `serving.groups` batch groups; each group's current iteration is a job of
  Liger's planner, so one group's all-reduces overlap another group's compute under the
  same budget, contention and decomposition rules; a group's next iteration is batched once
  the host knows its previous one ended.
- `inter_op` / `hybrid`: pipeline stages with micro-batch groups (`serving.groups`, at
  least `pp`) so every stage stays busy; the last stage returns the sampled tokens to the
  first with a P2P send, and the first stage's host, which batches, syncs on it. The other
  stages follow the first stage's batching decisions (in a real system it sends them, as
  vLLM's driver does); their hosts poll for the next decision, backing off from `POLL_S` to
  `POLL_MAX_S` (they learn of a decision at most that late, well before the activations
  it concerns arrive from the previous stage). The first stage's other TP ranks first wait,
  as the leader does, for the sampled tokens the decision needs, so they poll only from then
  on and join the iteration's first all-reduce about `POLL_S` after the leader.
"""

from __future__ import annotations

from sim.kernels import Kernel, collective
from sim.layers import epilogue_kernels, prologue_kernels
from sim.policies.common import (
    LayeredKernels,
    PolicyContext,
    RankPolicy,
    after,
    launch_layered,
    routed_on_arrival,
)
from sim.policies.interleaved import JobState, build_interleaved, pending_queue
from sim.policies.pipeline import stages
from sim.runtime import PolicyGen, Runtime
from sim.serving import BatchScheduler, Iteration, iteration_kernels

POLL_S, POLL_MAX_S = 5e-6, 200e-6  # a follower host looks for the next decision with backoff


def iteration_layered(ctx: PolicyContext, tp: int, it: Iteration, layers: range | None = None,
                      first: bool = True, last: bool = True) -> LayeredKernels:
    """An iteration's kernels (of the `layers` one pipeline stage holds), in launch order."""
    m = ctx.model
    layers = range(m.layers) if layers is None else layers
    head = prologue_kernels(m, tp, 1, it.tokens) if first else []
    tail = epilogue_kernels(m, tp, len(it.emits), 1) if last and it.emits else []
    return LayeredKernels(head, iteration_kernels(m, tp, it), layers, tail, m.layers)


class IterationPlan:
    """Batching decisions made once and shared by every rank, in order."""

    def __init__(self, sched: BatchScheduler):
        self.sched = sched
        self.items: list[Iteration | float | None] = []  # an iteration, a time to sleep to, or the end

    def next(self, i: int, now: float, group: int = 0) -> Iteration | float | None:
        while len(self.items) <= i:
            if self.items and isinstance(self.items[-1], Iteration):
                self.sched.complete(self.items[-1], now)
            it = self.sched.plan(now, group) if not self.sched.done() else None
            if it is not None:
                self.items.append(it)
            elif self.sched.done():
                self.items.append(None)
            else:
                t = self.sched.next_arrival()
                self.items.append(max(t, now) if t is not None else None)
        return self.items[i]


def build_gen_intra_op(ctx: PolicyContext) -> list[RankPolicy]:
    plan = IterationPlan(ctx.scheduler)
    group = ctx.ranks
    routed = routed_on_arrival(ctx)

    def run(rt: Runtime) -> PolicyGen:
        stream = rt.new_stream(0)
        done = rt.new_event()
        i = 0
        while True:
            if routed:
                yield rt.catch_up()
            item = plan.next(i, rt.now())
            i += 1
            if item is None:
                return
            if isinstance(item, float):
                yield rt.sleep_until(item)
                continue
            launch_layered(rt, iteration_layered(ctx, ctx.world, item), stream, item.index, group)
            rt.record(done, stream)
            yield rt.sync(done)

    return [run] * ctx.world


class IterationSource:
    """Feeds Liger's planner with batch groups' iterations instead of independent jobs."""

    def __init__(self, ctx: PolicyContext, groups: int):
        self.ctx, self.sched, self.groups = ctx, ctx.scheduler, groups
        self.busy: dict[int, Iteration] = {}  # group -> iteration not yet known to be complete
        self.by_index: dict[int, Iteration] = {}

    def admit(self, now: float, room: int) -> list[JobState]:
        out = []
        for g in range(self.groups):
            if g in self.busy or len(out) >= room or not self.sched.group_has_work(g, now):
                continue
            it = self.sched.plan(now, g)
            if it is None:
                continue
            self.busy[g] = self.by_index[it.index] = it
            out.append(JobState(it.index, now, pending_queue(*iteration_layered(self.ctx, self.ctx.world, it).flat())))
        return out

    def next_arrival(self) -> float | None:
        return None if self.sched.done() else self.sched.next_arrival()

    def confirm(self, job: JobState, now: float) -> None:
        it = self.by_index.pop(job.request_id)
        self.sched.complete(it, now)
        del self.busy[it.group]


def build_gen_interleaved(ctx: PolicyContext) -> list[RankPolicy]:
    groups = ctx.serving.groups
    return build_interleaved(ctx, IterationSource(ctx, groups), depth=groups)


def build_gen_pipeline(ctx: PolicyContext) -> list[RankPolicy]:
    pol = ctx.policy
    tp = pol.tp or 1
    pp = pol.pp or ctx.world // tp
    groups = max(ctx.serving.groups, pp)
    stage_list = stages(ctx, tp, pp)
    sched = ctx.scheduler
    decided: list[Iteration | float | None] = []  # the batching decisions, in order (SKIP: none now)
    dtype, hidden = ctx.model.dtype_bytes, ctx.model.hidden
    skip = -1.0
    routed = routed_on_arrival(ctx)

    def next_decision(rt: Runtime, i: int):
        """Decision i (an iteration, a time to sleep until, or None: the end), once the leader
        has made it; a follower polls with backoff."""
        poll = POLL_S
        while len(decided) <= i:
            yield rt.sleep_until(rt.now() + poll)
            poll = min(2 * poll, POLL_MAX_S)
        return decided[i]

    def decide(rt: Runtime, state: dict) -> PolicyGen:
        """The first stage's first rank: batch group g once its tokens are back."""
        g, busy = state["g"], state["busy"]
        it, ev = busy.pop(g) if g in busy else (None, None)
        if ev is not None:
            yield rt.sync(ev)
        if routed:
            yield rt.catch_up()
        if it is not None:
            sched.complete(it, rt.now())
        now = rt.now()
        it = sched.plan(now, g) if sched.group_has_work(g, now) else None
        others = any(x != g and sched.group_has_work(x, now) for x in range(groups))
        if it is not None:
            decided.append(it)
        elif busy or others:
            decided.append(skip)
        elif sched.done():
            decided.append(None)
        else:
            t = sched.next_arrival()
            decided.append(max(t, now) if t is not None else None)
            return
        state["g"] = (g + 1) % groups

    def first_stage(rt: Runtime, stage, local: int) -> PolicyGen:
        compute, inbox, outbox = rt.new_stream(0), rt.new_stream(0), rt.new_stream(0)
        nxt = stage_list[1].ranks[local] if pp > 1 else None
        tail = stage_list[-1].ranks[local]
        state: dict = {"g": 0, "busy": {}}
        i = 0
        while True:
            if local == 0:
                yield from decide(rt, state)
            elif state["g"] in state["busy"]:  # the tokens the leader is waiting for: its decision follows
                yield rt.sync(state["busy"].pop(state["g"])[1])
            item = yield from next_decision(rt, i)
            i += 1
            if local != 0 and (isinstance(item, Iteration) or item == skip):
                state["g"] = (state["g"] + 1) % groups  # the group the leader decides next, as `decide` counts
            if item is None:
                return
            if isinstance(item, float):
                if item != skip:  # an arrival to wait for: the followers too, then look for its batch
                    yield rt.sleep_until(item)
                continue
            launch_layered(rt, iteration_layered(ctx, tp, item, stage.layers, first=True, last=pp == 1),
                         compute, item.index, stage.ranks)
            back = rt.new_event()
            if nxt is None:
                rt.record(back, compute)
            else:
                after(rt, compute, outbox)
                rt.launch(Kernel(collective("send", "send_activations", item.tokens * hidden * dtype), rt.rank,
                                 item.index, stage.layers.stop - 1, (rt.rank, nxt)), outbox)
                rt.launch(Kernel(collective("recv", "recv_tokens", 4 * max(1, len(item.emits))), rt.rank,
                                 item.index, -1, (tail, rt.rank)), inbox)
                rt.record(back, inbox)
            state["busy"][item.group] = (item, back)

    def later_stage(rt: Runtime, stage, local: int) -> PolicyGen:
        compute, inbox, outbox = rt.new_stream(0), rt.new_stream(0), rt.new_stream(0)
        prev = stage_list[stage.index - 1].ranks[local]
        last = stage.index == pp - 1
        to = stage_list[0].ranks[local] if last else stage_list[stage.index + 1].ranks[local]
        i = 0
        while True:
            item = yield from next_decision(rt, i)
            i += 1
            if item is None:
                return
            if isinstance(item, float):
                if item != skip:  # an arrival: look for its batch from then on
                    yield rt.sleep_until(item)
                continue
            nbytes = item.tokens * hidden * dtype
            rt.launch(Kernel(collective("recv", "recv_activations", nbytes), rt.rank, item.index,
                             stage.layers.start, (prev, rt.rank)), inbox)
            after(rt, inbox, compute)
            launch_layered(rt, iteration_layered(ctx, tp, item, stage.layers, first=False, last=last),
                         compute, item.index, stage.ranks)
            after(rt, compute, outbox)
            out = (collective("send", "send_tokens", 4 * max(1, len(item.emits))) if last
                   else collective("send", "send_activations", nbytes))
            rt.launch(Kernel(out, rt.rank, item.index, stage.layers.stop - 1, (rt.rank, to)), outbox)

    def bind(fn, stage, local: int) -> RankPolicy:
        return lambda rt: fn(rt, stage, local)

    policies: list[RankPolicy] = [None] * ctx.world  # type: ignore[list-item]
    for stage in stage_list:
        for local, rank in enumerate(stage.ranks):
            policies[rank - ctx.base] = bind(first_stage if stage.index == 0 else later_stage, stage, local)
    return policies
