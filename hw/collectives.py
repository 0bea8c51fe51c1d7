"""Collectives for the hw backend: torch.distributed (NCCL/gloo), or emulated on one GPU.

Each implementation runs the collective on the *current* stream, so the runtime's timing
events around a launch bracket it. `group` is the kernel's tuple of global ranks; send and
recv have a two-rank group and talk to the other member.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.distributed as dist

from sim.errors import LigerSimError
from sim.links import Topology


class Collectives(Protocol):
    def all_reduce(self, t: torch.Tensor, group: tuple[int, ...]) -> None: ...
    def send(self, t: torch.Tensor, group: tuple[int, ...]) -> None: ...
    def recv(self, t: torch.Tensor, group: tuple[int, ...]) -> None: ...


def peer_of(rank: int, group: tuple[int, ...]) -> int:
    others = [r for r in group if r != rank]
    if len(group) != 2 or len(others) != 1:
        raise LigerSimError(f"send/recv needs a group of two ranks including rank {rank}, got {group}")
    return others[0]


class NoCollectives:
    """A single rank: collectives over one rank are no-ops; anything wider is an error."""

    def __init__(self, rank: int = 0):
        self.rank = rank

    def _check(self, group: tuple[int, ...]) -> None:
        if len(group) > 1:
            raise LigerSimError(f"a collective over ranks {group} needs several processes or the emulated "
                                "collective; this run has one rank")

    def all_reduce(self, t: torch.Tensor, group: tuple[int, ...]) -> None:
        self._check(group)

    def send(self, t: torch.Tensor, group: tuple[int, ...]) -> None:
        self._check(group)

    def recv(self, t: torch.Tensor, group: tuple[int, ...]) -> None:
        self._check(group)


class DistCollectives:
    """Real collectives through an initialised torch.distributed (NCCL on GPUs, gloo on CPU)."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world
        self._groups: dict[tuple[int, ...], object] = {}

    def group(self, ranks: tuple[int, ...]):
        """The process group of `ranks` (None = the default group), created on first use.

        `use_local_synchronization` lets only the members create it, so ranks need not
        agree on the order in which they first meet each group.
        """
        key = tuple(sorted(ranks))
        if key == tuple(range(self.world)):
            return None
        if key not in self._groups:
            self._groups[key] = dist.new_group(list(key), use_local_synchronization=True)
        return self._groups[key]

    def all_reduce(self, t: torch.Tensor, group: tuple[int, ...]) -> None:
        if len(group) > 1:
            dist.all_reduce(t, group=self.group(group))

    def send(self, t: torch.Tensor, group: tuple[int, ...]) -> None:
        dist.send(t, dst=peer_of(self.rank, group))

    def recv(self, t: torch.Tensor, group: tuple[int, ...]) -> None:
        dist.recv(t, src=peer_of(self.rank, group))


def ring_bytes(nbytes: float, n: int) -> float:
    """Bytes one rank sends (and receives) in a ring all-reduce of `nbytes` over `n` ranks."""
    return 2.0 * (n - 1) / n * nbytes if n > 1 else 0.0


def cta_count(channels: int, copy_bytes: float, duration_s: float, sms: int,
              per_cta_bw: float = 25e9) -> int:
    """CTAs for the emulated collective: NCCL's channel count, more if that many CTAs could
    not move the bytes within the link model's time (one CTA copies ~25 GB/s on an H100:
    8 CTAs measured ~0.2 TB/s), never more than the GPU has SMs."""
    need = math.ceil(copy_bytes / (per_cta_bw * duration_s)) if duration_s > 0 else channels
    return max(1, min(sms, max(channels, need)))


class EmulatedCollectives:
    """Rank 0 of a symmetric group on one GPU: collectives become a spinning copy kernel.

    An all-reduce launches `hw.spin` with as many CTAs as NCCL would use channels; it
    copies the bytes this rank moves in a ring all-reduce through HBM and then spins on
    %globaltimer until the link model's duration has passed, so kernels beside it meet
    the SM and memory contention a real collective causes. A send does the same with one flow's
    bytes and time; a receive copies from pinned host memory. The data is not reduced: only the
    timing is emulated.
    """

    def __init__(self, rank: int, topology: Topology, channels: int = 16, device: str = "cuda"):
        from hw import spin

        if not spin.HAVE_TRITON:
            raise LigerSimError("the single-GPU emulated collective needs Triton; pip install triton "
                                "(it ships with CUDA builds of PyTorch)")
        self.rank, self.topology, self.channels, self.device = rank, topology, channels, device
        self.sms = torch.cuda.get_device_properties(device).multi_processor_count
        self._scratch: torch.Tensor | None = None
        self._retired: list[torch.Tensor] = []  # outgrown scratch may still be read by a queued kernel
        self._pinned: dict[int, torch.Tensor] = {}
        self._arena: torch.Tensor | None = None  # pinned bytes the per-size buffers are cut from
        self._arena_used = 0
        self.launched: list[tuple[int, int, float]] = []  # (ctas, copy bytes, target s), for the record

    def _buffers(self, nbytes: int) -> tuple[torch.Tensor, torch.Tensor]:
        # src and dst halves of nbytes each (int32 words, a multiple of 4 so dst stays 16-byte
        # aligned): the kernel reads nbytes and writes nbytes, the 2 x copy bytes cta_count sizes for
        words = max(4, -(-nbytes // 16) * 4)
        if self._scratch is None or self._scratch.numel() < 2 * words:
            if self._scratch is not None:
                self._retired.append(self._scratch)
            self._scratch = torch.zeros(2 * words, dtype=torch.int32, device=self.device)
        return self._scratch[:words], self._scratch[words:2 * words]

    def reserve(self, nbytes: int, n: int) -> None:
        """Allocate the scratch for the largest all-reduce up front (before the clock starts)."""
        self._buffers(int(ring_bytes(nbytes, n)))

    def all_reduce(self, t: torch.Tensor, group: tuple[int, ...]) -> None:
        if len(group) < 2:
            return
        nbytes = t.numel() * t.element_size()
        self._spin(int(ring_bytes(nbytes, len(group))), self.topology.collective_time("all_reduce", group, nbytes))

    def _spin(self, copy: int, duration: float) -> None:
        """Copy `copy` bytes through HBM with NCCL's channel count of CTAs (more if needed to finish
        in time), then spin until `duration` has passed."""
        from hw import spin

        ctas = cta_count(self.channels, 2 * copy, duration, self.sms)  # read + write through HBM
        src, dst = self._buffers(copy)
        spin.launch(src, dst, ctas, duration)
        self.launched.append((ctas, copy, duration))

    def _host(self, t: torch.Tensor) -> torch.Tensor:
        """Pinned host memory for `t`'s bytes: one buffer per size (copies of one size are
        stream-ordered), cut from a pinned arena reserved before the clock starts; allocating
        pinned memory in a run (cudaHostAlloc) stalled each first send of a size by ~2.5 ms on
        an H100 machine."""
        n = t.numel()
        buf = self._pinned.get(n)
        if buf is None or buf.dtype != t.dtype:
            nbytes = -(-n * t.element_size() // 256) * 256
            size = 0 if self._arena is None else self._arena.numel()
            if self._arena_used + nbytes > size:  # a new arena (buffers already cut keep the old one)
                self.reserve_host(max(nbytes, 2 * size))
            raw = self._arena[self._arena_used:self._arena_used + nbytes]
            self._arena_used += nbytes
            buf = self._pinned[n] = raw[:n * t.element_size()].view(t.dtype)
        return buf

    def reserve_host(self, nbytes: int) -> None:
        """Pin host memory for sends and receives of up to `nbytes` in all (before the clock starts)."""
        if self._arena is None or self._arena.numel() - self._arena_used < nbytes:
            self._arena = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
            self._arena_used = 0

    def send(self, t: torch.Tensor, group: tuple[int, ...]) -> None:
        """A pipeline send as the all-reduce is emulated: the activation's bytes copied through
        HBM by NCCL's channel count of CTAs, then a spin until the link model's time for one flow
        to the next stage has passed. A copy to pinned host memory moved them at PCIe speed
        instead: the H100 runs' sends took 97 us (median) where the link model gives 23."""
        if len(group) < 2:
            return
        nbytes = t.numel() * t.element_size()
        self._spin(nbytes, self.topology.collective_time("send", group, nbytes))

    def recv(self, t: torch.Tensor, group: tuple[int, ...]) -> None:
        t.view(-1).copy_(self._host(t), non_blocking=True)
