"""The Runtime protocol on torch: the policies' host operations performed for real.

`TorchRuntime` gives a rank streams with priorities, events, inter-stream waits and host
syncs, and times every kernel. On CUDA a stream is a `torch.cuda.Stream(priority=...)`
(lower number = higher priority, as in the IR), events are CUDA events and each kernel is
bracketed by timing events, mapped to the host clock through an origin event recorded at
start (or, with `timing="cupti"`, timed by CUPTI through torch.profiler: `hw.cupti`). On CPU every operation executes at once in host order: a valid serialisation of
the same program (each kernel starts after everything launched before it, so stream order
and event waits hold by construction), timed with perf_counter.

`drive` runs a policy generator on the host thread, performing the `sync` and
`sleep_until` operations it yields; all ranks share one wall-clock origin `t0`.

A policy that decides from the clock (`interleaved` admits the jobs that have arrived by
`now()`) must decide identically on every rank, or the ranks issue different collectives.
With `agree` set, `now()` returns the value rank 0 read (a broadcast), so every rank plans
as rank 0 does; the backend's own timestamps never go through it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hw.cupti import TAG, OpTiming, host_offset_us, load_trace, op_intervals
from hw.kernels import KernelLibrary
from sim.ir import Op
from sim.kernels import Kernel
from sim.runtime import PolicyGen, RecordingRuntime

Row = tuple
TIMINGS = ("events", "cupti")  # how CUDA kernels are timed (`hw.cupti` says why there are two)


class TorchRuntime(RecordingRuntime):
    def __init__(self, rank: int, world: int, solo: Callable[[Kernel], float], lib: KernelLibrary,
                 device: str = "cpu", t0: float | None = None, ops: list[Op] | None = None,
                 agree: Callable[[float], float] | None = None, timing: str = "events"):
        super().__init__(rank, world, solo, ops)
        self.lib, self.device, self.agree = lib, device, agree
        self.cuda = device != "cpu"
        if timing not in TIMINGS:
            raise ValueError(f"timing {timing!r}: expected one of {', '.join(TIMINGS)}")
        self.timing = timing if self.cuda else "host"
        self._prof = None
        self._cupti: dict[int, OpTiming] | None = None
        self._offset_us = 0.0
        self.t0 = time.perf_counter() if t0 is None else t0
        if self.timing == "cupti":
            from torch.profiler import ProfilerActivity, profile

            t_prof = time.perf_counter()
            self._prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self._prof.__enter__()
            self.t0 += time.perf_counter() - t_prof  # CUPTI's start-up is not run time
        self._streams: list = []
        self._current = None  # the stream made current by the last launch (CUDA)
        self._events: dict[int, object] = {}  # event id -> CUDA event, or host time on CPU
        self._kernels: list[tuple[Kernel, int, float, object, object]] = []
        self.record_times: list[tuple[int, int, float]] = []  # (event, stream, host time) of records
        self.sync_times: list[tuple[int, float, float]] = []  # (event, host time blocked, resumed)
        if self.cuda:
            torch.cuda.synchronize()
            self._origin_host = self._clock()
            self._origin = torch.cuda.Event(enable_timing=True)
            self._origin.record()

    def now(self) -> float:
        """The policy's clock: seconds since the run's start (rank 0's, when agreeing)."""
        t = self._clock()
        return self.agree(t) if self.agree is not None else t

    def _clock(self) -> float:
        return time.perf_counter() - self.t0

    # ------------------------------------------------------------------ hooks
    def _stream(self, sid: int, priority: int) -> None:
        if self.cuda:
            # CUDA: lower is higher; torch refuses priorities > 0 (and clamps those below the
            # device's greatest), so an IR's lower-than-default priorities run at the default
            self._streams.append(torch.cuda.Stream(priority=min(0, priority)))
        else:
            self._streams.append(None)

    def _launch(self, kernel: Kernel, stream: int) -> float:
        kernel.rank = self.rank
        if self.cuda:
            s = self._streams[stream]
            if s is not self._current:
                # the kernel's stream becomes current (and stays so until another is needed):
                # `torch.cuda.stream(s)` as a context would cost 10-30 us of device-index lookups
                # per launch, more than many of the kernels it brackets
                torch.cuda.set_stream(s)
                self._current = s
            # set-up (the request's input, the iteration's index tensors and KV blocks) goes on
            # the kernel's stream, ahead of it (pool streams do not wait for the default one),
            # and outside its timing
            self.lib.prepare(kernel)
            t = self._clock()
            if self.timing == "cupti":
                with torch.profiler.record_function(f"{TAG}{len(self._kernels)}"):
                    self.lib.run(kernel)
                self._kernels.append((kernel, stream, t, None, None))
            else:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record(s)
                self.lib.run(kernel)
                end.record(s)
                self._kernels.append((kernel, stream, t, start, end))
        else:
            self.lib.prepare(kernel)
            t = self._clock()
            start = self._clock()
            self.lib.run(kernel)
            self._kernels.append((kernel, stream, t, start, self._clock()))
        return t

    def _record(self, event: int, stream: int) -> float:
        t = self._clock()
        if self.cuda:
            ev = self._events.get(event)
            if ev is None:
                ev = self._events[event] = torch.cuda.Event()
            ev.record(self._streams[stream])  # type: ignore[attr-defined]
        else:
            self._events[event] = t  # everything launched before has completed
        self.record_times.append((event, stream, t))
        return t

    def _release(self, event: int) -> None:
        self._events.pop(event, None)  # CUDA frees a destroyed event once the device has passed it

    def _wait(self, stream: int, event: int) -> float:
        t = self._clock()
        ev = self._events.get(event)
        if self.cuda and ev is not None:  # waiting on a never-recorded event is a no-op, as in CUDA
            self._streams[stream].wait_event(ev)
        return t

    # ------------------------------------------------------------------ blocking operations
    def block_on(self, event: int) -> float:
        """`sync`: the host waits until the event's stream has reached it; returns when it resumed."""
        t = self._clock()
        ev = self._events.get(event)
        if self.cuda and ev is not None:
            ev.synchronize()  # type: ignore[attr-defined]
        done = self._clock()
        self.sync_times.append((event, t, done))
        return done

    def sleep_to(self, until: float) -> float:
        """`sleep_until`: wall-clock time since the run's start (request arrivals); returns when
        the host woke (the OS wakes it late)."""
        dt = until - self._clock()
        if dt > 0:
            time.sleep(dt)
        return self._clock()

    def finish(self) -> None:
        if self.cuda:
            if self._current is not None:  # hand the default stream back to whatever runs next
                torch.cuda.set_stream(torch.cuda.default_stream())
                self._current = None
            torch.cuda.synchronize()
        if self._prof is not None:  # CUPTI: read when each op's device work ran
            prof, self._prof = self._prof, None
            prof.__exit__(None, None, None)
            with tempfile.TemporaryDirectory() as d:
                path = Path(d) / "trace.json"
                prof.export_chrome_trace(str(path))
                self._cupti = op_intervals(load_trace(path))
            self._offset_us = host_offset_us(self._cupti, {i: k[2] for i, k in enumerate(self._kernels)})

    def cupti_kernels(self) -> list[tuple]:
        """CUPTI runs: every device activity of every op, (rank, kernel_id, start_s, end_s,
        ready_s) on the run's clock, so other rules than `fed` can be applied afterwards."""
        self.finish()
        if self._cupti is None:
            return []
        off = self._offset_us
        return [(self.rank, self._kernels[i][0].kernel_id, (a + off) / 1e6, (b + off) / 1e6, (r + off) / 1e6)
                for i, iv in sorted(self._cupti.items()) for a, b, r in iv.kernels]

    # ------------------------------------------------------------------ results
    def rows(self) -> list[Row]:
        """One row per kernel, columns as `sim.engine.EVENT_COLUMNS`."""
        self.finish()
        out = []
        last_end: dict[int, float] = {}
        for i, (k, sid, launched, start, end) in enumerate(self._kernels):
            if self._cupti is not None:
                iv = self._cupti.get(i)
                if iv is None:  # no device work on this rank: an instant after the stream's last
                    t_start = t_end = max(launched, last_end.get(sid, 0.0))
                else:
                    # the op's device time from its first kernel's start: host gaps between
                    # its kernels are not the op's (`hw.cupti.op_intervals`)
                    t_start = (iv.start + self._offset_us) / 1e6
                    t_end = t_start + iv.fed / 1e6
                last_end[sid] = max(last_end.get(sid, 0.0), t_end)
            elif self.cuda:
                t_start = self._origin_host + self._origin.elapsed_time(start) / 1e3
                t_end = self._origin_host + self._origin.elapsed_time(end) / 1e3
            else:
                t_start, t_end = start, end
            s = k.spec
            out.append((self.rank, sid, k.kernel_id, k.request_id, k.layer, s.kind, s.name, s.cls, k.group,
                        k.parent, s.fraction, launched, t_start, t_end, self.solo(k)))
        return out


def drive(policy: PolicyGen, rt: TorchRuntime) -> bool:
    """Run one rank's policy generator on this host thread until it returns; False when Ctrl-C
    stopped it first. Either way what was launched is finished and timed, so an interrupted run
    still writes the kernels and jobs it completed."""
    completed = True
    try:
        for op in policy:
            # when it returned: the host's time after a blocking op is the policy's, not the GPU's
            if op.op == "sync":
                op.done = rt.block_on(op.event)
            elif op.op == "sleep_until":
                op.done = rt.sleep_to(op.until)
            elif op.op == "catch_up":  # a simulator device: the host's clock is the real one
                continue
            elif op.op == "wait_notify":  # pragma: no cover - `hw run` refuses dp > 1 first
                raise ValueError("disaggregated serving (policy.prefill_replicas) runs in the simulator only")
            else:  # pragma: no cover - policies only yield blocking operations
                raise ValueError(f"policy yielded non-blocking operation {op.op!r}")
    except KeyboardInterrupt:
        policy.close()
        completed = False
    rt.finish()
    return completed
