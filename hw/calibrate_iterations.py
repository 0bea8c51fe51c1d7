"""Calibration of generative serving's iteration kernels (`ligersim calibrate`, generative scenarios).

A continuous-batching iteration runs its GEMMs, norms and RoPE over all its tokens at once,
one varlen `prefill_attention` over its prompt chunks and one paged `decode_attention` over
its decoding sequences. Their costs depend on what the iteration batches, not on one job's
(batch, seq_len), so they are measured on synthetic iterations that span the scenario's
workload:

- decode iterations: b sequences (powers of two up to the scenario's largest batch) each at
  one context length (log-spaced from the shortest prompt to the longest prompt + output);
- prefill iterations: 1, 2, 4, ... prompts at log-spaced lengths, up to the most tokens one
  iteration can carry (the token budget, or all the prompts that could wait at once); with
  chunked prefill, budget-sized chunks behind log-spaced cached pasts.

Each iteration runs through the same kernel library, paged KV cache and index tensors as a
`ligersim hw run` (`hw.kernels.GEN_OPS`, `hw.generative.build_iter_data`), so a measured
`decode_attention` includes its block gather and mask exactly as executed there. GEMMs (whole and
split pieces) run as plain GEMMs of their shape, as in the encoder calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hw.generative import IterBatch, Seg
from hw.kernels import FOLDING
from sim.kernels import Kernel, KernelSpec, split_gemm
from sim.layers import ModelShape, epilogue_kernels, iteration_layer, prologue_kernels


@dataclass(frozen=True)
class IterShape:
    """One synthetic iteration of one model sharding: prompt chunks (new, past) and decode contexts."""

    model: ModelShape
    tp: int
    block: int
    prefills: tuple[tuple[int, int], ...]
    decodes: tuple[int, ...]

    @property
    def tokens(self) -> int:
        return sum(c for c, _ in self.prefills) + len(self.decodes)

    def specs(self, fractions: tuple[int, ...] = ()) -> list[KernelSpec]:
        """What a generative policy launches for this iteration on one rank (every sequence
        emits a token), without collectives; GEMMs also as split pieces k/8."""
        m, tp = self.model, self.tp
        specs = [s for s in prologue_kernels(m, tp, 1, self.tokens)
                 + iteration_layer(m, tp, list(self.prefills), list(self.decodes))
                 + epilogue_kernels(m, tp, len(self.prefills) + len(self.decodes), 1) if not s.is_collective]
        pieces = [split_gemm(s, j / 8)[0] for s in specs if s.kind == "gemm" and s.dims["n"] >= 8 for j in fractions]
        return specs + pieces


def _grid(lo: int, hi: int, points: int) -> list[int]:
    lo, hi = max(1, lo), max(1, hi)
    return sorted({int(round(x)) for x in np.geomspace(lo, max(lo, hi), max(1, points))} | {lo, hi})


def iteration_shapes(scn, jobs, seq_points: int) -> list[IterShape]:
    """Synthetic iterations spanning a generative scenario's workload (see the module docstring)."""
    sv, m, tp = scn.serving, scn.model.shape(), scn.tp()
    prompts = [j.prompt for j in jobs]
    longest = max(j.prompt + j.output_tokens for j in jobs)
    max_seqs = max(1, min(sv.max_batch_seqs, sv.max_batch_tokens, len(jobs)))
    batches = sorted({2 ** i for i in range(max_seqs.bit_length()) if 2 ** i <= max_seqs} | {max_seqs})
    out: list[IterShape] = []
    for b in batches:
        for ctx in _grid(min(prompts) + 1, longest, seq_points):
            out.append(IterShape(m, tp, sv.kv_block_tokens, (), (ctx,) * b))
    budget = sv.max_batch_tokens
    # the most tokens one iteration can carry: the budget, or every prompt that could be waiting
    cap = min(budget, sum(sorted(prompts)[-max_seqs:]))
    for p in _grid(min(prompts), max(prompts), seq_points):
        if sv.chunked_prefill and p > budget:
            for past in _grid(budget, p - budget, max(2, seq_points // 2)):
                out.append(IterShape(m, tp, sv.kv_block_tokens, ((budget, past),), ()))
            p = budget
        k = 1
        while k == 1 or (k * p <= cap and k <= max_seqs):  # several prompts admitted at once
            out.append(IterShape(m, tp, sv.kv_block_tokens, ((p, 0),) * k, ()))
            k *= 2
    return out


class SyntheticComposition:
    """What `hw.kernels.KernelLibrary` asks a `hw.generative.Composition` for, serving the
    synthetic iterations: iteration i's sequences are requests i * 10_000 + j, each finishing
    in it (so its KV blocks are freed when the iteration is released)."""

    def __init__(self, shapes: list[IterShape]):
        self.block = shapes[0].block
        self.prompt: dict[int, int] = {}
        self.output: dict[int, int] = {}
        self._batches: list[IterBatch] = []
        longest, most = 1, 1
        for i, sh in enumerate(shapes):
            pre = [Seg(i * 10_000 + j, c, past, True, False) for j, (c, past) in enumerate(sh.prefills)]
            dec = [Seg(i * 10_000 + len(pre) + j, 1, ctx - 1, True, True) for j, ctx in enumerate(sh.decodes)]
            for s in pre + dec:
                self.prompt[s.rid], self.output[s.rid] = s.past + s.new, 1
                longest = max(longest, s.past + s.new + 1)
            most = max(most, sum(-(-(s.past + s.new) // self.block) for s in pre + dec) * self.block)
            self._batches.append(IterBatch(i, pre, dec, tuple(s.rid for s in pre + dec)))
        self.capacity_tokens, self.max_len = most, longest

    def get(self, index: int) -> IterBatch:
        return self._batches[index]


def run_iteration_kernel(lib, st, k: Kernel, fold_each: bool = True) -> None:
    """One kernel of a synthetic generative iteration, over its layer's weights: its named op
    (`named_op` when timed alone, `fold_each`; as a run calls it inside a whole sequence), else a
    generic kernel."""
    lib.use_layer(k.layer)
    op = lib.ops.get(k.spec.name)
    if op is None:
        lib.generic.run(k)
    elif fold_each:
        named_op(op, lib, st, k)
    else:
        op(lib, st, k)


def named_op(op, lib, st, k: Kernel) -> None:
    """A named op as it runs in a layer after the first: one that folds the previous layer's
    residual add in (`hw.kernels.FOLDING`) does so at every repetition, not only the first (timed
    without it, the H100 profile put a 13B prefill's final norm at 26 us; CUPTI measured 50)."""
    if k.spec.name in FOLDING and "mlp" in st.bufs:
        st.fold = True
    op(lib, st, k)
