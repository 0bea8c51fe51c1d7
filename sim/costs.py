"""Solo durations of kernels: a roofline by default, a measured profile when calibrated.

Roofline: a kernel lasts max(FLOPs / peak FLOP/s, bytes / HBM bandwidth) plus a fixed
per-kernel overhead (Williams et al., "Roofline", CACM 2009). GEMMs also pay tile and wave
quantisation (NVIDIA, "Matrix Multiplication Background User's Guide"): the output is cut
into tiles of at most 128 × 128, and each SM computes one tile at a time, so a GEMM lasts
as many waves as ceil(tiles / SMs), each wave the time one SM needs for one tile. When the
output has fewer tiles than SMs, libraries split the K dimension across SMs (CUTLASS
split-K / stream-K), so such a GEMM spreads over ⌊SMs / tiles⌋ K-slices of at least
`MIN_K_SLICE` each instead of leaving SMs idle.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sim.kernels import Kernel, KernelSpec
from sim.links import Topology

TILE = 128
MIN_K_SLICE = 256


class CostModel(Protocol):
    def solo(self, kernel: Kernel) -> float: ...
    def spec_solo(self, spec: KernelSpec, group: tuple[int, ...] | None = None) -> float: ...


CACHE_MAX = 400_000  # cached solo times (each keeps its spec alive): cleared when full


def cached(cache: dict, spec: KernelSpec, group: tuple[int, ...] | None,
           compute: Callable[[KernelSpec, tuple[int, ...] | None], float]) -> float:
    """Solo durations are asked for once per launch, so they are cached per spec object
    (its id; the cache keeps the spec alive so the id is not reused) and group."""
    key = (id(spec), group)
    hit = cache.get(key)
    if hit is None:
        if len(cache) >= CACHE_MAX:  # long runs make new specs (split pieces, iterations): bound it
            cache.clear()
        hit = cache[key] = (compute(spec, group), spec)
    return hit[0]


class CachedSolo:
    """`solo` and `spec_solo` of a cost model, over its `_compute` and `_cache`."""

    __slots__ = ()

    def solo(self, kernel: Kernel) -> float:
        hit = self._cache.get((id(kernel.spec), kernel.group))  # type: ignore[attr-defined]
        if hit is not None:  # asked once per kernel: the cached case without two more calls
            return hit[0]
        return self.spec_solo(kernel.spec, kernel.group)

    def spec_solo(self, spec: KernelSpec, group: tuple[int, ...] | None = None) -> float:
        return cached(self._cache, spec, group, self._compute)  # type: ignore[attr-defined]


@dataclass(slots=True)
class RooflineCost(CachedSolo):
    peak_flops: float
    hbm_bw: float
    sms: int
    kernel_overhead_s: float
    topology: Topology
    _cache: dict = field(default_factory=dict)

    def _compute(self, spec: KernelSpec, group: tuple[int, ...] | None) -> float:
        if spec.is_collective:
            if not group:
                return 0.0
            return self.topology.collective_time(spec.kind, group, spec.dims["nbytes"])
        t_mem = spec.bytes / self.hbm_bw
        t_math = spec.flops / self.peak_flops
        if spec.kind in ("gemm", "bgemm"):
            t_math = max(t_math, self._gemm_waves(spec))
        elif spec.kind == "grouped_gemm" and spec.dims["m"]:
            t_math = max(t_math, self._grouped_waves(spec))
        return max(t_math, t_mem) + self.kernel_overhead_s

    def _grouped_waves(self, spec: KernelSpec) -> float:
        """A grouped GEMM pads each expert's rows to the row tile (as vLLM's moe_align_block_size
        does): priced as `e` GEMMs of the mean rows per expert, waves over them all."""
        d = spec.dims
        return self._waves(d["e"], math.ceil(d["m"] / d["e"]), d["n"], d["k"])

    def _gemm_waves(self, spec: KernelSpec) -> float:
        d = spec.dims
        return self._waves(d.get("b", 1), d["m"], d["n"], d["k"])

    def _waves(self, b: int, m: int, n: int, k: int) -> float:
        # The library picks a tile no bigger than the problem (multiples of 16).
        tm, tn = min(TILE, 16 * math.ceil(m / 16)), min(TILE, 16 * math.ceil(n / 16))
        tiles = b * math.ceil(m / tm) * math.ceil(n / tn)
        k_split = max(1, min(self.sms // tiles, k // MIN_K_SLICE))
        waves = math.ceil(tiles * k_split / self.sms)
        per_sm = self.peak_flops / self.sms
        return waves * 2.0 * tm * tn * math.ceil(k / k_split) / per_sm


@dataclass(slots=True)
class ProfileCost(CachedSolo):
    """Solo durations from a calibrated profile (`sim.profile`): measured shapes exactly,
    log-space interpolation between them, the roofline (scaled by the nearest measured
    shape, with a one-time warning) outside; collectives from the link model, or, when the run
    being predicted emulated them on one GPU, what calibration measured the emulation to last."""

    roofline: RooflineCost
    measured: object  # sim.profile.MeasuredKernels (typed loosely: sim.profile imports this module's users)
    emulation: object | None = None  # sim.profile.EmulatedTimes, when predicting an emulated run
    _cache: dict = field(default_factory=dict)

    @property
    def topology(self) -> Topology:
        return self.roofline.topology

    def _compute(self, spec: KernelSpec, group: tuple[int, ...] | None) -> float:
        if spec.is_collective:
            base = self.roofline.spec_solo(spec, group)
            if self.emulation is None or not group or base <= 0:
                return base
            if spec.kind == "all_reduce":
                return self.emulation.time(base, len(group))  # type: ignore[attr-defined]
            return base + self.emulation.overhead_s  # type: ignore[attr-defined]  # an emulated send
        return self.measured.estimate(spec)  # type: ignore[attr-defined]
