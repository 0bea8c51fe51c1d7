"""Scenario -> engine -> result: the one place that wires the simulator's parts together."""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from sim import policies
from sim.contention import ContentionTable
from sim.costs import ProfileCost, RooflineCost
from sim.disaggregation import DecodePlan, Handoff, PrefillPlan, build_replica
from sim.engine import EVENT_COLUMNS, Engine, HostParams, SimResult
from sim.errors import LigerSimError, ScenarioWarning
from sim.eventlog import EventLog, group_label
from sim.ir import Schedule
from sim.jobs import Job
from sim.links import build_topology
from sim.runtime import replay_policy
from sim.scenario import Scenario, check_memory, parse_scenario
from sim.serving import BatchScheduler, Router, kv_capacity_tokens
from sim.workload import build_jobs


@dataclass
class Run:
    scenario: Scenario
    jobs: list[Job]
    result: SimResult
    events: pd.DataFrame


def make_engine(scn: Scenario, record_ir: bool = True) -> tuple[Engine, RooflineCost | ProfileCost]:
    """The engine and cost model of a scenario; with `hardware.profile`, measured kernel costs,
    and the profile's host costs and contention table unless the scenario sets its own."""
    hw = scn.hardware
    topo = build_topology(hw.interconnect.model_dump(), hw.count)
    cost: RooflineCost | ProfileCost = RooflineCost(hw.gpu.peak_flops, hw.gpu.hbm_bw, hw.gpu.sms,
                                                    hw.host.kernel_overhead_s, topo)
    pairs = [(p.victim, p.other, p.priority, p.slowdown) for p in hw.contention.pairs]
    host = HostParams(hw.host.launch_s, hw.host.sync_wakeup_s)
    if hw.profile:
        from sim.profile import EVENT_TIMED, HOST_IN_PROCESS, host_keys, profile_cost

        cost, prof = profile_cost(hw.profile, cost, scn)
        if "contention" not in hw.model_fields_set:
            pairs = prof.contention_pairs()
        if "host" not in hw.model_fields_set:
            keys = host_keys(scn)
            own = HOST_IN_PROCESS.get()
            if own is not None:  # the run's own, measured in its process (validation)
                prof = replace(prof, host_in_situ={keys[0]: own})
            after, late = prof.host_after(keys)
            record, wait = prof.host_record_wait(keys)
            host = HostParams(*prof.host_params(keys, host.launch_s, host.sync_wakeup_s),
                              launch_linear=prof.host_linear(keys), after_block=after, sleep_late_s=late,
                              record_s=record, wait_s=wait, sync_call_s=prof.host.get("sync_call_s", 0.0))
        # belongs with the profile's kernel times (which exclude it when timed with CUPTI); a run
        # timed with CUDA events also has their pair of records between queued kernels
        host.kernel_gap_s = prof.host.get("kernel_gap_s", 0.0) + (
            prof.host.get("event_pair_gpu_s", 0.0) if EVENT_TIMED.get() else 0.0)
    engine = Engine(hw.count, cost.solo, ContentionTable(pairs), topo, host, record_ir=record_ir)
    engine.leaders = [base for base, _ in scn.replicas()]
    return engine, cost


def load_jobs(scn: Scenario, base_dir: Path | None, limit: int | None = None, fit: bool = True) -> list[Job]:
    """The workload's jobs (its first `limit`), held against the model's context (`fit_context`)
    unless `fit` is off (`trace gen` writes the workload itself, not what a server would serve)."""
    if limit is not None and limit < 1:  # a negative slice would silently drop the last jobs instead
        raise LigerSimError(f"--jobs {limit}: give how many of the workload's first jobs to use, at least 1",
                            field="--jobs")
    jobs = build_jobs(scn.workload, scn.seed, base_dir)
    if limit is not None:
        jobs = jobs[:limit]
    if not jobs:
        raise LigerSimError("the workload has no jobs", field="workload")
    return fit_context(scn, jobs) if fit else jobs


class FittedJobs(list):
    """The jobs `fit_context` kept, and how many it `rejected`: a run's summary counts those as
    requests turned away (missing any SLO), not as requests that never came."""

    rejected: int = 0


def fit_context(scn: Scenario, jobs: list[Job]) -> list[Job]:
    """Jobs against the model's context length (`model.context`): with `serving.over_context: allow`
    all of them, with a warning naming how many are longer; with `enforce`, as vLLM treats requests
    against max_model_len: a prompt with no room for one output token is rejected, generation stops
    at the context, and an encoder-setting job longer than it is rejected. The Azure conversation
    trace has 1,612 of its 19,366 requests over LLaMA-2's 4,096 tokens (prompts up to 14,050).
    Also says when the encoder setting will ignore jobs' output tokens: this is where a run and a
    sweep look at the jobs against the scenario once."""
    generative = scn.serving.mode == "generative"
    decoding = 0 if generative else sum(1 for j in jobs if j.output_tokens > 0)
    if decoding:
        warnings.warn(f"{decoding} of {len(jobs)} requests ask for output tokens, but serving.mode is encoder: each "
                      "runs one forward pass of batch x seq_len; serving.mode: generative decodes them",
                      ScenarioWarning, stacklevel=3)
    ctx = scn.model.context
    if not ctx:
        return jobs

    def length(j: Job) -> int:
        return j.prompt + j.output_tokens if generative else j.seq_len

    over = [j for j in jobs if length(j) > ctx]
    if not over:
        return jobs
    what = "prompt + output" if generative else "sequence"
    if scn.serving.over_context == "allow":
        warnings.warn(f"{len(over)} of {len(jobs)} requests are longer ({what}) than {scn.model.name}'s context of "
                      f"{ctx:,} tokens (the longest {max(length(j) for j in over):,}); they run as asked. "
                      "serving.over_context: enforce rejects or cuts them as a server would", ScenarioWarning,
                      stacklevel=3)
        return jobs
    kept, rejected, cut = [], 0, 0
    for j in jobs:
        prompt = j.prompt
        if (prompt >= ctx) if generative else (j.seq_len > ctx):
            rejected += 1
        elif generative and prompt + j.output_tokens > ctx:
            cut += 1
            kept.append(replace(j, output_tokens=ctx - prompt))
        else:
            kept.append(j)
    if not kept:
        raise LigerSimError(f"every one of the {len(jobs)} requests is longer than {scn.model.name}'s context of "
                            f"{ctx:,} tokens; use a model with a longer context (model.context) or "
                            "serving.over_context: allow", field="serving.over_context")
    warnings.warn(f"serving.over_context: enforce: {rejected} of {len(jobs)} requests rejected (no room in "
                  f"{scn.model.name}'s context of {ctx:,} tokens)"
                  + (f", {cut} stopped at the context" if generative else ""), ScenarioWarning, stacklevel=3)
    out = FittedJobs(kept)
    out.rejected = rejected
    return out


def run_meta(scn: Scenario, jobs: list[Job]) -> dict:
    """What an IR header records so the run can be replayed on either backend."""
    scenario = scn.model_dump(mode="json")
    hw = scn.hardware
    if hw.profile:  # the profile's host costs and contention table apply unless the scenario set its
        # own (`make_engine`): written out, a replay of the header would take them as set
        for name in ("host", "contention"):
            if name not in hw.model_fields_set:
                scenario["hardware"].pop(name, None)
    meta = {"scenario": scenario, "policy": scn.policy.name, "jobs": len(jobs),
            "job_list": [[j.request_id, j.arrival_s, j.batch, j.seq_len, j.prompt_tokens, j.output_tokens]
                         for j in jobs]}
    if getattr(jobs, "rejected", 0):  # turned away by `fit_context`
        meta["rejected_requests"] = jobs.rejected
    return meta


def jobs_from_meta(meta: dict) -> list[Job] | None:
    if "job_list" not in meta:
        return None
    jobs = FittedJobs(Job(int(r), float(a), int(b), int(s), int(p), int(o)) for r, a, b, s, p, o in meta["job_list"])
    jobs.rejected = int(meta.get("rejected_requests", 0))  # a prediction of the run counts them as it did
    return jobs


def prepare(scn: Scenario, jobs: list[Job], record_ir: bool = True, file: str = "<scenario>"):
    """Check the scenario fits, build the engine and cost model, each rank's policy and each
    data-parallel replica's context: shared by the simulator and the CUDA backend so both
    schedule identically. Replica r runs on its GPUs (`Scenario.replicas`: r x tp x pp onwards, the
    prefill replicas first when disaggregated) with the requests its router gives it; all replicas
    share the engine, so their collectives contend for links."""
    engine, cost = make_engine(scn, record_ir)
    pol, sv, dp = scn.policy, scn.serving, scn.policy.dp
    generative = sv.mode == "generative"
    least_loaded = dp > 1 and pol.router == "least_loaded"
    routed = pol.prefill_replicas or dp  # disaggregated: arrivals go to the prefill replicas only
    shares = [[] if least_loaded or r >= routed else jobs[r::routed] for r in range(dp)]
    ctxs = [policies.PolicyContext(scn.model_shape(), share, gpus, pol, cost.solo, cost.spec_solo, engine.contention,
                                   sv, base=base, typical_jobs=jobs)
            for (base, gpus), share in zip(scn.replicas(), shares)]
    if generative:
        groups = sv.groups if pol.name in ("interleaved", "inter_op", "hybrid") else 1
        in_flight = groups if pol.name == "interleaved" else 1  # a stage runs one micro-batch at a time
        numbering = itertools.count()  # iteration ids, unique across replicas
        for r, ctx in enumerate(ctxs):
            tp = pol.prefill_tp if pol.prefill_tp and r < routed else scn.tp()
            kv = kv_capacity_tokens(ctx.model, tp, scn.pp(), scn.hardware.gpu.memory, sv, file, in_flight)
            ctx.scheduler = BatchScheduler(ctx.jobs, sv, kv, max(groups, scn.pp()), file,
                                           bind_on_arrival=pol.name in ("inter_op", "hybrid")
                                           and sv.pipeline_admission == "least_loaded", numbering=numbering,
                                           prefill_only=r < pol.prefill_replicas)
        if least_loaded:
            Router(jobs, [ctx.scheduler for ctx in ctxs[:routed]])
        if pol.prefill_replicas:
            handoff = Handoff(ctxs[:routed], ctxs[routed:])
            handoff.attach(engine)
            for ctx in ctxs:
                ctx.handoff = handoff
            rank_policies = [p for r, ctx in enumerate(ctxs) for p in build_replica(
                ctx, handoff, PrefillPlan(handoff, r) if r < routed else DecodePlan(handoff, r - routed))]
            return engine, cost, rank_policies, ctxs
    else:
        biggest = max(jobs, key=lambda j: j.batch * j.seq_len)
        check_memory(scn, (biggest.batch, biggest.seq_len), file, scn.tp(), scn.pp())
    return engine, cost, [p for ctx in ctxs for p in policies.build(ctx)], ctxs


SYMMETRIC_POLICIES = ("intra_op", "in_order", "interleaved")


def simulate(scn: Scenario, jobs: list[Job], record_ir: bool = True, file: str = "<scenario>",
             progress: bool = False, fold_ranks: bool = False) -> Run:
    """Simulate `jobs` under the scenario. `fold_ranks` simulates rank 0 only, which is exact
    for the tensor-parallel policies (every rank runs the same kernels at the same times) and
    `hardware.count` times faster; the events table then holds rank 0's kernels."""
    if fold_ranks and scn.policy.name not in SYMMETRIC_POLICIES:
        raise LigerSimError(f"--fold-ranks needs a policy whose ranks are all alike ({', '.join(SYMMETRIC_POLICIES)});"
                            f" {scn.policy.name} gives each pipeline stage different work", file=file,
                            field="policy.name")
    engine, _, rank_policies, ctxs = prepare(scn, jobs, record_ir, file)
    engine.fold = fold_ranks
    for ctx in ctxs:
        ctx.active_ranks = 1 if fold_ranks else ctx.world
    horizon = max(j.arrival_s for j in jobs) if progress else None
    meta = run_meta(scn, jobs)
    if fold_ranks:
        meta["folded_ranks"] = True
    result = engine.run(rank_policies, meta, progress_horizon_s=horizon or (1e-3 if progress else None))
    if ctxs[0].scheduler is not None:  # which iteration served whom: the IR needs it to be replayed
        result.meta.update(serving_meta([ctx.scheduler for ctx in ctxs]))
    if ctxs[0].handoff is not None:
        result.meta["handoffs"] = ctxs[0].handoff.table()
    return Run(scn, jobs, result, events_frame(result.events))


def serving_meta(scheds: list[BatchScheduler]) -> dict:
    """What generative serving records in the IR header: the iterations, the KV cache in use
    over time (summed over data-parallel replicas) and per GPU, preemptions, and with several
    replicas how many requests each served."""
    first = scheds[0]
    meta = {"iterations": iteration_table(scheds),
            "kv_log": first.kv_log if len(scheds) == 1 else merge_steps([s.kv_log for s in scheds]),
            "kv_capacity_tokens": first.total_blocks * first.block,
            "preemptions": [[q.rid, q.preemptions] for s in scheds for q in s.seqs.values() if q.preemptions]}
    if len(scheds) > 1:
        meta["replica_requests"] = [len(s.seqs) for s in scheds]
    if len({s.total_blocks for s in scheds}) > 1:  # replicas of different TP degrees (`policy.prefill_tp`)
        meta["kv_capacity_total_tokens"] = sum(s.total_blocks * s.block for s in scheds)
    return meta


def merge_steps(logs: list[list[tuple[float, int]]]) -> list[tuple[float, int]]:
    """The sum of several step functions given as (time, level) changes."""
    level = [0] * len(logs)
    out: list[tuple[float, int]] = []
    for t, i, v in sorted((t, i, v) for i, log in enumerate(logs) for t, v in log):
        level[i] = v
        if out and out[-1][0] == t:
            out[-1] = (t, sum(level))
        else:
            out.append((t, sum(level)))
    return out


def iteration_table(scheds: BatchScheduler | list[BatchScheduler]) -> list[list]:
    """[iteration, group, request, new tokens, emits a token] for every request of every iteration
    (of every replica's scheduler, in iteration order)."""
    scheds = [scheds] if isinstance(scheds, BatchScheduler) else scheds
    rows = []
    for it in sorted((it for s in scheds for it in s.iterations), key=lambda it: it.index):
        emits = set(it.emits)
        rows += [[it.index, it.group, rid, c, int(rid in emits)] for rid, c, _ in it.prefills]
        rows += [[it.index, it.group, rid, 1, int(rid in emits)] for rid, _ in it.decodes]
    return rows


def scenario_of(schedule: Schedule, file: str = "<IR>") -> Scenario:
    """The scenario an IR was recorded under (its header), checked against the IR."""
    if "scenario" not in schedule.meta:
        raise LigerSimError("the IR header carries no scenario; cannot rebuild the hardware", file=file,
                            field="meta")
    scn = parse_scenario(schedule.meta["scenario"], f"{file} (header scenario)")
    if schedule.world != scn.hardware.count:
        raise LigerSimError(f"IR has {schedule.world} ranks but its scenario has {scn.hardware.count} GPUs",
                            file=file, field="world")
    return scn


def replay(schedule: Schedule, jobs: list[Job] | None = None, file: str = "<IR>") -> Run:
    """Re-execute a recorded IR in the simulator, on the hardware its header describes."""
    scn = scenario_of(schedule, file)
    engine, _ = make_engine(scn)
    engine.fold = bool(schedule.meta.get("folded_ranks"))
    result = engine.run([replay_policy(ops) for ops in schedule.by_rank()], schedule.meta)
    jobs = jobs or jobs_from_meta(schedule.meta) or jobs_from_events(result.events, schedule)
    return Run(scn, jobs, result, events_frame(result.events))


def jobs_from_events(rows: list[tuple], schedule: Schedule) -> list[Job]:
    """Recover arrivals from the IR when only the IR is at hand: a job's arrival is the
    latest `sleep_until` issued before its first launch (0 if none)."""
    arrival: dict[int, float] = {}
    last_sleep: dict[int, float] = {}
    for op in schedule.ops:
        if op.op == "sleep_until":
            last_sleep[op.rank] = op.until
        elif op.op == "launch" and op.kernel is not None and op.kernel.request_id >= 0:
            arrival.setdefault(op.kernel.request_id, last_sleep.get(op.rank, 0.0))
    return [Job(rid, t) for rid, t in sorted(arrival.items())]


def events_frame(rows: EventLog | list[tuple]) -> pd.DataFrame:
    """The events table of a run (the engine's `EventLog`, or rows as the hw backend returns them)."""
    if isinstance(rows, EventLog) or not rows:
        df = rows.frame() if isinstance(rows, EventLog) else EventLog().frame()
    else:
        df = pd.DataFrame.from_records(rows, columns=EVENT_COLUMNS)
        labels = {g: group_label(g) for g in set(df["group"])}
        df["group"] = df["group"].map(labels)
    return df.sort_values(["rank", "start_s", "stream", "kernel_id"], kind="stable").reset_index(drop=True)
