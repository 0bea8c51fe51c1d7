"""Kernel descriptors: what both backends need to run, time and report one kernel.

A `KernelSpec` is the shape-level description (kind, dims, FLOPs, bytes), shared by every
layer and request that runs the same shape, so costs are computed once per shape. A
`Kernel` is one launch of a spec on one rank for one request and layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Kernel classes are what the contention table is keyed by.
KERNEL_CLASSES = ("compute", "memory", "collective", "copy")

# kind -> class. Attention here is the fused (flash) prefill kernel: compute-bound.
KIND_CLASS: dict[str, str] = {
    "gemm": "compute",
    "bgemm": "compute",
    # mixture of experts: one launch computing several experts' GEMMs, each over its own rows
    "grouped_gemm": "compute",
    "attention": "compute",
    "decode_attention": "memory",  # one query token per sequence: reads the whole KV cache
    "softmax": "memory",
    "layernorm": "memory",
    "rmsnorm": "memory",
    "elementwise": "memory",
    "rope": "memory",
    "copy": "copy",
    "all_reduce": "collective",
    "send": "collective",
    "recv": "collective",
    # disaggregated serving: a request's KV cache from a prefill replica's GPUs to a decode
    # replica's (group: sender, receiver pairs, one per flow of `nbytes`), one-sided and by DMA
    # (copy engines or the NIC, as NIXL and Mooncake move it), so it takes no SMs
    "kv_push": "copy",
}
COLLECTIVE_KINDS = frozenset({"all_reduce", "send", "recv", "kv_push"})
SPLITTABLE_KINDS = frozenset({"gemm"})


@dataclass(slots=True, eq=False)
class KernelSpec:
    """Shape-level description of a kernel.

    dims by kind: gemm m,n,k; bgemm b,m,n,k; grouped_gemm e,m,n,k (m rows over e experts);
    attention b,h,sq,skv,d; softmax/elementwise/norms/rope/copy: elems; collectives: nbytes (payload each rank contributes).
    `fraction` < 1 marks a piece of a GEMM split along N (`parent_n` is the whole N).
    """

    kind: str
    name: str
    dims: dict[str, int]
    flops: float
    bytes: float
    dtype_bytes: int = 2
    fraction: float = 1.0
    cls: str = field(init=False)

    def __post_init__(self) -> None:
        self.cls = KIND_CLASS[self.kind]

    @property
    def is_collective(self) -> bool:
        return self.kind in COLLECTIVE_KINDS

    @property
    def is_piece(self) -> bool:
        """A piece of a split GEMM (or collective): its dims say where in the whole it lies."""
        return self.fraction != 1.0 or "n_full" in self.dims

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "name": self.name, "dims": self.dims, "flops": self.flops,
             "bytes": self.bytes, "dtype_bytes": self.dtype_bytes}
        if self.fraction != 1.0:
            d["fraction"] = self.fraction
        return d

    @classmethod
    def from_dict(cls, d: dict) -> KernelSpec:
        return cls(kind=d["kind"], name=d["name"], dims=dict(d["dims"]), flops=float(d["flops"]),
                   bytes=float(d["bytes"]), dtype_bytes=int(d.get("dtype_bytes", 2)),
                   fraction=float(d.get("fraction", 1.0)))


@dataclass(slots=True, eq=False)
class Kernel:
    """One launch of `spec` on `rank` (a collective: this rank's part of it)."""

    spec: KernelSpec
    rank: int
    request_id: int = -1
    layer: int = -1
    group: tuple[int, ...] | None = None
    kernel_id: int = -1
    parent: int = -1  # kernel_id of the GEMM this piece was split from
    seq: int = -1  # collectives: order of issue within `group`, assigned at launch


# ------------------------------------------------------------------ constructors
def gemm(name: str, m: int, n: int, k: int, dtype_bytes: int = 2, bias: bool = False) -> KernelSpec:
    nbytes = (m * k + k * n + m * n + (n if bias else 0)) * dtype_bytes
    return KernelSpec("gemm", name, {"m": m, "n": n, "k": k}, 2.0 * m * n * k, nbytes, dtype_bytes)


def bgemm(name: str, b: int, m: int, n: int, k: int, dtype_bytes: int = 2) -> KernelSpec:
    nbytes = b * (m * k + k * n + m * n) * dtype_bytes
    return KernelSpec("bgemm", name, {"b": b, "m": m, "n": n, "k": k}, 2.0 * b * m * n * k, nbytes, dtype_bytes)


def grouped_gemm(name: str, experts: float, m: float, n: int, k: int, dtype_bytes: int = 2,
                 zero_rows: float = 0.0) -> KernelSpec:
    """`m` token rows spread over `experts` experts' GEMMs of N × K each, in one launch (vLLM's
    fused MoE, CUTLASS grouped GEMM): it reads every one of those experts' weights once, and writes
    zeros to `zero_rows` output rows routed elsewhere (expert parallelism). Rows and experts may be
    expectations (`sim.moe`): FLOPs and bytes take them as they are, the dims (what tiles are
    counted over) rounded."""
    nbytes = (experts * k * n + m * k + (m + zero_rows) * n) * dtype_bytes
    dims = {"e": max(1, round(experts)), "m": max(1, round(m)), "n": n, "k": k}
    return KernelSpec("grouped_gemm", name, dims, 2.0 * m * n * k, float(nbytes), dtype_bytes)


def attention(name: str, b: int, h: int, sq: int, skv: int, d: int, kv_h: int, causal: bool,
              dtype_bytes: int = 2) -> KernelSpec:
    """Fused (flash) attention: QK^T and PV FLOPs, reading Q, K, V once and writing O."""
    pairs = sq * skv - (sq * (sq - 1) // 2 if causal and sq == skv else 0)
    flops = 4.0 * b * h * pairs * d
    nbytes = b * (2 * h * sq * d + 2 * kv_h * skv * d) * dtype_bytes
    return KernelSpec("attention", name, {"b": b, "h": h, "sq": sq, "skv": skv, "d": d, "kv_h": kv_h},
                      flops, nbytes, dtype_bytes)


def prefill_attention(name: str, h: int, kv_h: int, d: int, chunks: list[tuple[int, int]],
                      dtype_bytes: int = 2) -> KernelSpec:
    """Causal attention of several prompts (or prompt chunks) at once, each `chunk` new
    tokens attending to `past` cached ones and to themselves (a varlen flash-attention call)."""
    pairs = sum(c * p + c * (c + 1) // 2 for c, p in chunks)
    sq, skv = sum(c for c, _ in chunks), sum(c + p for c, p in chunks)
    nbytes = (2 * h * sq * d + 2 * kv_h * skv * d) * dtype_bytes
    return KernelSpec("attention", name, {"b": len(chunks), "h": h, "sq": sq, "skv": skv, "d": d, "kv_h": kv_h},
                      4.0 * h * pairs * d, float(nbytes), dtype_bytes)


def decode_attention(name: str, h: int, kv_h: int, d: int, contexts: list[int], dtype_bytes: int = 2) -> KernelSpec:
    """One new token per sequence attending to its whole context: memory-bound, it reads
    every cached K and V once (paged attention). `ctx_max`, the longest context, is carried
    because real kernels do not spread uneven contexts perfectly: one padded to the longest (the
    hw backend's batched SDPA) or split per sequence takes time that follows b × ctx_max, which
    is what measured profiles interpolate along (`sim.profile.work`)."""
    ctx = sum(contexts)
    nbytes = (2 * kv_h * ctx * d + 2 * len(contexts) * h * d) * dtype_bytes
    return KernelSpec("decode_attention", name, {"b": len(contexts), "h": h, "ctx": ctx, "d": d, "kv_h": kv_h,
                                                 "ctx_max": max(contexts)},
                      4.0 * h * ctx * d, float(nbytes), dtype_bytes)


def pointwise(kind: str, name: str, elems: int, reads: int, writes: int, flops_per_elem: float,
              dtype_bytes: int = 2) -> KernelSpec:
    """A memory-bound kernel touching `reads` + `writes` tensors of `elems` elements."""
    return KernelSpec(kind, name, {"elems": elems}, flops_per_elem * elems,
                      float((reads + writes) * elems * dtype_bytes), dtype_bytes)


def collective(kind: str, name: str, nbytes: int) -> KernelSpec:
    return KernelSpec(kind, name, {"nbytes": nbytes}, 0.0, float(nbytes), 2)


def split_gemm(spec: KernelSpec, fraction: float) -> tuple[KernelSpec, KernelSpec]:
    """Split a GEMM (or a piece of one) along N: a head piece holding `fraction` of the
    original GEMM's columns, and the rest. Columns are whole, so the pieces' FLOPs add up
    exactly to the parent's; `n0` records where each piece's columns start.
    """
    if spec.kind not in SPLITTABLE_KINDS:
        raise ValueError(f"cannot split a {spec.kind} kernel")
    d = spec.dims
    n, n0, n_full = d["n"], d.get("n0", 0), d.get("n_full", d["n"])
    n_head = max(1, min(n - 1, round(n_full * fraction)))
    bias = spec.bytes > (d["m"] * d["k"] + d["k"] * n + d["m"] * n) * spec.dtype_bytes  # each piece its slice
    parts = []
    for offset, n_part in ((n0, n_head), (n0 + n_head, n - n_head)):
        p = gemm(spec.name, d["m"], n_part, d["k"], spec.dtype_bytes, bias)
        p.dims.update(n0=offset, n_full=n_full)  # the columns [n0, n0 + n) of the parent's output
        p.fraction = n_part / n_full
        parts.append(p)
    return parts[0], parts[1]



def split_collective(spec: KernelSpec, fraction: float) -> tuple[KernelSpec, KernelSpec]:
    """Split an all-reduce into one over the first `fraction` of the original payload and
    one over the rest: all-reduce is elementwise, so reducing the two slices separately
    gives the same result (the chunking NCCL itself does internally, made explicit)."""
    if spec.kind != "all_reduce":
        raise ValueError(f"cannot split a {spec.kind} kernel")
    d, elem = spec.dims, spec.dtype_bytes
    n = d["nbytes"] // elem
    b0, full = d.get("b0", 0), d.get("nbytes_full", d["nbytes"])
    n_head = max(1, min(n - 1, round(full // elem * fraction)))
    parts = []
    for offset, count in ((b0, n_head), (b0 + n_head * elem, n - n_head)):
        p = collective("all_reduce", spec.name, count * elem)
        p.dims.update(b0=offset, nbytes_full=full)  # bytes [b0, b0 + nbytes) of the original buffer
        p.fraction = count * elem / full
        parts.append(p)
    return parts[0], parts[1]
