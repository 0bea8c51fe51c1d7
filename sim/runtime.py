"""The Runtime protocol policies are written against, and the part every backend shares.

A policy is a generator per rank. It calls `launch`, `record` and `wait` directly (they
only enqueue work, as in CUDA) and *yields* the blocking operations `sync(event)` and
`sleep_until(t)` (and, in the simulator only, `catch_up` and `wait_notify`); the backend's driver performs them (a SimPy wait in `sim`, a real
`Event.synchronize()` or sleep in `hw`). Every call is recorded as schedule IR.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Protocol

from sim.ir import Op
from sim.kernels import Kernel

PolicyGen = Generator[Op, Any, None]


class Runtime(Protocol):
    rank: int
    world: int

    def now(self) -> float: ...
    def new_stream(self, priority: int = 0) -> int: ...
    def new_event(self) -> int: ...
    def launch(self, kernel: Kernel, stream: int) -> None: ...
    def record(self, event: int, stream: int) -> None: ...
    def wait(self, stream: int, event: int) -> None: ...
    def sync(self, event: int) -> Op: ...
    def sleep_until(self, t: float) -> Op: ...
    def catch_up(self) -> Op: ...
    def wait_notify(self, until: float = ...) -> Op: ...
    def notify(self, rank: int) -> None: ...
    def solo(self, kernel: Kernel) -> float: ...
    def release(self, event: int) -> None: ...


class RecordingRuntime:
    """IR recording, stream/event/kernel numbering and collective ordering.

    Subclasses implement `_stream`, `_launch`, `_record`, `_wait` and `now`; `sync` and
    `sleep_until` only build the op, which the backend's driver executes when yielded.
    Stream priorities follow CUDA: a lower number is a higher priority.
    """

    def __init__(self, rank: int, world: int, solo: Callable[[Kernel], float], ops: list[Op] | None):
        self.rank, self.world = rank, world
        self.solo = solo
        self._ops = ops  # shared list across ranks, or None to record nothing
        self.stream_priority: list[int] = []
        self._next_event = 0
        self._next_kernel = 0
        self._coll_seq: dict[tuple[int, ...], int] = {}

    def now(self) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def _rec(self, op: Op) -> Op:
        if self._ops is not None:
            self._ops.append(op)
        return op

    def new_stream(self, priority: int = 0) -> int:
        sid = len(self.stream_priority)
        self.stream_priority.append(priority)
        self._stream(sid, priority)
        self._rec(Op(self.rank, "stream", self.now(), stream=sid, priority=priority))
        return sid

    def new_event(self) -> int:
        self._next_event += 1
        return self._next_event - 1

    def launch(self, kernel: Kernel, stream: int) -> None:
        if kernel.kernel_id < 0:
            kernel.kernel_id = self._next_kernel
        self._next_kernel = max(self._next_kernel, kernel.kernel_id) + 1
        if kernel.group is not None:
            seq = self._coll_seq.get(kernel.group, 0)
            kernel.seq = seq
            self._coll_seq[kernel.group] = seq + 1
        t = self._launch(kernel, stream)
        if self._ops is not None:
            self._ops.append(Op(self.rank, "launch", t, stream=stream, kernel=kernel))

    def record(self, event: int, stream: int) -> None:
        t = self._record(event, stream)
        if self._ops is not None:  # an Op only when recording: a round of Liger's makes several
            self._ops.append(Op(self.rank, "record", t, stream=stream, event=event))

    def wait(self, stream: int, event: int) -> None:
        t = self._wait(stream, event)
        if self._ops is not None:
            self._ops.append(Op(self.rank, "wait", t, stream=stream, event=event))

    def sync(self, event: int) -> Op:
        return self._rec(Op(self.rank, "sync", self.now(), event=event))

    def release(self, event: int) -> None:
        """The policy will neither wait nor sync on `event` again: the backend may forget it
        (long runs create millions). Not an operation of the schedule: the IR does not hold it."""
        self._release(event)

    def _release(self, event: int) -> None:
        """Backend hook: drop what is kept for `event` (default: nothing is kept)."""

    def sleep_until(self, t: float) -> Op:
        return self._rec(Op(self.rank, "sleep_until", self.now(), until=t))

    def catch_up(self) -> Op:
        """Yielded: wait until the simulated clock reaches this host's time, which runs ahead by
        the launches just issued, so that a decision other ranks' hosts also make (routing among
        replicas) sees the world of its moment. A simulator device, not a host operation: not in
        the IR, free, and nothing to do on hardware, whose clock is the host's."""
        return Op(self.rank, "catch_up", self.now())

    def wait_notify(self, until: float = float("inf")) -> Op:
        """Yielded: block until another host or a completed KV push notifies this rank (`notify`),
        or until `until`; at once if a notice came since the last wait. Disaggregated serving's
        hosts wait so for work that another replica's GPU hands them. Recorded in the IR as the
        sleep until the time it returned, which replays it."""
        return self._rec(Op(self.rank, "wait_notify", self.now(), until=until))

    def notify(self, rank: int) -> None:
        """Wake rank `rank`'s host from `wait_notify` at this host's time (not an IR operation)."""
        raise NotImplementedError(f"{type(self).__name__} has no host notices (disaggregated serving runs in sim)")

    # backend hooks: each returns the host time the operation was issued at
    def _stream(self, sid: int, priority: int) -> None:
        raise NotImplementedError

    def _launch(self, kernel: Kernel, stream: int) -> float:
        raise NotImplementedError

    def _record(self, event: int, stream: int) -> float:
        raise NotImplementedError

    def _wait(self, stream: int, event: int) -> float:
        raise NotImplementedError


def replay_policy(ops: list[Op]) -> Callable[[Runtime], PolicyGen]:
    """A policy that re-issues one rank's recorded operations verbatim."""

    def run(rt: Runtime) -> PolicyGen:
        for op in ops:
            kind = op.op
            if kind == "launch":
                assert op.kernel is not None
                rt.launch(op.kernel, op.stream)
            elif kind == "stream":
                rt.new_stream(op.priority)
            elif kind == "record":
                rt.record(op.event, op.stream)
            elif kind == "wait":
                rt.wait(op.stream, op.event)
            elif kind == "sync":
                yield rt.sync(op.event)
            elif kind == "sleep_until":
                yield rt.sleep_until(op.until)

    return run
