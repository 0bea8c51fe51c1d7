"""`interleaved`: the Liger runtime (Du et al., PPoPP 2024), tensor parallel.

Up to `depth` jobs are in flight. Each GPU has a high-priority main stream and a normal
sub stream. Round by round, the host

1. blocks until the main stream has started the last kernel of the previous segment
   (CPU–GPU synchronisation on an event recorded just before that kernel),
2. makes the sub stream wait for the end of the previous main segment,
3. launches the oldest job's next segment (a maximal run of compute, or of communication,
   kernels) on the main stream,
4. sums the segment's profiled solo durations into a time budget, scaled by the contention
   factor (`contention: 0.8` as Liger's artifact; `contention: table` divides each fill
   kernel's cost by the table's slowdown instead),
5. fills the sub stream with kernels of the *opposite* type from the other in-flight jobs,
   oldest first, until the budget is spent; a GEMM that does not fit is split along N into
   the largest k/`split` of its columns whose profiled time fits, the rest staying queued.
   Liger splits only GEMMs; `split_collectives: true` also splits an all-reduce into
   all-reduces of k/`split` of its payload, so communication can fill compute segments.

A job's kernels go to the sub stream only before it becomes the oldest; when it does,
the main stream first waits for its last sub-stream kernel. Every rank must issue the same
collectives in the same order, so each round is planned once and shared by all ranks
(on real multi-GPU hardware rank 0 plans and broadcasts; in the simulator the first rank
to reach a round plans it at its host time).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sim.kernels import Kernel, KernelSpec, split_collective, split_gemm
from sim.policies.common import PolicyContext, RankPolicy, Step, routed_on_arrival
from sim.runtime import PolicyGen, Runtime

MAIN_PRIORITY, SUB_PRIORITY = -1, 0


# A job's not-yet-launched kernel: (spec, layer, parent), `parent` the index of the original
# kernel within its job (it links the pieces of one split GEMM). Plain tuples: a generative
# iteration of an 80-layer model queues ~1,000 of them, built by one `zip` (`pending_queue`).
Pending = tuple[KernelSpec, int, int]


@dataclass
class JobState:
    request_id: int
    arrival_s: float
    queue: deque[Pending]
    on_sub: bool = False  # has kernels on the sub stream that the main stream must wait for


# A kernel a round launches: (spec, request_id, layer, parent), `parent` the job-local index
# of the GEMM it is a piece of (-1 when not a piece). A tuple, like `Pending`: one per kernel.
Launch = tuple[KernelSpec, int, int, int]


@dataclass
class Round:
    sleep_until: float | None = None
    drain: bool = False  # the host waits for the end of the last main segment
    main: list[Launch] = field(default_factory=list)
    main_request: int = -1
    main_waits_sub: bool = False
    main_last: bool = False  # the main segment ends its job (the host may forget the job's events)
    fills: list[Launch] = field(default_factory=list)
    budget_s: float = 0.0


SPLIT_MEMO_MAX = 100_000


COMM = "collective"  # the class of every collective kind an interleaved job runs (`kv_push`, a copy, is none)


def pending_queue(specs: list[KernelSpec], layers: list[int]) -> deque[Pending]:
    """A job's kernels, in order, as its planner queue."""
    return deque(zip(specs, layers, range(len(specs))))


class EncoderJobs:
    """Jobs of the encoder setting: admitted in arrival order once they have arrived."""

    def __init__(self, ctx: PolicyContext):
        self.ctx = ctx
        self.waiting = deque(ctx.jobs)
        self._flat: dict[tuple[int, int], tuple[list[KernelSpec], list[int]]] = {}  # (batch, seq) -> kernels

    def admit(self, now: float, room: int) -> list[JobState]:
        out = []
        while self.waiting and len(out) < room and self.waiting[0].arrival_s <= now:
            job = self.waiting.popleft()
            key = (job.batch, job.seq_len)
            flat = self._flat.get(key)
            if flat is None:
                steps: list[Step] = self.ctx.steps(self.ctx.world, job.batch, job.seq_len)
                flat = self._flat[key] = ([st.spec for st in steps], [st.layer for st in steps])
            out.append(JobState(job.request_id, job.arrival_s, pending_queue(*flat)))
        return out

    def next_arrival(self) -> float | None:
        return self.waiting[0].arrival_s if self.waiting else None

    def confirm(self, job: JobState, now: float) -> None:
        """`job` has completed on the GPU and the host knows it at `now` (nothing to do here)."""


class Planner:
    """Plans rounds once, for every rank, in round order.

    A job whose last segment went to the main stream in main round k is known to be
    complete once the host has synced on the start of the last kernel of a later main
    round (the main stream is FIFO), or after a drain round; sources that must know when
    their jobs end (generative iterations produce the tokens of the next) hear it then.
    """

    def __init__(self, ctx: PolicyContext, depth: int, split: int, contention: float | str,
                 split_collectives: bool = False, source=None):
        self.ctx = ctx
        self.depth, self.split, self.contention = depth, split, contention
        self.splitters = splitters(split_collectives)
        self.group = ctx.ranks
        self.source = source or EncoderJobs(ctx)
        self.inflight: list[JobState] = []
        self.rounds: deque[Round | None] = deque()  # planned rounds from index `_base` on
        self._base = 0
        self._pos: dict[int, int] = {}  # rank -> the last round it fetched
        self.main_rounds = 0
        self.finishing: list[tuple[JobState, int]] = []  # (job, main round of its last segment)
        self._splits: dict[tuple[int, int], tuple[KernelSpec, KernelSpec, KernelSpec]] = {}
        self._solos: dict[KernelSpec, float] = {}  # KernelSpec hashes by identity

    def get(self, i: int, now: float, rank: int = 0) -> Round | None:
        """Round `i` (planned now if no rank has asked for it yet). Rounds every active rank has
        fetched are dropped, so a long run does not keep millions of them."""
        while self._base + len(self.rounds) <= i:
            self.rounds.append(self._plan(now))
        rnd = self.rounds[i - self._base]
        active = self.ctx.active_ranks
        if active:
            self._pos[rank] = i
            if len(self._pos) >= active:
                low = min(self._pos.values())
                while self._base < low and len(self.rounds) > 1:
                    self.rounds.popleft()
                    self._base += 1
        return rnd

    def _solo(self, spec: KernelSpec) -> float:
        """The cost model's solo time, memoised here by spec object (asked for several times a
        kernel: budget, fill cost, pieces); bounded, as a long run keeps making specs."""
        t = self._solos.get(spec)
        if t is None:
            if len(self._solos) >= SPLIT_MEMO_MAX:
                self._solos.clear()
            t = self._solos[spec] = self.ctx.spec_solo(spec, self.group if spec.cls == COMM else None)
        return t

    def _confirm(self, now: float) -> None:
        last = self.rounds[-1] if self.rounds else None
        if last is None:
            return
        upto = self.main_rounds if last.drain else self.main_rounds - 1
        for job, _k in [f for f in self.finishing if f[1] < upto]:
            self.source.confirm(job, now)
        self.finishing = [f for f in self.finishing if f[1] >= upto]

    def _plan(self, now: float) -> Round | None:
        self._confirm(now)
        self.inflight.extend(self.source.admit(now, self.depth - len(self.inflight)))
        if not self.inflight:
            if self.finishing:
                return Round(drain=True)
            t = self.source.next_arrival()
            return None if t is None else Round(sleep_until=max(t, now))
        oldest = self.inflight[0]
        rnd = Round(main_request=oldest.request_id, main_waits_sub=oldest.on_sub)
        oldest.on_sub = False
        q, rid, main = oldest.queue, oldest.request_id, rnd.main
        comm = q[0][0].cls == COMM
        while q and (q[0][0].cls == COMM) == comm:
            spec, layer, parent = q.popleft()
            main.append((spec, rid, layer, -1 if spec.fraction == 1.0 else parent))
        solo = self._solo
        solos = [solo(x[0]) for x in main]
        main_solo = sum(solos)
        main_cls = main[solos.index(max(solos))][0].cls
        scalar = isinstance(self.contention, float)
        budget = main_solo * (self.contention if scalar else 1.0)
        rnd.budget_s = budget
        if not oldest.queue:
            self.inflight.pop(0)
            self.finishing.append((oldest, self.main_rounds))
            rnd.main_last = True
        self.main_rounds += 1
        self._fill(rnd, not comm, budget, main_cls, scalar)
        return rnd

    def _cost(self, spec: KernelSpec, main_cls: str, scalar: bool) -> float:
        t = self._solo(spec)
        if not scalar:
            t *= self.ctx.contention.factor(spec.cls, main_cls, SUB_PRIORITY, MAIN_PRIORITY)
        return t

    def _fill(self, rnd: Round, want_comm: bool, budget: float, main_cls: str, scalar: bool) -> None:
        left = budget
        for job in self.inflight:
            if job.request_id == rnd.main_request:
                continue
            q = job.queue
            while len(q) > 1 and (q[0][0].cls == COMM) == want_comm:  # a job's last kernel stays for main
                spec, layer, parent = q[0]
                t = self._cost(spec, main_cls, scalar)
                if t <= left:
                    q.popleft()
                    left -= t
                    rnd.fills.append((spec, job.request_id, layer, -1 if spec.fraction == 1.0 else parent))
                    job.on_sub = True
                    continue
                piece = self._largest_piece(spec, left, main_cls, scalar)
                if piece is not None:
                    head, rest = piece
                    q[0] = (rest, layer, parent)
                    left -= self._cost(head, main_cls, scalar)
                    rnd.fills.append((head, job.request_id, layer, parent))
                    job.on_sub = True
                return  # the budget is spent: nothing further fits in order

    def _largest_piece(self, spec: KernelSpec, left: float, main_cls: str,
                       scalar: bool) -> tuple[KernelSpec, KernelSpec] | None:
        splitter = self.splitters.get(spec.kind)
        if self.split <= 1 or splitter is None:
            return None
        have = round(spec.fraction * self.split)  # eighths (for split 8) still queued
        for k in range(have - 1, 0, -1):
            head, rest = self._split(splitter, spec, k)
            if self._cost(head, main_cls, scalar) <= left:
                return head, rest
        return None

    def _split(self, splitter, spec: KernelSpec, k: int) -> tuple[KernelSpec, KernelSpec]:
        """`splitter(spec, k / split)`, memoised: every layer splits the same spec objects the same
        ways, so their pieces (and the cost model's cached times for them) are made once."""
        key = (id(spec), k)
        hit = self._splits.get(key)
        if hit is None:
            if len(self._splits) >= SPLIT_MEMO_MAX:
                self._splits.clear()
            hit = self._splits[key] = (*splitter(spec, k / self.split), spec)  # keeps spec alive: ids stay unique
        return hit[0], hit[1]


def splitters(split_collectives: bool) -> dict[str, Callable[[KernelSpec, float], tuple[KernelSpec, KernelSpec]]]:
    """Which kernel kinds the planner may split, and how: GEMMs along N (Liger), all-reduces
    along their payload when `split_collectives` is on."""
    out = {"gemm": split_gemm}
    if split_collectives:
        out["all_reduce"] = split_collective
    return out


def possible_pieces(spec: KernelSpec, split: int, split_collectives: bool = False) -> list[KernelSpec]:
    """Every piece the planner can cut from the whole kernel `spec`: the span [a/split, b/split)
    of its columns (or payload) for 0 <= a < b <= split, the whole excluded. Heads are always
    cut from the front of what is left, so any such span can occur. The hw executor launches
    each of them once before its clock starts: a piece's GEMM reads a strided slice of the
    weight, which can make cuBLAS load a kernel the whole GEMM never used."""
    cut = splitters(split_collectives).get(spec.kind)
    if split <= 1 or cut is None:
        return []
    out = []
    for a in range(split):
        rest = spec if a == 0 else cut(spec, a / split)[1]
        for b in range(a + 1, split + 1):
            if (a, b) != (0, split):
                out.append(rest if b == split else cut(rest, (b - a) / split)[0])
    return out


def build_interleaved(ctx: PolicyContext, source=None, depth: int | None = None) -> list[RankPolicy]:
    pol = ctx.policy
    planner = Planner(ctx, depth or pol.depth, pol.split, pol.contention, pol.split_collectives, source)
    group = ctx.ranks
    routed = routed_on_arrival(ctx)

    def run(rt: Runtime) -> PolicyGen:
        main = rt.new_stream(MAIN_PRIORITY)
        sub = rt.new_stream(SUB_PRIORITY)
        rank = rt.rank
        started = end = None
        sub_mark: dict[int, int] = {}  # request -> event recorded after its last sub kernel
        first_piece: dict[int, dict[int, int]] = {}  # request -> job-local index -> kernel_id
        i = 0

        def launch(x: Launch, stream: int) -> None:
            spec, request_id, layer, parent = x
            k = Kernel(spec, rank, request_id, layer, group if spec.cls == COMM else None)
            if parent < 0:
                rt.launch(k, stream)
                return
            pieces = first_piece.setdefault(request_id, {})
            k.parent = pieces.get(parent, -1)
            rt.launch(k, stream)
            if k.parent < 0:
                k.parent = pieces[parent] = k.kernel_id

        pending = None
        while True:
            if pending is not None:
                yield rt.sync(pending)
                rt.release(pending)
                pending = None
            if routed:
                yield rt.catch_up()
            rnd = planner.get(i, rt.now(), rank)
            i += 1
            if rnd is None:
                return
            if rnd.sleep_until is not None:
                yield rt.sleep_until(rnd.sleep_until)
                continue
            if rnd.drain:
                yield rt.sync(end)
                continue
            if end is not None:
                rt.wait(sub, end)
            if rnd.main_waits_sub:
                rt.wait(main, sub_mark[rnd.main_request])
            for x in rnd.main[:-1]:
                launch(x, main)
            started = pending = rt.new_event()
            rt.record(started, main)
            launch(rnd.main[-1], main)
            if end is not None:
                rt.release(end)  # waited on above; a later drain syncs on the new one
            end = rt.new_event()
            rt.record(end, main)
            if rnd.main_last:  # the job is done launching: forget its marks
                first_piece.pop(rnd.main_request, None)
                done = sub_mark.pop(rnd.main_request, None)
                if done is not None:
                    rt.release(done)
            for j, x in enumerate(rnd.fills):
                launch(x, sub)
                nxt = rnd.fills[j + 1][1] if j + 1 < len(rnd.fills) else None
                if nxt != x[1]:
                    old = sub_mark.get(x[1])
                    ev = sub_mark[x[1]] = rt.new_event()
                    rt.record(ev, sub)
                    if old is not None:
                        rt.release(old)

    return [run] * ctx.world
