"""The SimPy model of GPUs, streams, events, collectives and contention.

Speed matters (a 70-layer model on 4 GPUs is ~900k kernels per 200 jobs), so kernels are
not SimPy processes: each GPU stream is a FIFO of work items advanced by callbacks, and a
running kernel costs one scheduled completion. Host threads run the policy generators,
driven by timed callbacks too; a host keeps its own clock and only waits in simulated time
when it blocks (`sync`, `sleep_until`), because launching never observes the GPU.

Contention is a fluid (processor-sharing) model: a running kernel holds `remaining` solo
seconds of work and progresses at rate 1 / slowdown, where the slowdown is read from the
contention table for the kernels it currently overlaps on its GPU. Rates are recomputed
whenever that set changes; a completion scheduled under an old rate is discarded.
Collectives start on every rank at once when the last rank of the group reaches them (an
early rank's stream waits, as with NCCL); they progress at the pace of their slowest
rank, and a link shared with another running collective divides its bandwidth.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from heapq import heappop, heappush

import simpy

from sim.contention import ContentionTable
from sim.errors import LigerSimError
from sim.eventlog import CHUNK, COLUMNS, EventLog
from sim.ir import Op, Schedule
from sim.kernels import Kernel
from sim.links import Topology
from sim.runtime import PolicyGen, RecordingRuntime

_KERNEL, _RECORD, _WAIT = 0, 1, 2
# Python's cyclic collector while the engine runs: it makes a few short-lived objects per kernel,
# none in cycles, and the default thresholds (700, 10, 10) spent 11% of an interleaved generative
# run collecting them (30 s of the Azure trace: 35.8 s of CPU, 32.4 s with these)
GC_THRESHOLDS = (50_000, 20, 20)
EVENT_COLUMNS = COLUMNS  # one row per completed kernel (sim.eventlog)


class Clock(simpy.Environment):
    """SimPy's environment with a cheap timed callback for the engine's own events (a kernel's
    completion, a stream's wake-up): about two per kernel, so they skip the `Timeout` object, its
    callback list and a closure. `call_in` queues `fn(a, b)` exactly where a timeout created at
    that moment would be (same time, priority and place in the event-id order), so every event is
    processed in the same order as with plain timeouts and events (hosts use it as well).
    It reads SimPy 4.1's queue entries (time, priority, event id, event): pyproject pins simpy < 4.2,
    and tests/test_engine.py checks its order against plain timeouts."""

    def call_in(self, delay: float, fn: Callable, a, b=None) -> None:
        if delay < 0:  # as `Timeout` refuses it: a completion in the past is a bug upstream
            raise ValueError(f"negative delay {delay}")
        heappush(self._queue, (self._now + delay, simpy.events.NORMAL, next(self._eid), (fn, a, b)))

    def step(self) -> None:
        try:
            self._now, _, _, event = heappop(self._queue)
        except IndexError:
            raise simpy.core.EmptySchedule from None
        if type(event) is tuple:
            event[0](event[1], event[2])
            return
        self._process(event)

    def _process(self, event: simpy.Event) -> None:
        """What `simpy.Environment.step` does with a popped SimPy event."""
        callbacks, event.callbacks = event.callbacks, None
        try:
            for callback in callbacks:
                callback(event)
        except simpy.core.StopSimulation:  # `run(until=...)` (the progress bar) stops here
            event.callbacks = callbacks[callbacks.index(callback) + 1:]
            self.schedule(event, simpy.events.EventPriority(-1))
            raise
        if not event._ok and not hasattr(event, "_defused"):
            exc = type(event._value)(*event._value.args)
            exc.__cause__ = event._value
            raise exc

    def run_all(self) -> None:
        """`run()` until no event is left, stepping in one loop (no method call per event)."""
        queue, process = self._queue, self._process
        while queue:
            self._now, _, _, event = heappop(queue)
            if type(event) is tuple:
                event[0](event[1], event[2])
            else:
                process(event)


class EventInstance:
    """One `record` of an event: complete when the stream reaches it."""

    __slots__ = ("done", "t", "streams", "host")

    def __init__(self) -> None:
        self.done = False
        self.t = 0.0
        self.streams: list[Stream] = []
        self.host: SimRankRuntime | None = None  # the host that syncs on it


class Stream:
    __slots__ = ("rank", "sid", "priority", "queue", "busy", "wake_at", "last_end")

    def __init__(self, rank: int, sid: int, priority: int):
        self.rank, self.sid, self.priority = rank, sid, priority
        self.queue: deque = deque()
        self.busy: Run | None = None
        self.wake_at = -1.0
        self.last_end = -1.0  # when the stream's last kernel ended


class Run:
    """A kernel in execution (for a collective: all ranks' parts of it at once)."""

    __slots__ = ("kernels", "streams", "cls", "remaining", "rate", "t_last", "version", "start",
                 "solo", "links", "launch")

    def __init__(self, kernels: list[Kernel], streams: list[Stream], solo: float, now: float, cls: str):
        self.kernels, self.streams = kernels, streams
        self.cls = cls
        self.solo = solo
        self.remaining = solo
        self.rate = 0.0
        self.t_last = now
        self.start = now
        self.version = 0
        self.links: dict[int, int] = {}
        self.launch: list[float] = []


@dataclass(slots=True)
class HostParams:
    launch_s: float
    sync_wakeup_s: float
    # measured launch time per kernel name (or kind), from a profile; others take launch_s
    launch_by_name: dict[str, float] = field(default_factory=dict)
    # the GPU's own time between a kernel's end and the start of the next one already queued on
    # its stream (a profile's `host.kernel_gap_s`, measured with CUPTI); kernel times timed with
    # CUPTI exclude it, where CUDA events include it
    kernel_gap_s: float = 0.0
    # op name -> (dim, base, per unit): a launch whose host cost grows with one of its kernel's
    # dims (a profile's `launch_linear`); it overrides `launch_by_name` for that op
    launch_linear: dict[str, tuple[str, float, float]] = field(default_factory=dict)
    # host seconds from a blocking op's return to the rank's next op ("sync", "sleep_until"): the
    # policy's own work there (Liger plans its next round after each sync; a job's end is booked)
    after_block: dict[str, float] = field(default_factory=dict)
    # how late the OS wakes a sleeping host after the time it asked for
    sleep_late_s: float = 0.0
    # host time of an event record and of a stream wait (None: `launch_s`); a profile's in-situ
    # means, which differ (on the H100, a record 29 us, a wait 9 us in the chunked generative run)
    record_s: float | None = None
    wait_s: float | None = None
    # host time of a sync on an event the GPU has already passed: the call itself (on the H100,
    # 95% of an interleaved run's syncs returned in 6-10 us); a sync that waits resumes
    # `sync_wakeup_s` after the event instead
    sync_call_s: float = 0.0


@dataclass
class SimResult:
    events: EventLog | list[tuple]
    schedule: Schedule
    sim_wall_s: float
    end_s: float
    meta: dict = field(default_factory=dict)


class Engine:
    def __init__(self, world: int, solo: Callable[[Kernel], float], contention: ContentionTable,
                 topology: Topology, host: HostParams, record_ir: bool = True):
        self.env = Clock()
        self.world = world
        self.solo = solo
        self.contention = contention
        self.topology = topology
        self.host = host
        self.running: list[list[Run]] = [[] for _ in range(world)]
        self.streams: list[list[Stream]] = [[] for _ in range(world)]
        self.pending_coll: dict[tuple, list] = {}
        self.link_runs: dict[int, list[Run]] = {}
        self.shared_links = 0  # links carrying more than one running collective (usually none)
        self.log = EventLog()
        self.rows = self.log.rows  # appended to in the hot path; packed into columns as it grows
        self.ops: list[Op] | None = [] if record_ir else None
        self._work: list[Stream] = []
        self._link_loads: dict[tuple[str, tuple[int, ...]], dict[int, int]] = {}
        # Symmetric tensor parallelism: every rank runs the same kernels at the same times, so
        # simulating rank 0 alone (its collectives start when it reaches them) is exact and
        # `world` times faster. Only for policies whose ranks are all alike. With data-parallel
        # replicas, the first rank of every replica (`leaders`).
        self.fold = False
        self.leaders = [0]
        # disaggregated serving: called with a `kv_push` kernel when it completes (the receiver's
        # notice of arrived KV blocks, as NIXL's transfer notifications), and the hosts waiting on
        # `wait_notify` by rank, each with its wait's number (a timed-out wait's wake is dropped)
        self.push_done: Callable[[Kernel, float], None] | None = None
        self.notified: set[int] = set()
        self.waiting: dict[int, tuple[SimRankRuntime, int]] = {}

    # ------------------------------------------------------------------ streams
    def add_stream(self, rank: int, sid: int, priority: int) -> Stream:
        s = Stream(rank, sid, priority)
        self.streams[rank].append(s)
        return s

    def enqueue(self, stream: Stream, item: tuple) -> None:
        stream.queue.append(item)
        if stream.busy is None and len(stream.queue) == 1:
            self._work.append(stream)
            self._drain()

    def _drain(self) -> None:
        work = self._work
        while work:
            self._advance(work.pop())

    def _advance(self, s: Stream) -> None:
        now = self.env.now
        q = s.queue
        gap = self.host.kernel_gap_s
        while s.busy is None and q:
            code, payload, ready = q[0]
            at = s.last_end + gap if gap and code == _KERNEL and s.last_end + gap > ready else ready
            if at > now:
                if s.wake_at != at:
                    s.wake_at = at
                    self.env.call_in(at - now, self._wake, s)
                return
            if code == _KERNEL:
                q.popleft()
                self._begin(s, payload, ready)
                return
            if code == _RECORD:
                q.popleft()
                self._complete_event(payload, now)
            else:  # _WAIT
                if not payload.done:
                    payload.streams.append(s)
                    return
                q.popleft()

    def _wake(self, s: Stream, _: None = None) -> None:
        s.wake_at = -1.0
        self._work.append(s)
        self._drain()

    def _complete_event(self, inst: EventInstance, now: float) -> None:
        inst.done, inst.t = True, now
        if inst.streams:
            self._work.extend(inst.streams)
            inst.streams = []
        if inst.host is not None:  # a host syncs on it: it resumes now, after what is queued for now
            self.env.call_in(0.0, self._host, inst.host, 2)

    # ------------------------------------------------------------------ kernels
    def _begin(self, s: Stream, k: Kernel, launched: float) -> None:
        if k.group is None:
            run = Run([k], [s], self.solo(k), self.env.now, k.spec.cls)
            run.launch = [launched]
            s.busy = run
            self._start(run)
            return
        key = (k.group, k.seq)
        arrived = self.pending_coll.get(key)
        if arrived is None:
            arrived = self.pending_coll[key] = []
        arrived.append((k, s, launched))
        s.busy = _WAITING  # occupies the stream until every rank has arrived
        # a KV push is one-sided: only its senders (the group's even places) launch it
        if len(arrived) == (1 if self.fold else len(set(k.group[::2])) if k.spec.kind == "kv_push" else len(k.group)):
            del self.pending_coll[key]
            arrived.sort(key=lambda a: a[0].rank)
            kernels = [a[0] for a in arrived]
            streams = [a[1] for a in arrived]
            run = Run(kernels, streams, self.solo(k), self.env.now, k.spec.cls)
            run.launch = [a[2] for a in arrived]
            run.links = self._loads(k.spec.kind, k.group)
            for st in streams:
                st.busy = run
            self._start(run)

    def _loads(self, kind: str, group: tuple[int, ...]) -> dict[int, int]:
        """`Topology.collective_loads`, once per kind and group (runs only read it)."""
        key = (kind, group)
        loads = self._link_loads.get(key)
        if loads is None:
            loads = self._link_loads[key] = self.topology.collective_loads(kind, group)
        return loads

    def _start(self, run: Run) -> None:
        ranks = [st.rank for st in run.streams]
        link_runs = self.link_runs
        for link in run.links:
            lst = link_runs.get(link)
            if lst is None:
                link_runs[link] = [run]
                continue
            lst.append(run)
            if len(lst) == 2:
                self.shared_links += 1
        alone = True
        running = self.running
        for r in ranks:
            if running[r]:
                alone = False
            running[r].append(run)
        if alone and (not self.shared_links or all(len(link_runs[link]) == 1 for link in run.links)):
            run.rate = 1.0  # nothing shares its GPUs or links: what `_rerate` would find, without the search
            self._schedule(run)
            return
        self._rerate(self._affected(run, ranks))

    def _affected(self, run: Run, ranks: list[int]) -> list[Run]:
        seen: dict[int, Run] = {id(run): run}
        for r in ranks:
            for other in self.running[r]:
                seen[id(other)] = other
        for link in run.links:
            for other in self.link_runs.get(link, ()):
                seen[id(other)] = other
        return list(seen.values())

    def _rerate(self, runs: list[Run]) -> None:
        now = self.env.now
        table = self.contention
        for run in runs:
            slow = 1.0
            for st in run.streams:
                local = 1.0
                for other in self.running[st.rank]:
                    if other is not run:
                        ost = other.streams[0] if len(other.streams) == 1 else _stream_on(other, st.rank)
                        first = "victim" if run.start < other.start else "other" if other.start < run.start else "any"
                        local += table.factor(run.cls, other.cls, st.priority, ost.priority, first) - 1.0
                if local > slow:
                    slow = local
            if run.links:
                slow *= self._link_share(run)
            rate = 1.0 / slow
            if run.rate != rate:
                if run.rate > 0.0:
                    run.remaining -= (now - run.t_last) * run.rate
                    if run.remaining < 0.0:
                        run.remaining = 0.0
                run.t_last = now
                run.rate = rate
                run.version += 1
                self._schedule(run)

    def _link_share(self, run: Run) -> float:
        """How much slower `run`'s bottleneck flow is when links are shared with others."""
        link_runs = self.link_runs
        if not self.shared_links or all(len(link_runs[link]) == 1 for link in run.links):
            return 1.0  # the common case: no other transfer on its links
        own = self.topology.bottleneck_bw(run.links)
        shared = min(self.topology.link_bw[link] / sum(o.links[link] for o in link_runs[link])
                     for link in run.links)
        return own / shared

    def _schedule(self, run: Run) -> None:
        self.env.call_in(run.remaining / run.rate, self._finish, run, run.version)

    def _finish(self, run: Run, version: int) -> None:
        if version != run.version:
            return  # rescheduled under a new rate
        now = self.env.now
        run.version += 1
        rows = self.rows
        streams = run.streams
        if len(streams) == 1:  # most kernels: one stream, no zip
            st, k = streams[0], run.kernels[0]
            rows.append((st.rank, st.sid, k.kernel_id, k.request_id, k.layer, k.spec, k.group, k.parent,
                         run.launch[0], run.start, now, run.solo))  # layout: sim.eventlog
            lst = self.running[st.rank]
            lst.remove(run)
            others = list(lst)
            st.busy = None
            st.last_end = now
            self._work.append(st)
        else:
            for k, st, launched in zip(run.kernels, streams, run.launch):
                rows.append((st.rank, st.sid, k.kernel_id, k.request_id, k.layer, k.spec, k.group, k.parent,
                             launched, run.start, now, run.solo))
            others = []
            for st in streams:
                lst = self.running[st.rank]
                lst.remove(run)
                others.extend(lst)
                st.busy = None
                st.last_end = now
                self._work.append(st)
        if len(rows) >= CHUNK:
            self.log.pack()
        if self.push_done is not None and run.kernels[0].spec.kind == "kv_push":
            self.push_done(run.kernels[0], now)
        for link in run.links:
            lst = self.link_runs[link]
            lst.remove(run)
            if len(lst) == 1:
                self.shared_links -= 1
            others.extend(lst)
        if others:  # one stream and no links: its GPU's other runs, each once
            self._rerate(others if len(streams) == 1 and not run.links else list({id(o): o for o in others}.values()))
        self._drain()

    # ------------------------------------------------------------------ hosts
    def notify(self, rank: int, at: float | None = None) -> None:
        """Wake rank `rank`'s host from `wait_notify` at host time `at` (default now), or, when
        it is not waiting, make its next `wait_notify` return at once."""
        # always by a callback, never at once: the notice may come from inside the engine's own
        # bookkeeping (a push completing), which a host launching kernels must not re-enter
        self.env.call_in(0.0 if at is None else max(0.0, at - self.env.now), self._deliver, rank, -1)

    def _deliver(self, rank: int, number: int) -> None:
        """A notice (`number` -1) or the timeout of wait `number` reaches `rank`."""
        waiter = self.waiting.get(rank)
        if waiter is None or (number >= 0 and waiter[1] != number):
            if number < 0:
                self.notified.add(rank)
            return
        del self.waiting[rank]
        self._host(waiter[0], 3)

    def run(self, policies: list[Callable[[SimRankRuntime], PolicyGen]], meta: dict | None = None,
            progress_horizon_s: float | None = None) -> SimResult:
        """Run every rank's policy to the end. With `progress_horizon_s` (the last arrival),
        show a progress bar over simulated time. Ctrl-C stops the run and returns what has
        completed so far, flagged `interrupted`."""
        wall = time.perf_counter()
        rts = [SimRankRuntime(self, r) for r in (self.leaders if self.fold else range(self.world))]
        for rt in rts:
            rt.gen = policies[rt.rank](rt)
            self.env.call_in(0.0, self._host, rt, 0)
        meta = dict(meta or {})
        thresholds = gc.get_threshold()
        gc.set_threshold(*GC_THRESHOLDS)
        try:
            if progress_horizon_s:
                self._run_with_progress(progress_horizon_s)
            else:
                self.env.run_all()
        except KeyboardInterrupt:
            meta["interrupted"] = True
            for rt in rts:  # a wait cut short reads as a sleep until now (the IR has no wait_notify)
                if rt.blocked is not None and rt.blocked.op == "wait_notify":
                    rt.blocked.op, rt.blocked.until = "sleep_until", self.env.now
        finally:
            gc.set_threshold(*thresholds)
        if not meta.get("interrupted"):
            stuck = [st for sts in self.streams for st in sts if st.queue or st.busy is not None]
            if stuck or self.pending_coll:
                raise LigerSimError(
                    f"the schedule deadlocked: {len(stuck)} streams still hold work (collectives waiting for "
                    f"ranks: {sorted(self.pending_coll)[:3]}); every rank must issue its collectives in the "
                    "same order", field="schedule")
            if self.waiting:  # a policy that leaves a host waiting would end with its work undone
                raise LigerSimError(f"the schedule deadlocked: the hosts of ranks {sorted(self.waiting)} wait for a "
                                    "notice no host will send", field="schedule")
        sched = Schedule(self.world, self.ops or [], meta)
        return SimResult(self.log, sched, time.perf_counter() - wall, self.env.now, meta)

    def _run_with_progress(self, horizon: float) -> None:
        from tqdm import tqdm

        env, step = self.env, max(horizon, 1e-3) / 100
        queue, advance = env._queue, env.step
        with tqdm(total=round(horizon, 3), unit="sim s", desc="simulating", leave=False,
                  bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} sim s [{elapsed}<{remaining}{postfix}]") as bar:
            # the queue's own events in `run_all`'s order, the bar redrawn every `step` of simulated
            # time: `env.run(until=...)` left its `until` event queued, so the loop never ended and
            # the run's end moved to a step boundary
            while queue:
                until = max(env.now + step, queue[0][0])
                while queue and queue[0][0] <= until:
                    advance()
                bar.n = round(min(env.now, horizon), 3)
                bar.set_postfix_str(f"{len(self.log):,} kernels", refresh=False)
                bar.refresh()

    def _host(self, rt: SimRankRuntime, phase: int) -> None:
        """Run rank `rt`'s policy until it blocks; a blocked host comes back here by a timed
        callback (`phase` 1: it has reached the blocking op in simulated time; 2: the event it
        syncs on has completed; 3: a notice or the timeout of its `wait_notify` came). Hosts are not SimPy processes: a timed callback is queued
        exactly where the `Timeout` or `Event` a process would wait on is, at less cost."""
        env, host = self.env, self.host
        op = rt.blocked
        while True:
            if phase == 0:
                try:
                    op = next(rt.gen)
                except StopIteration:
                    return
                if op.op == "sleep_until" and op.until > rt.host_t:
                    # the host really waits, so that what it decides next sees the simulated
                    # world of that moment (other ranks' hosts, arrivals)
                    rt.host_t = op.until + host.sleep_late_s
                if rt.host_t > env.now:  # the host first reaches this point in simulated time
                    rt.blocked = op
                    env.call_in(rt.host_t - env.now, self._host, rt, 1)
                    return
                phase = 1
            if phase == 1:
                if op.op == "catch_up":  # the clock has reached the host's time (`catch_up`)
                    phase = 0
                    continue
                if op.op == "wait_notify":  # a notice that came while the host was busy returns it at once
                    if rt.rank not in self.notified:  # wait for a notice, or until `until`
                        rt.blocked = op
                        rt.waits += 1
                        self.waiting[rt.rank] = (rt, rt.waits)
                        if op.until != float("inf"):
                            self.env.call_in(max(0.0, op.until - env.now), self._deliver, rt.rank, rt.waits)
                        return
                    self.notified.discard(rt.rank)
                    op.op, op.until = "sleep_until", rt.host_t
                if op.op == "sleep_until":
                    op.done = rt.host_t
                    rt.host_t += host.after_block.get("sleep_until", 0.0)
                    phase = 0
                    continue
                inst = rt.events.get(op.event)
                if inst is not None and not inst.done:
                    rt.blocked = op
                    inst.host = rt  # `_complete_event` calls back with phase 2
                    return
                if inst is not None:
                    rt.host_t = max(rt.host_t, env.now) + host.sync_call_s
                else:  # never recorded: nothing to wait on, as in CUDA
                    rt.host_t = max(rt.host_t, env.now)
            elif phase == 3:  # woken from `wait_notify`: in the IR, a sleep until now (as it replays)
                op.op, op.until = "sleep_until", env.now
                if env.now > rt.host_t:
                    rt.host_t = env.now + host.sleep_late_s
                op.done = rt.host_t
                rt.host_t += host.after_block.get("sleep_until", 0.0)
                phase = 0
                continue
            else:
                rt.host_t = env.now + host.sync_wakeup_s
            op.done = rt.host_t
            rt.host_t += host.after_block.get("sync", 0.0)
            phase = 0


class _Waiting:
    """Marks a stream whose collective waits for the other ranks."""


_WAITING = _Waiting()


def _stream_on(run: Run, rank: int) -> Stream:
    for st in run.streams:
        if st.rank == rank:
            return st
    raise KeyError(rank)


class SimRankRuntime(RecordingRuntime):
    """One rank's view of the simulated machine (the Runtime protocol)."""

    def __init__(self, engine: Engine, rank: int):
        super().__init__(rank, engine.world, engine.solo, engine.ops)
        self.engine = engine
        self.host_t = 0.0
        self.gen: PolicyGen | None = None  # the policy this host runs
        self.blocked: Op | None = None  # the op it is blocked in
        self.waits = 0  # `wait_notify` calls that blocked, numbering their timeouts
        self.events: dict[int, EventInstance] = {}
        self._streams: list[Stream] = []
        self._launch_s = engine.host.launch_s
        h = engine.host
        self._record_s = h.launch_s if h.record_s is None else h.record_s
        self._wait_s = h.launch_s if h.wait_s is None else h.wait_s
        self._launch_by_name = engine.host.launch_by_name
        self._launch_linear = engine.host.launch_linear

    def now(self) -> float:
        return self.host_t

    def _stream(self, sid: int, priority: int) -> None:
        self._streams.append(self.engine.add_stream(self.rank, sid, priority))

    def _launch(self, kernel: Kernel, stream: int) -> float:
        kernel.rank = self.rank
        cost = self._launch_s
        if self._launch_by_name:
            by = self._launch_by_name
            cost = by.get(kernel.spec.name, by.get(kernel.spec.kind, cost))
        if self._launch_linear:
            lin = self._launch_linear.get(kernel.spec.name)
            if lin is not None and lin[0] in kernel.spec.dims:
                cost = max(0.0, lin[1] + lin[2] * kernel.spec.dims[lin[0]])
        t = self.host_t = self.host_t + cost
        self.engine.enqueue(self._streams[stream], (_KERNEL, kernel, t))
        return t

    def _record(self, event: int, stream: int) -> float:
        inst = EventInstance()
        self.events[event] = inst
        t = self.host_t = self.host_t + self._record_s
        self.engine.enqueue(self._streams[stream], (_RECORD, inst, t))
        return t

    def _release(self, event: int) -> None:
        self.events.pop(event, None)

    def notify(self, rank: int) -> None:
        self.engine.notify(rank, self.host_t)

    def _wait(self, stream: int, event: int) -> float:
        t = self.host_t = self.host_t + self._wait_s
        inst = self.events.get(event)
        if inst is not None:  # waiting on a never-recorded event is a no-op, as in CUDA
            self.engine.enqueue(self._streams[stream], (_WAIT, inst, t))
        return t
