"""Correctness of the kernels: a tensor-parallel run equals the unsharded layer.

`verify` starts `tp` CPU processes joined by gloo (real torch.distributed). Each runs a
small program through `TorchRuntime` — every kernel of the model's layers, compute on
one stream and collectives on another, joined by events, optionally with every GEMM split
into N-pieces and every all-reduce into halves — and rank 0 compares each rank's output
(and the gathered LM-head logits) with `hw.reference` computed in one process, float32.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hw import reference
from hw.collectives import DistCollectives
from hw.kernels import KernelLibrary
from hw.runtime import TorchRuntime, drive
from hw.weights import Shard, full_weights
from sim.kernels import Kernel, KernelSpec, split_collective, split_gemm
from sim.layers import ModelShape, epilogue_kernels, layer_kernels, prologue_kernels
from sim.policies.common import RankPolicy
from sim.runtime import PolicyGen, Runtime


@dataclass(frozen=True)
class Case:
    name: str
    model: ModelShape
    split: bool = False
    batch: int = 2
    seq: int = 8


ENCODER = ModelShape("tiny-encoder", "encoder", 2, 256, 4, 4, 64, 1024, False, 0, "layernorm", False, 2)
DECODER = ModelShape("tiny-decoder", "decoder", 2, 256, 4, 2, 64, 512, True, 100, "rmsnorm", True, 2)
CASES = tuple(Case(f"{m.arch}{'-split' if s else ''}", m, s) for m in (ENCODER, DECODER) for s in (False, True))


def pieces(spec: KernelSpec, split: bool) -> list[KernelSpec]:
    """The kernel itself, or (split) GEMMs in 3/8, 2/8, 3/8 of N and all-reduces in halves."""
    if not split:
        return [spec]
    if spec.kind == "gemm" and spec.dims["n"] >= 8:
        a, rest = split_gemm(spec, 3 / 8)
        return [a, *split_gemm(rest, 2 / 8)]
    if spec.kind == "all_reduce":
        return list(split_collective(spec, 1 / 2))
    return [spec]


def layer_program(m: ModelShape, tp: int, batch: int, seq: int, split: bool, request_id: int = 0) -> RankPolicy:
    """One request through the whole model; compute and communication on two streams."""

    def run(rt: Runtime) -> PolicyGen:
        streams = {False: rt.new_stream(-1), True: rt.new_stream(0)}
        group = tuple(range(tp))
        steps = [(s, -1) for s in prologue_kernels(m, tp, batch, seq)]
        steps += [(s, layer) for layer in range(m.layers) for s in layer_kernels(m, tp, batch, seq)]
        steps += [(s, m.layers) for s in epilogue_kernels(m, tp, batch, seq)]
        cur = streams[False]
        for spec, layer in steps:
            for piece in pieces(spec, split):
                stream = streams[piece.is_collective]
                if stream != cur:
                    ev = rt.new_event()
                    rt.record(ev, cur)
                    rt.wait(stream, ev)
                    cur = stream
                rt.launch(Kernel(piece, rt.rank, request_id, layer, group if piece.is_collective else None), stream)
        done = rt.new_event()
        rt.record(done, cur)
        yield rt.sync(done)

    return run


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _rank(rank: int, tp: int, cases: tuple[Case, ...], init: str, queue) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // tp))
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=tp, timeout=timedelta(seconds=120))
    try:
        errors: dict[str, float] = {}
        for case in cases:
            m, b, s = case.model, case.batch, case.seq
            lib = KernelLibrary(m, Shard(tp, rank), "cpu", torch.float32, DistCollectives(rank, tp),
                                shape_of=lambda _r, b=b, s=s: (b, s), keep=True)
            rt = TorchRuntime(rank, tp, lambda _k: 0.0, lib, "cpu")
            drive(layer_program(m, tp, b, s, case.split)(rt), rt)
            out = {"y": lib.output(0)}
            if m.vocab:
                out["logits"] = lib.output(0, "logits")
            got: list | None = [None] * tp if rank == 0 else None
            dist.gather_object(out, got, dst=0)
            if rank == 0:
                assert got is not None
                full = full_weights(m)
                y = reference.forward(m, full, lib.store.input(0, (b * s, m.hidden)), b, s, m.layers)
                err = max(_rel(o["y"], y) for o in got)
                if m.vocab:
                    logits = torch.cat([o["logits"] for o in got], dim=1)[:, :m.vocab]
                    err = max(err, _rel(logits, reference.logits(m, full, y, b, s)))
                errors[case.name] = err
        if rank == 0:
            queue.put(errors)
    finally:
        dist.destroy_process_group()


def verify(cases: tuple[Case, ...] = CASES, tp: int = 2) -> dict[str, float]:
    """Relative error (max over ranks) of each case's output against the unsharded reference."""
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    with tempfile.TemporaryDirectory(prefix="ligersim-verify-") as tmp:
        mp.spawn(_rank, args=(tp, cases, f"file://{tmp}/rendezvous", queue), nprocs=tp, join=True)
    return queue.get()


if __name__ == "__main__":
    for name, err in verify().items():
        print(f"{name:16s} relative error {err:.2e}")
