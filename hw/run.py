"""Run a scenario or replay an IR on torch, writing the simulator's output files.

The public entry points (`run_scenario`, `replay_ir`) import torch only once the device
is checked, so a missing install is a `LigerSimError`. A *plan* (scenario, jobs, one
policy per rank, solo-cost model, link model) is rebuilt from its `Source` in every
process, because policies are closures that cannot cross process boundaries.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hw.torchenv import check_device
from sim import ir
from sim.errors import LigerSimError
from sim.ir import Op, Schedule
from sim.jobs import Job
from sim.kernels import Kernel
from sim.layers import ModelShape
from sim.links import Topology
from sim.outputs import write_run
from sim.policies.common import RankPolicy
from sim.runtime import replay_policy
from sim.scenario import Scenario, load_scenario
from sim.simulate import (
    events_frame,
    iteration_table,
    jobs_from_events,
    jobs_from_meta,
    load_jobs,
    make_engine,
    prepare,
    run_meta,
    scenario_of,
)

# Policies whose decisions read the clock: on several processes their ranks use rank 0's.
CLOCK_DECIDED = frozenset({"interleaved"})


@dataclass(frozen=True)
class Source:
    """Where a plan comes from: a scenario file (`jobs`: only the first N) or an IR file."""

    kind: str  # scenario | ir
    path: str
    jobs: int | None = None


@dataclass(frozen=True)
class Options:
    device: str = "cuda"
    emulate: bool | None = None  # None: emulate rank 0 when the GPUs are fewer than the ranks
    channels: int = 16  # CTAs of the emulated collective (NCCL channels)
    trace: bool = True
    timeout_s: float = 300.0
    logits: bool = False  # generative: also write logits.pt (every emitted token's logits)
    timing: str = "events"  # cuda: CUDA events around each launch, or CUPTI (hw.cupti)
    # run the scenario's first N jobs before the clock and keep the host's cost per op in hw.json
    # (`host_in_process`; hw.launch.host_probe says why)
    host_probe_jobs: int = 0


@dataclass
class Plan:
    scenario: Scenario
    world: int
    tp: int
    policies: list[RankPolicy]
    solo: Callable[[Kernel], float]
    topology: Topology
    shapes: dict[int, tuple[int, int]]
    policy_name: str
    meta: dict
    jobs: list[Job] | None = None  # None: recovered from the IR's sleeps (replay)
    schedule: Schedule | None = None
    max_shape: tuple[int, int] = (1, 1)
    composition: Any = None  # generative: hw.generative.Composition (what each iteration batches)
    scheduler: Any = None  # generative live runs: the BatchScheduler the policies drive
    ctx: Any = None  # live runs: the policies' PolicyContext

    @property
    def generative(self) -> bool:
        return self.composition is not None

    @property
    def clock_decided(self) -> bool:
        """Whether the policy decides from the clock (so ranks must read rank 0's): Liger's
        planner, and every generative policy's batching (it admits what has arrived by now)."""
        return self.policy_name in CLOCK_DECIDED or (self.generative and self.schedule is None)

    def kv_layers(self, rank: int) -> list[int]:
        """The layers whose KV cache `rank` holds (its pipeline stage's)."""
        if self.schedule is not None:
            return sorted({op.kernel.layer for op in self.schedule.by_rank()[rank] if op.kernel is not None
                           and op.kernel.spec.kind in ("attention", "decode_attention")})
        m, pp = self.scenario.model.shape(), self.scenario.pp()
        if pp <= 1 or self.ctx is None:
            return list(range(m.layers))
        from sim.policies.pipeline import stages

        for stage in stages(self.ctx, self.tp, pp):
            if rank in stage.ranks:
                return list(stage.layers)
        return []


@dataclass
class RankResult:
    rank: int
    rows: list[tuple]
    ops: list[Op]
    info: dict = field(default_factory=dict)
    logits: dict | None = None  # generative with Options.logits: (request, position) -> this rank's shard
    cupti: list[tuple] = field(default_factory=list)  # CUPTI runs: (rank, kernel_id, start, end, ready) per activity


def one_replica(scn: Scenario, file: str) -> None:
    """What the CUDA backend runs: one model replica of a dense model. Several data-parallel
    replicas and mixture-of-experts layers are simulated only."""
    if scn.policy.dp > 1:
        raise LigerSimError(f"policy.dp={scn.policy.dp}: the CUDA backend runs one model replica; run one replica's "
                            "GPUs with policy.dp: 1 (the simulator models replicas, whose only shared resource is "
                            "the interconnect)", file=file, field="policy.dp")
    dense_only(scn, file)


def dense_only(scn: Scenario, file: str) -> None:
    """The CUDA backend's kernel library has no mixture-of-experts layers (nor calibration, then)."""
    if scn.model.experts:
        raise LigerSimError(f"model {scn.model.name} is a mixture of experts ({scn.model.experts} experts): the CUDA "
                            "backend runs dense models only; `ligersim run` simulates it", file=file,
                            field="model.experts")


def build_plan(src: Source) -> Plan:
    if src.kind == "scenario":
        scn, base = load_scenario(src.path)
        one_replica(scn, src.path)
        jobs = load_jobs(scn, base, src.jobs)
        engine, cost, rank_policies, ctxs = prepare(scn, jobs, record_ir=False, file=src.path)
        ctx = ctxs[0]
        shapes = {j.request_id: (j.batch, j.seq_len) for j in jobs}
        plan = Plan(scn, scn.hardware.count, scn.tp(), rank_policies, cost.solo, engine.topology, shapes,
                    scn.policy.name, run_meta(scn, jobs), jobs=jobs, max_shape=_largest(shapes), ctx=ctx)
        if scn.serving.mode == "generative":
            from hw.generative import Composition

            plan.composition, plan.scheduler = Composition.live(jobs, ctx.scheduler), ctx.scheduler
            plan.max_shape = (1, scn.serving.max_batch_tokens)
        return plan
    schedule = ir.load(src.path)
    scn = scenario_of(schedule, src.path)
    one_replica(scn, src.path)
    engine, cost = make_engine(scn, record_ir=False)
    jobs = jobs_from_meta(schedule.meta)
    shapes = ({j.request_id: (j.batch, j.seq_len) for j in jobs} if jobs
              else shapes_from_ops(schedule.ops, scn.model.shape(), scn.tp()))
    plan = Plan(scn, schedule.world, scn.tp(), [replay_policy(ops) for ops in schedule.by_rank()], cost.solo,
                engine.topology, shapes, f"replay:{schedule.meta.get('policy', '?')}", dict(schedule.meta),
                jobs=jobs, schedule=schedule, max_shape=_largest(shapes))
    if scn.serving.mode == "generative":
        from hw.generative import Composition

        plan.composition = Composition.replay(jobs, schedule.meta, schedule.ops, scn.serving.kv_block_tokens, src.path)
        plan.max_shape = (1, scn.serving.max_batch_tokens)
    return plan


def _largest(shapes: dict[int, tuple[int, int]]) -> tuple[int, int]:
    return max(shapes.values(), key=lambda s: s[0] * s[1], default=(1, 1))


def shapes_from_ops(ops: list[Op], m: ModelShape, tp: int) -> dict[int, tuple[int, int]]:
    """(batch, seq) of each request, read off its first attention kernel in the IR."""
    nh = max(1, m.heads // tp)
    out: dict[int, tuple[int, int]] = {}
    for op in ops:
        k = op.kernel
        if k is None or k.request_id < 0 or k.request_id in out:
            continue
        d = k.spec.dims
        if k.spec.kind == "bgemm" and k.spec.name == "qk_bmm":
            out[k.request_id] = (d["b"] // nh, d["m"])
        elif k.spec.kind == "attention":
            out[k.request_id] = (d["b"], d["sq"])
    return out


def write_outputs(plan: Plan, results: list[RankResult], out: Path, opts: Options, info: dict) -> dict:
    """The simulator's files (same schema) plus hw.json describing the machine and run."""
    results = sorted(results, key=lambda r: r.rank)
    rows = [row for r in results for row in r.rows]
    if plan.scheduler is not None and "iterations" not in plan.meta:  # what the live run batched, as `run` records
        sched = plan.scheduler
        plan.meta.update(iterations=iteration_table(sched), kv_log=sched.kv_log,
                         kv_capacity_tokens=sched.total_blocks * sched.block)
    schedule = Schedule(plan.world, [op for r in results for op in r.ops], plan.meta)
    jobs = plan.jobs if plan.jobs is not None else jobs_from_events(rows, plan.schedule or schedule)
    events = events_frame(rows)
    interrupted = any(r.info.get("interrupted") for r in results)
    summary = write_run(out, events, jobs, schedule, plan.policy_name, None,
                        {"scenario": plan.scenario.name, **({"interrupted": True} if interrupted else {})},
                        trace=opts.trace)
    if interrupted:
        print(f"ligersim: interrupted; wrote the {len(events):,} kernels completed so far to {out}/",
              file=sys.stderr)
    info = {**info, "ranks": [r.info for r in results], "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(), "python": platform.python_version()}
    if opts.logits and plan.generative:
        info["logits"] = _save_logits(plan, results, out / "logits.pt")
    activities = [a for r in results for a in r.cupti]
    if activities:  # the device activities behind each op's CUPTI time (`hw.cupti.OpTiming`)
        import pandas as pd

        pd.DataFrame(activities, columns=["rank", "kernel_id", "start_s", "end_s", "ready_s"]).to_parquet(
            out / "cupti_kernels.parquet", index=False)
        info["cupti_kernels"] = "cupti_kernels.parquet: every device activity (start, end, launch call returned)"
    (out / "hw.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return summary


def _save_logits(plan: Plan, results: list[RankResult], path: Path) -> str:
    """logits.pt: {(request, position): full-vocabulary logits (float32)} of every emitted token."""
    import torch

    from hw.generative import merge_logits

    m = plan.scenario.model.shape()
    merged = merge_logits([(r.rank % plan.tp, r.logits or {}) for r in results], plan.tp, m.vocab)
    if merged is None:
        return "not written: some tensor-parallel ranks were not executed (emulated)"
    torch.save(merged, path)
    return f"{path.name}: {len(merged)} tokens"


def run_scenario(scenario_path: str | Path, out_dir: str | Path, device: str = "cuda", jobs: int | None = None,
                 emulate: bool | None = None, channels: int = 16, trace: bool = True, logits: bool = False,
                 timing: str = "events", host_probe_jobs: int = 0) -> dict:
    """Run a scenario's policy on `device`; returns the summary (also written to out_dir).
    `logits` (generative): also write logits.pt with every emitted token's logits.
    `host_probe_jobs`: first run that many of its jobs before the clock, for their host costs."""
    check_device(device)
    _check_timing(device, timing)
    if host_probe_jobs < 0:
        raise LigerSimError(f"must be ≥ 0, got {host_probe_jobs}", field="--host-probe-jobs")
    src = Source("scenario", str(Path(scenario_path).resolve()), jobs)
    return _execute(src, Path(out_dir), Options(device, emulate, channels, trace, logits=logits, timing=timing,
                                                host_probe_jobs=host_probe_jobs))


def replay_ir(ir_path: str | Path, out_dir: str | Path, device: str = "cuda", emulate: bool | None = None,
              channels: int = 16, trace: bool = True, logits: bool = False, timing: str = "events") -> dict:
    """Execute a recorded IR verbatim on `device`; returns the summary (also written to out_dir)."""
    check_device(device)
    _check_timing(device, timing)
    src = Source("ir", str(Path(ir_path).resolve()))
    return _execute(src, Path(out_dir), Options(device, emulate, channels, trace, logits=logits, timing=timing))


def _check_timing(device: str, timing: str) -> None:
    from hw.runtime import TIMINGS

    if timing not in TIMINGS:
        raise LigerSimError(f"unknown timing {timing!r}; expected one of {', '.join(TIMINGS)}", field="--timing")
    if timing == "cupti" and device == "cpu":
        raise LigerSimError("--timing cupti times CUDA kernels; on CPU kernels are timed on the host "
                            "(use --timing events or --device cuda)", field="--timing")


def _execute(src: Source, out: Path, opts: Options) -> dict:
    from hw import launch

    plan = build_plan(src)  # validate here, before any process starts
    return launch.execute(plan, src, out.resolve(), opts)
