"""Per-request activation state: the named buffers kernels read and write.

A request's kernels pass data through named buffers (`q`, `scores`, `attn`, ...), reused
by every layer of that request. Buffers come from a pool of size classes, so a run holds
buffers for the requests in flight, not for every request. On the GPU a buffer released
by a finished request carries an event recorded after that request's last kernel; the
stream that takes it next waits for that event, so reuse never races the old reader.
"""

from __future__ import annotations

import math
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
    """Buffers handed out again after their last use, by size class.

    A buffer is a view of a flat allocation rounded up to a size class (eight per power of two, so
    at most 12.5% over), and any shape of that class can reuse it. Keyed by exact shape, a
    generative run, whose iterations each batch another number of tokens, kept a new set of
    buffers for every token count it met: memory grew with the run, and each new count allocated
    inside the timed loop."""

    def __init__(self, device: str, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self._free: dict[int, list[tuple[torch.Tensor, object | None]]] = {}
        self._own: set[int] = set()  # ids of the flat allocations buffers are views of
        self.allocated_bytes = 0

    def take(self, shape: Shape) -> torch.Tensor:
        n = math.prod(shape)
        size = size_class(n)
        free = self._free.get(size)
        if free:
            raw, fence = free.pop()
            if fence is not None and not fence.query():  # type: ignore[attr-defined]
                torch.cuda.current_stream().wait_event(fence)  # type: ignore[arg-type]
        else:
            raw = torch.empty(size, device=self.device, dtype=self.dtype)
            self._own.add(id(raw))
            self.allocated_bytes += raw.numel() * raw.element_size()
        return raw.view(-1)[:n].view(shape)

    def give(self, bufs: list[torch.Tensor], fence: object | None) -> None:
        for buf in bufs:
            raw = buf if buf._base is None else buf._base
            if buf._base is not None and id(raw) not in self._own:
                continue  # a view into a tensor the pool does not own (never reuse its base)
            if raw.is_contiguous() and raw.dtype == self.dtype:  # a tensor made elsewhere joins the class it fills
                self._own.add(id(raw))
                self._free.setdefault(class_below(raw.numel()), []).append((raw, fence))


def size_class(n: int) -> int:
    """The smallest size class holding `n` elements: n itself up to 16, then eight classes per
    power of two (for 2^k < n <= 2^(k+1), multiples of 2^(k+1) / 16)."""
    if n <= 16:
        return max(n, 1)
    step = (1 << (n - 1).bit_length()) // 16
    return -(-n // step) * step


def class_below(n: int) -> int:
    """The largest size class of at most `n` elements (`n` itself when it is one)."""
    c = size_class(n)
    if c == n or n <= 16:
        return c
    step = (1 << (n - 1).bit_length()) // 16
    below = n // step * step
    return below if size_class(below) == below else size_class(below) - step


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
