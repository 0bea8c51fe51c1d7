"""The emulated collective's GPU kernel: copy bytes through HBM, then spin on %globaltimer.

Written in Triton; importing this module never fails on a machine without Triton or CUDA
(`HAVE_TRITON` says whether `launch` can be used). Each CTA copies its share of `src` to
`dst`, then reads the GPU's nanosecond global timer (inline PTX) until `duration` has
passed since that CTA started, occupying its SM for the collective's whole duration as an
NCCL channel's CTA does.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # CPU-only installs: the emulated collective is unavailable
    HAVE_TRITON = False

BLOCK = 2048  # int32 words per CTA iteration: 8 KiB, 16-byte vector loads with 4 warps

if HAVE_TRITON:

    @triton.jit
    def _globaltimer():
        return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64,
                                         is_pure=False, pack=1)

    # sizes and the duration vary per launch: one compiled variant for all of them (Triton would
    # otherwise specialise on divisibility by 16 and recompile inside a timed run)
    @triton.jit(do_not_specialize=["per_cta", "total", "duration_ns"])
    def _copy_then_spin(src, dst, per_cta, total, duration_ns, BLOCK: tl.constexpr):
        start = _globaltimer()
        base = tl.program_id(0).to(tl.int64) * per_cta
        lane = tl.arange(0, BLOCK)
        for off in range(0, per_cta, BLOCK):
            idx = base + off + lane
            mask = (off + lane < per_cta) & (idx < total)
            tl.store(dst + idx, tl.load(src + idx, mask=mask), mask=mask)
        now = _globaltimer()
        while now - start < duration_ns:
            now = _globaltimer()


def launch(src, dst, ctas: int, duration_s: float) -> None:
    """Launch on the current stream: `ctas` CTAs copy src→dst (int32 tensors), then spin."""
    if not HAVE_TRITON:
        raise RuntimeError("Triton is not installed")
    total = src.numel()
    per_cta = -(-total // ctas)
    per_cta = -(-per_cta // BLOCK) * BLOCK if per_cta else BLOCK
    _copy_then_spin[(ctas,)](src, dst, per_cta, total, int(duration_s * 1e9), BLOCK=BLOCK, num_warps=4)
