"""Before the clock starts: every kernel the run will launch, once.

The first launch of a kernel in a process is slow: CUDA loads kernels lazily (the default since
CUDA 12.2), and libraries pick and load one per new shape. In the H100 validation runs the first
uses of shapes took most of the host time of short runs: in an interleaved TP 4 run, 726 ms of its
1,127 ms of host gaps, 115 of its 124 gaps over 1 ms (a GEMM piece's first launch 3-4 ms, a norm's
first launch 40-80 ms). A serving engine pays that at start-up, not on its first requests, and a
simulator that models steady host costs cannot predict it; so the executor pays it here.
"""

from __future__ import annotations

import torch

from hw.collectives import EmulatedCollectives
from hw.kernels import KernelLibrary
from hw.run import Plan
from sim.kernels import Kernel, KernelSpec, collective
from sim.layers import epilogue_kernels, iteration_layer, layer_kernels, prologue_kernels
from sim.policies.interleaved import possible_pieces
from sim.policies.pipeline import micro_batches


def warm_ops(plan: Plan, rank: int, lib: KernelLibrary) -> None:
    """Run one job of each distinct shape (micro-batches included) through the library's own ops,
    then, for an interleaved plan, every piece its planner can cut from the layer's GEMMs (and
    all-reduces, with `split_collectives`). Emulated all-reduces run at their real sizes and group;
    sends, receives and real collectives are left out (they need their peers). Generative plans
    are warmed by `warm_up` instead."""
    if plan.generative or not plan.shapes:
        return
    m, pol = plan.scenario.model.shape(), plan.scenario.policy
    emulated = isinstance(lib.comm, EmulatedCollectives)
    group = tuple(range(plan.tp))
    split = pol.split if plan.policy_name == "interleaved" else 1
    rid = max(plan.shapes) + 1  # request ids no job uses
    for b, q in job_shapes(plan):
        plan.shapes[rid] = (b, q)
        layer = [Kernel(s, rank, rid, 0, group if s.is_collective else None)
                 for s in layer_kernels(m, plan.tp, b, q)]
        kernels = ([Kernel(s, rank, rid, -1) for s in prologue_kernels(m, plan.tp, b, q)] + layer
                   + [Kernel(s, rank, rid, m.layers) for s in epilogue_kernels(m, plan.tp, b, q)])
        try:
            for k in kernels:
                if k.spec.kind in ("send", "recv") or (k.spec.is_collective and not emulated):
                    continue
                lib.prepare(k)
                if k.layer == 0 and split > 1:  # before the whole kernel, which may end the job's state
                    _run_pieces(lib, k, split, pol.split_collectives, emulated)
                lib.run(k)
        finally:
            lib.store.release(rid, None)
            del plan.shapes[rid]
        rid += 1
    if lib.device != "cpu":
        torch.cuda.synchronize()


def job_shapes(plan: Plan) -> list[tuple[int, int]]:
    """Each distinct (batch, sequence) a rank runs: the jobs' and, for a pipeline that cuts jobs
    into micro-batches, the micro-batches'."""
    shapes = set(plan.shapes.values())
    parts = plan.scenario.policy.microbatches
    if plan.policy_name in ("inter_op", "hybrid") and parts > 1:
        shapes |= {(mb, q) for b, q in shapes for mb in micro_batches(b, parts)}
    return sorted(shapes)


def _run_pieces(lib: KernelLibrary, k: Kernel, split: int, split_collectives: bool, emulated: bool) -> None:
    """Each possible piece of `k` once, on the warm job's buffers (the values do not matter)."""
    for piece in possible_pieces(k.spec, split, split_collectives):
        if piece.is_collective and not emulated:
            continue
        lib.run(Kernel(piece, k.rank, k.request_id, k.layer, k.group, parent=k.kernel_id))
        st = lib.store.states.get(k.request_id)
        if st is not None:
            st.cursor.pop((k.layer, piece.name), None)  # the next piece starts a fresh cover


def warm_iterations(plan: Plan, rank: int, lib: KernelLibrary, points: int = 2) -> int:
    """Synthetic iterations spanning a generative plan's workload (`hw.calibrate_iterations`:
    decode batches of 1, 2, 4... sequences at short and long contexts, prompts alone and several
    at once, budget-sized chunks behind cached pasts) through the library's own ops: norms with
    their weights, RoPE, paged prefill and decode attention with their gathers and masks, the KV
    writes, the LM head. Their kernels are the ones the run will launch, where the generic
    kernels `warm_up` runs are not. Iterations needing more KV blocks than the run's pool holds,
    or positions past its longest request, are skipped. Returns how many ran; each leaves nothing
    behind (its blocks freed, its state released)."""
    from hw.calibrate_iterations import SyntheticComposition, iteration_shapes, run_iteration_kernel

    if not plan.generative or not plan.jobs:
        return 0
    m, block, longest = plan.scenario.model.shape(), lib.kv.block, lib.gen.max_len
    shapes = [sh for sh in iteration_shapes(plan.scenario, plan.jobs, points)
              if sum(-(-(c + p) // block) for c, p in sh.prefills) + sum(-(-c // block) for c in sh.decodes)
              <= len(lib.kv.free)  # the run's pool, not grown for this
              and max([c + p for c, p in sh.prefills] + list(sh.decodes)) <= longest]  # its RoPE table's rows
    if not shapes:
        return 0
    layer = plan.kv_layers(rank)[0]
    real, lib.gen = lib.gen, SyntheticComposition(shapes)
    try:
        for i, sh in enumerate(shapes):
            st = lib._gen_state(i)
            at = {s.name: -1 for s in prologue_kernels(m, plan.tp, 1, sh.tokens)}
            at.update({s.name: m.layers - 1 for s in epilogue_kernels(m, plan.tp, 1, 1)})
            for spec in sh.specs():
                run_iteration_kernel(lib, st, Kernel(spec, rank, i, at.get(spec.name, layer)))
            lib._gen_release(st)
    finally:
        lib.gen = real
    if lib.device != "cpu":
        torch.cuda.synchronize()
    return len(shapes)


DENSE_ROWS = 1024  # every row count up to here; GEMMs this short are cheap (weight-bound)
ROW_STEP = 32  # beyond: every ROW_STEP-th


def warm_gemm_sizes(lib: KernelLibrary, specs: list[KernelSpec], max_rows: int, split: int = 1,
                    split_collectives: bool = False) -> None:
    """The model's GEMMs at every row count a run can give them (`row_counts`), through its own
    weights, and, when the policy splits GEMMs (`split` > 1), each piece its planner can cut, a
    strided slice of the weight as the run launches it.

    A generative run's GEMMs have as many rows as an iteration has tokens, which batching decides
    as it goes: their exact shapes are not known before the clock. cuBLAS picks its kernel per
    shape, and no sparse sweep covers its choices: in the H100 decode run, with 1-16, powers of two
    and their midpoints warmed, 29 first launches at row counts between them (55, 67, 99, 137 ...
    471) took 3.7-5.2 ms each, while others between them (47, 90, 250, 266) took none; in the
    chunked interleaved run, 14 first launches of GEMMs and pieces, 3.3-4.8 ms each."""
    weights = {tuple(w.shape): w for w in lib.w.values() if w.dim() == 2}
    cols: set[tuple[int, int, int, int]] = set()  # (k, n of the whole, first column, columns)
    for s in specs:
        if s.kind != "gemm" or "n0" in s.dims:
            continue
        kk, n = s.dims["k"], s.dims["n"]
        cols.add((kk, n, 0, n))
        cols |= {(kk, n, p.dims["n0"], p.dims["n"]) for p in possible_pieces(s, split, split_collectives)}
    rows = row_counts(max_rows)
    for kk, full, n0, n in sorted(cols):
        w = weights.get((kk, full))
        if w is None:
            continue
        x = torch.empty(rows[-1] * kk, device=lib.device, dtype=lib.dtype).normal_(0, 0.1)
        y = torch.empty(rows[-1] * full, device=lib.device, dtype=lib.dtype)
        for r in rows:
            torch.mm(x[:r * kk].view(r, kk), w[:, n0:n0 + n], out=y[:r * full].view(r, full)[:, n0:n0 + n])
        del x, y


def row_counts(max_rows: int) -> list[int]:
    """Every row count up to `DENSE_ROWS`, then every `ROW_STEP`-th, and `max_rows` itself."""
    rows = set(range(1, min(DENSE_ROWS, max_rows) + 1)) | set(range(DENSE_ROWS, max_rows, ROW_STEP))
    rows.add(max_rows)
    return sorted(rows)


def warm_up(plan: Plan, rank: int, lib: KernelLibrary) -> None:
    """Before the clock starts: each distinct compute kernel of a replay or a generative iteration
    once (live encoder and prefill jobs go through `warm_ops`), a generative run's GEMMs at every
    row count (pieces included) and its synthetic iterations, the emulated collectives' scratch
    (all-reduces and sends) and compile, and pinned memory for pipeline receives."""
    m = plan.scenario.model.shape()
    if plan.schedule is not None:
        specs = [op.kernel.spec for op in plan.schedule.by_rank()[rank] if op.kernel is not None]
    elif plan.generative:  # a typical iteration: one prompt beside a few decodes
        prompts = sorted(plan.composition.prompt.values())
        p = min(prompts[len(prompts) // 2], plan.scenario.serving.max_batch_tokens)
        specs = (prologue_kernels(m, plan.tp, 1, p + 4) + iteration_layer(m, plan.tp, [(p, 0)], [p + 1] * 4)
                 + epilogue_kernels(m, plan.tp, 5, 1))
        tokens = plan.scenario.serving.max_batch_tokens
        specs.append(collective("all_reduce", "largest", tokens * m.hidden * m.dtype_bytes))
    else:
        specs = [s for b, q in set(plan.shapes.values()) for s in layer_kernels(m, plan.tp, b, q)]
    live_jobs = plan.schedule is None and not plan.generative  # `warm_ops` runs these shapes through the ops
    seen = set()
    for spec in [] if live_jobs else specs:
        key = (spec.kind, tuple(sorted(spec.dims.items())))
        if spec.is_collective or key in seen:
            continue
        seen.add(key)
        lib.generic.run(Kernel(spec, rank))
    if plan.generative:
        pol = plan.scenario.policy
        warm_gemm_sizes(lib, specs, plan.scenario.serving.max_batch_tokens,
                        pol.split if plan.policy_name == "interleaved" else 1, pol.split_collectives)
        warm_iterations(plan, rank, lib)
    if isinstance(lib.comm, EmulatedCollectives):  # size the scratch, compile the Triton kernel
        largest = max((s.dims["nbytes"] for s in specs if s.kind == "all_reduce"), default=0)
        lib.comm.reserve(largest, plan.tp)
        lib.comm.all_reduce(torch.zeros(1024, device=lib.device, dtype=lib.dtype), tuple(range(max(2, plan.tp))))
        # every size of activation a pipeline stage sends or receives
        sizes = {s.dims["nbytes"] for s in specs if s.kind in ("send", "recv")}
        if live_jobs and plan.scenario.policy.name in ("inter_op", "hybrid"):
            sizes |= {b * q * m.hidden * m.dtype_bytes for b, q in job_shapes(plan)}
        if sizes:
            lib.comm.reserve_host(sum(-(-n // 256) * 256 for n in sizes))  # receives
            lib.comm.reserve(max(sizes), 2)  # sends: one flow's bytes through the scratch
    if lib.device != "cpu":
        torch.cuda.synchronize()
    lib.generic._scratch.clear()
