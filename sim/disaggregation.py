"""Disaggregated serving: prefill replicas hand each request's KV cache to decode replicas.

DistServe (Zhong et al., OSDI'24) and Splitwise (Patel et al., ISCA'24) run a request's prefill
and its decode on different GPUs, so that a long prompt never stalls the decodes batched beside
it, at the price of moving the prompt's KV cache and of GPUs that each serve one phase. Here the
first `policy.prefill_replicas` of the `policy.dp` replicas only prefill: their schedulers batch
prompts (chunked or not) and emit each request's first token. The others only decode. Each phase
may have its own TP degree (`policy.prefill_tp`), as DistServe chooses them apart.

When a prefill iteration completes, the finished prompts queue, in order, for a decode replica:
each goes to the one with the lowest load (vLLM's data-parallel rule, `BatchScheduler.load`)
among those whose KV cache has room for it, which reserves its blocks. The prefill replica's GPUs
then push the KV heads each decode GPU holds (`kv_flows`: at one TP degree rank i to rank i) as
one `kv_push`: one-sided, by DMA, over the links between them and sharing them with other
transfers, from when the last sending rank issues its part. The decode replica decodes the
request once it has arrived, and the prefill replica frees its blocks then. A request no decode
replica has room for waits, holding its prefill blocks: the backpressure that stalls prefill when
decode is the bottleneck.

By default the KV cache moves after the whole prefill, as DistServe's decode instances pull it.
Over NVLink that push takes a few percent of the prefill, over a PCIe host bridge a good part of
it (README, "Prefill and decode on separate GPUs"). With `policy.kv_transfer: layerwise` it moves
layer by layer as it is computed (Splitwise, Mooncake): a request is placed on a decode replica
when its prefill starts (if one has room; else it falls back to the whole push), and goes on to
decode once its prefill has ended and its last layer's KV has arrived.
"""

from __future__ import annotations

import math
from collections import deque

from sim.kernels import Kernel, collective
from sim.layers import ModelShape
from sim.policies.common import LayeredKernels, PolicyContext, RankPolicy, after, launch_layered
from sim.policies.generative import iteration_layered
from sim.runtime import PolicyGen, Runtime
from sim.serving import BatchScheduler, Iteration, Seq

FOREVER = math.inf  # wait for a notice only


def kv_flows(m: ModelShape, tp_from: int, tp_to: int) -> tuple[list[tuple[int, int]], float]:
    """How a request's KV cache moves from a TP-`tp_from` replica to a TP-`tp_to` one (degrees that
    divide one another, `policy.prefill_tp`'s rule): the (sender, receiver) local ranks, each
    receiver getting every KV head it holds from a sender holding it, and the bytes per token of
    one flow (2 x layers x its heads x head_dim x bytes; every flow carries as many heads). With
    more ranks than KV heads, ranks hold copies: the c-th copy on the receiving side takes its head
    from the c-th copy on the sending side (modulo their number), so at one degree rank i sends
    to rank i and every sender works."""
    heads = m.kv_heads
    copies_from, copies_to = max(1, tp_from // heads), max(1, tp_to // heads)

    def held(tp: int, rank: int) -> range:
        first = rank * heads // tp
        return range(first, first + max(1, heads // tp))

    count: dict[tuple[int, int], int] = {}
    for j in range(tp_to):
        for h in held(tp_to, j):
            pair = (h * tp_from // heads + (j % copies_to) % copies_from, j)
            count[pair] = count.get(pair, 0) + 1
    if len(set(count.values())) > 1:  # degrees that do not divide one another: `_check_prefill_tp` refuses
        raise ValueError(f"TP {tp_from} -> {tp_to} over {heads} KV heads moves unequal flows")
    return sorted(count), 2.0 * m.layers * next(iter(count.values())) * m.head_dim * m.dtype_bytes


class Handoff:
    """The shared state of a disaggregated run: who holds each request and what is on its way.
    Plain Python read and changed by the hosts at their own times (each catches up with the
    simulated clock first) and by the engine when a push completes."""

    def __init__(self, prefill: list[PolicyContext], decode: list[PolicyContext]):
        self.prefill, self.decode = prefill, decode
        m = prefill[0].model
        # local (sender, receiver) ranks and the bytes per token each flow carries
        self.flows, self.kv_per_token = kv_flows(m, prefill[0].world, decode[0].world)
        self.senders = {i for i, _ in self.flows}
        for j in prefill[0].typical_jobs or []:  # every request must fit a decode replica's cache too
            decode[0].scheduler.check(j)
        self.queue: deque[tuple[int, Seq]] = deque()  # (prefill replica, request) awaiting room
        self.placed: list[list[tuple[int, int, int]]] = [[] for _ in prefill]  # (request, decode, bytes)
        self.owner: dict[int, tuple[int, int]] = {}  # request -> (prefill, decode) while its KV moves
        # a push's (group, seq) -> the requests whose KV it completes: a kernel's request_id names an
        # iteration in generative runs, and a push belongs to none (its time is not the iteration's)
        self.pushes: dict[tuple, list[int]] = {}
        # `policy.kv_transfer: layerwise`: requests placed when their prefill starts, pushed layer by
        # layer; a request goes on to decode once both its prefill has ended and its KV has arrived
        self.layerwise = prefill[0].policy.kv_transfer == "layerwise"
        self.per_layer = self.kv_per_token / m.layers
        self.streaming: set[int] = set()
        self.prefilled: set[int] = set()
        self.arrived: set[int] = set()
        self.notify = None  # set by `attach`: the engine's notice to a rank's host
        # request -> [prefilled, placed on a decode replica, KV arrived] (simulated s): the IR header's
        # `handoffs`, from which a run's summary tells transfer time from waiting for decode room
        self.times: dict[int, list[float]] = {}

    def attach(self, engine) -> None:
        engine.push_done = self.pushed
        self.notify = engine.notify

    # -------------------------------------------------------------- decisions
    def place(self, now: float, rt: Runtime) -> None:
        """Hand the queued prompts, oldest first, to decode replicas with room, and wake the
        prefill replicas that now have KV to push."""
        woken: set[int] = set()
        while self.queue:
            p, s = self.queue[0]
            order = sorted(range(len(self.decode)), key=lambda d: (self.decode[d].scheduler.load(), d))
            d = next((d for d in order if self.decode[d].scheduler.accept(s, now)), None)
            if d is None:
                break  # in order: the oldest waits for room, and so do the rest
            self.queue.popleft()
            self.owner[s.rid] = (p, d)
            self.times[s.rid][1] = now
            self.placed[p].append((s.rid, d, round(s.prompt * self.kv_per_token)))  # bytes per flow
            woken.add(p)
        for p in sorted(woken):
            for rank in self.prefill[p].ranks:
                rt.notify(rank)

    def place_early(self, p: int, s: Seq, now: float) -> bool:
        """`layerwise`: place a request whose prefill starts now on the decode replica with the
        lowest load that has room, unless older prompts wait for room (they go first)."""
        if self.queue:
            return False
        order = sorted(range(len(self.decode)), key=lambda d: (self.decode[d].scheduler.load(), d))
        d = next((d for d in order if self.decode[d].scheduler.accept(s, now)), None)
        if d is None:
            return False
        self.owner[s.rid] = (p, d)
        self.streaming.add(s.rid)
        self.times[s.rid] = [math.nan, now, math.nan]
        return True

    def layer_pushes(self, it: Iteration, p: int, now: float) -> dict[int, tuple[int, list[int]]]:
        """`layerwise`: what iteration `it` of prefill replica `p` pushes after each layer, per decode
        replica: (bytes per flow of one layer, the requests whose last chunk it carries)."""
        sched, out = self.prefill[p].scheduler, {}
        for rid, chunk, past in it.prefills:
            s = sched.seqs[rid]
            if past == 0 and s.output > 1 and rid not in self.owner:  # its prefill starts: place it if there is room
                self.place_early(p, s, now)
            if rid in self.streaming:
                d = self.owner[rid][1]
                nbytes, last = out.get(d, (0.0, []))
                out[d] = (nbytes + chunk * self.per_layer, last + [rid] * (past + chunk == s.target))
        return {d: (round(b), last) for d, (b, last) in out.items()}

    def pushed(self, kernel: Kernel, now: float) -> None:
        """The engine: a push has arrived (every TP rank's shard: one transfer); the requests whose
        KV it completes go on to decode once their prefill has ended."""
        for rid in self.pushes.pop((kernel.group, kernel.seq)):
            self.arrived.add(rid)
            self.times[rid][2] = now
            if rid in self.prefilled:
                self.go_on(rid, now)

    def go_on(self, rid: int, now: float) -> None:
        """Request `rid`'s prefill has ended and its KV has arrived: the prefill replica frees its
        blocks and the decode replica decodes it."""
        p, d = self.owner.pop(rid)
        self.prefilled.discard(rid)
        self.arrived.discard(rid)
        self.streaming.discard(rid)
        self.prefill[p].scheduler.release(rid, now)
        self.decode[d].scheduler.received(rid)
        for rank in self.decode[d].ranks + self.prefill[p].ranks:
            self.notify(rank)

    def hand_on(self, p: int, now: float) -> None:
        """What prefill replica `p` has just prefilled: queued in order for a decode replica, or, if
        it streams to one already, on to it once its KV has arrived."""
        sched = self.prefill[p].scheduler
        for s in sched.handed:
            self.prefilled.add(s.rid)
            if s.rid in self.streaming:
                self.times[s.rid][0] = now
                if s.rid in self.arrived:
                    self.go_on(s.rid, now)
            else:
                self.queue.append((p, s))
                self.times[s.rid] = [now, math.nan, math.nan]
        sched.handed.clear()

    def table(self) -> list[list[float]]:
        """[request, prefilled, placed, KV arrived] per handed-on request, for the IR header."""
        return [[rid, *t] for rid, t in sorted(self.times.items())]

    def wake_decoders(self, rt: Runtime) -> None:
        for ctx in self.decode:
            for rank in ctx.ranks:
                if rank != rt.rank:
                    rt.notify(rank)

    # -------------------------------------------------------------- ends
    def prefill_done(self, p: int) -> bool:
        sched = self.prefill[p].scheduler
        return sched.done() and not sched.handed and not self.placed[p] and all(q != p for q, _ in self.queue)

    def decode_done(self, d: int) -> bool:
        return (not self.queue and not self.owner and self.decode[d].scheduler.done()
                and all(self.prefill_done(p) for p in range(len(self.prefill))))


class PrefillPlan:
    """A prefill replica's decisions, made once and shared by its ranks in order: the KV pushes
    to issue, then an iteration, a time to wait until (or a notice), or the end (None)."""

    def __init__(self, handoff: Handoff, p: int):
        self.handoff, self.p = handoff, p
        self.sched: BatchScheduler = handoff.prefill[p].scheduler
        self.items: list[tuple[list[tuple[int, int, int]], Iteration | float | None, dict]] = []

    def next(self, i: int, rt: Runtime) -> tuple[list[tuple[int, int, int]], Iteration | float | None, dict]:
        """Decision i: KV pushes to issue now, then an iteration (with its `layerwise` pushes per
        decode replica, `Handoff.layer_pushes`), a time to wait until (or a notice), or the end."""
        ho, sched, now = self.handoff, self.sched, rt.now()
        while len(self.items) <= i:
            if self.items and isinstance(self.items[-1][1], Iteration):
                sched.complete(self.items[-1][1], now)
                ho.hand_on(self.p, now)
                ho.place(now, rt)
            pushes, ho.placed[self.p] = ho.placed[self.p], []
            it = sched.plan(now, 0)
            if it is None and ho.prefill_done(self.p):
                self.items.append((pushes, None, {}))
                continue
            if it is None:  # the next arrival, or (its blocks held by pushes, or none) a notice
                t = sched.next_arrival()
                self.items.append((pushes, t if t is not None and t > now else FOREVER, {}))
            else:
                self.items.append((pushes, it, ho.layer_pushes(it, self.p, now) if ho.layerwise else {}))
        return self.items[i]


class DecodePlan:
    """A decode replica's decisions, shared by its ranks: an iteration, a notice to wait for
    (KV arriving), or the end."""

    def __init__(self, handoff: Handoff, d: int):
        self.handoff, self.d = handoff, d
        self.sched: BatchScheduler = handoff.decode[d].scheduler
        self.items: list[Iteration | float | None] = []

    def next(self, i: int, rt: Runtime) -> tuple[tuple, Iteration | float | None, dict]:
        """Decision i (with no pushes: a decode replica has none to make)."""
        ho, sched, now = self.handoff, self.sched, rt.now()
        while len(self.items) <= i:
            if self.items and isinstance(self.items[-1], Iteration):
                sched.complete(self.items[-1], now)
                if ho.queue:  # blocks may have freed for a waiting prompt
                    ho.place(now, rt)
            it = sched.plan(now, 0)
            if it is None and ho.decode_done(self.d):
                self.items.append(None)
                ho.wake_decoders(rt)  # the others, idle and waiting for a notice, may be done too
            else:
                self.items.append(it if it is not None else FOREVER)
        return (), self.items[i], {}


def push_kv(rt: Runtime, ctx: PolicyContext, handoff: Handoff, pushes: list[tuple[int, int, int]],
            stream: int) -> None:
    """Launch this prefill rank's part of each placed request's KV push (after the iteration that
    computed it: the host synced on it). Every flow is one transfer, so a folded run (rank 0
    alone) still loads the links with every rank's flow."""
    for rid, d, nbytes in pushes:
        launch_push(rt, ctx, handoff, d, nbytes, [rid], stream)


def launch_push(rt: Runtime, ctx: PolicyContext, handoff: Handoff, d: int, nbytes: int, completes: list[int],
                stream: int, layer: int = -1) -> None:
    """One KV push of `nbytes` per flow to decode replica `d`, which completes the KV of the
    requests `completes`."""
    to = handoff.decode[d].base
    group = tuple(r for src, dst in handoff.flows for r in (ctx.base + src, to + dst))
    push = Kernel(collective("kv_push", "push_kv", nbytes), rt.rank, -1, layer, group)
    rt.launch(push, stream)
    handoff.pushes[(push.group, push.seq)] = completes


def launch_streaming(rt: Runtime, ctx: PolicyContext, handoff: Handoff, ks: LayeredKernels, index: int,
                     stream: dict[int, tuple[int, list[int]]], compute: int, kv_out: int) -> None:
    """`layerwise`: an iteration's kernels with, after each layer, its KV pushed on `kv_out` (which
    waits for that layer) to each decode replica its requests stream to. The last layer's push,
    which completes the requests whose last chunk this is, waits for the whole iteration: a request
    decodes once its first token is out, and so it cannot go on before every sending rank is done
    (a rank that sends nothing may finish, and hand requests on, first)."""
    last = ks.layers.stop - 1
    for layer, specs in ks.parts():
        for spec in specs:
            rt.launch(Kernel(spec, rt.rank, index, layer, ctx.ranks if spec.is_collective else None), compute)
        if ks.layers.start <= layer < last:
            after(rt, compute, kv_out)
            for d, (nbytes, _) in stream.items():
                launch_push(rt, ctx, handoff, d, nbytes, [], kv_out, layer)
    after(rt, compute, kv_out)
    for d, (nbytes, done) in stream.items():
        launch_push(rt, ctx, handoff, d, nbytes, done, kv_out, last)


def build_replica(ctx: PolicyContext, handoff: Handoff, plan: PrefillPlan | DecodePlan) -> list[RankPolicy]:
    """Every rank of a prefill or decode replica: catch up with the clock, take decision i from
    the replica's plan, push what it says (a prefill rank holding KV heads to send), and run an
    iteration, wait for a notice or a time, or end."""
    prefill = isinstance(plan, PrefillPlan)

    def run(rt: Runtime) -> PolicyGen:
        compute = rt.new_stream(0)
        kv_out = rt.new_stream(0) if prefill else -1
        sender = prefill and rt.rank - ctx.base in handoff.senders  # else its heads come from a copy
        done = rt.new_event()
        i = 0
        while True:
            yield rt.catch_up()
            pushes, item, stream = plan.next(i, rt)
            i += 1
            if pushes and sender:
                push_kv(rt, ctx, handoff, pushes, kv_out)
            if item is None:
                return
            if isinstance(item, float):
                yield rt.wait_notify(item)
                continue
            ks = iteration_layered(ctx, ctx.world, item)
            if stream and sender:
                launch_streaming(rt, ctx, handoff, ks, item.index, stream, compute, kv_out)
            else:
                launch_layered(rt, ks, compute, item.index, ctx.ranks)
            rt.record(done, compute)
            yield rt.sync(done)

    return [run] * ctx.world
