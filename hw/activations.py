"""Per-request activation state: the named buffers kernels read and write.

A request's kernels pass data through named buffers (`q`, `scores`, `attn`, ...), reused
by every layer of that request. Buffers come from a pool keyed by shape, so a run holds
buffers for the requests in flight, not for every request. On the GPU a buffer released
by a finished request carries an event recorded after that request's last kernel; the
stream that takes it next waits for that event, so reuse never races the old reader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

Shape = tuple[int, ...]


@dataclass
class RequestState:
    """What one request has computed so far on this rank."""

    request_id: int
    batch: int
    seq: int
    bufs: dict[str, torch.Tensor] = field(default_factory=dict)
    readonly: set[str] = field(default_factory=set)  # buffers aliasing shared inputs
    cursor: dict[tuple[int, str], int] = field(default_factory=dict)  # next column of split GEMMs
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # decoder cache per layer
    fold: bool = False  # decoder: `mlp` still has to be added to `resid`
    gen: Any = None  # generative: the iteration's rows (hw.generative.IterData)
    retired: list[torch.Tensor] = field(default_factory=list)  # replaced buffers, freed on release

    @property
    def tokens(self) -> int:
        return self.batch * self.seq


class BufferPool:
    """Buffers allocated once per shape and handed out again after their last use."""

    def __init__(self, device: str, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self._free: dict[Shape, list[tuple[torch.Tensor, object | None]]] = {}
        self.allocated_bytes = 0

    def take(self, shape: Shape) -> torch.Tensor:
        free = self._free.get(shape)
        if free:
            buf, fence = free.pop()
            if fence is not None and not fence.query():  # type: ignore[attr-defined]
                torch.cuda.current_stream().wait_event(fence)  # type: ignore[arg-type]
            return buf
        buf = torch.empty(shape, device=self.device, dtype=self.dtype)
        self.allocated_bytes += buf.numel() * buf.element_size()
        return buf

    def give(self, bufs: list[torch.Tensor], fence: object | None) -> None:
        for buf in bufs:
            self._free.setdefault(tuple(buf.shape), []).append((buf, fence))


class ActivationStore:
    """Request states on one rank, created on a request's first kernel.

    `shape_of(request_id)` gives (batch, seq) where the schedule knows it (the jobs, or the
    IR's attention kernels); `inputs` is "per_request" (each request its own seeded input,
    for exact checks) or "shared" (one input per shape, for timing runs).
    """

    def __init__(self, pool: BufferPool, hidden: int, shape_of: Callable[[int], tuple[int, int] | None],
                 seed: int = 0, inputs: str = "per_request", keep: bool = False):
        self.pool, self.hidden, self.shape_of = pool, hidden, shape_of
        self.seed, self.inputs, self.keep = seed, inputs, keep
        self.states: dict[int, RequestState] = {}
        self._shared: dict[Shape, torch.Tensor] = {}

    def get(self, request_id: int, tokens: int, input_name: str) -> RequestState:
        st = self.states.get(request_id)
        if st is None:
            batch, seq = self.shape_of(request_id) or (1, tokens)
            if batch * seq != tokens:  # a micro-batch: same sequences, fewer of them
                batch, seq = (tokens // seq, seq) if tokens % seq == 0 else (1, tokens)
            st = self.states[request_id] = RequestState(request_id, batch, seq)
            st.bufs[input_name] = self.input(request_id, (tokens, self.hidden))
            st.readonly.add(input_name)
        return st

    def input(self, request_id: int, shape: Shape) -> torch.Tensor:
        """The request's layer-0 input: deterministic, identical on every rank."""
        if self.inputs == "shared" and shape in self._shared:
            return self._shared[shape]
        gen = torch.Generator(device=self.pool.device)
        gen.manual_seed(self.seed * 7919 + (0 if self.inputs == "shared" else request_id + 1))
        x = torch.randn(shape, generator=gen, device=self.pool.device, dtype=torch.float32).to(self.pool.dtype)
        if self.inputs == "shared":
            self._shared[shape] = x
        return x

    def buf(self, st: RequestState, name: str, shape: Shape) -> torch.Tensor:
        """A writable buffer `name` of `shape` in `st` (taken from the pool if new)."""
        cur = st.bufs.get(name)
        if cur is not None and tuple(cur.shape) == shape and name not in st.readonly:
            return cur
        if cur is not None and name not in st.readonly:
            st.retired.append(cur)  # may still be read on another stream: free with the request
        st.readonly.discard(name)
        new = st.bufs[name] = self.pool.take(shape)
        return new

    def release(self, request_id: int, fence: object | None) -> None:
        """Return a finished request's buffers (unless kept for inspection)."""
        if self.keep:
            return
        st = self.states.pop(request_id, None)
        if st is None:
            return
        own = [b for n, b in st.bufs.items() if n not in st.readonly]
        own += st.retired + [t for kv in st.kv.values() for t in kv]
        self.pool.give(own, fence)
