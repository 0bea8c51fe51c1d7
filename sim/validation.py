"""Validation: how close the simulator comes to a measured run (no torch here).

`predict(measured, scenario, profile, out)` takes a run recorded by `ligersim hw run` (its
events.parquet, requests.csv, hw.json, ir.jsonl) and simulates it twice with the profile's
costs: *closed loop* (the policy runs online in the simulator, on the same jobs) and
*replay* (the recorded IR re-executed verbatim, so only timing can differ). A run that
emulated rank 0 of a group on one GPU is replayed as that one rank, its collectives
kernels of the link model's length (what the emulation runs). `build_report(out)` then
compares kernels and requests and writes:

    validation.csv   one row per kernel and per request and mode: measured, predicted, error
    summary.json     per mode: kernel_err_median, kernel_err_p90 (of |error|), makespan_err,
                     jct_mean_err, throughput_err (signed, relative: (predicted − measured) / measured);
                     `host`: where the measured run's host time went (`sim.host_gaps.host_breakdown`)
    report.md        device, date, profile, tables
    scatter.png, error_cdf.png, timelines.png

Kernels are matched by kernel id in replay; in closed loop by (rank, request, layer, name,
split fraction, occurrence), since the policy may decide differently there. Only ranks that
were measured are compared (rank 0 under emulation).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from sim import ir
from sim.errors import LigerSimError
from sim.host_gaps import drift_range, host_breakdown, host_drift, shape_key
from sim.jobs import Job
from sim.kernels import Kernel
from sim.outputs import (
    RUN_FILES,
    VALIDATE_WRITES,
    _clean,
    read_events,
    read_json,
    read_results,
    run_tables,
    write_run,
    writer_of,
)

MODES = ("closed_loop", "replay")
NEEDED = ("events.parquet", "requests.csv", "ir.jsonl")
RUN_META = "run_meta.json"
GENERATIVE_KEYS = ("iterations", "kv_log", "kv_capacity_tokens", "scenario", "job_list", "rejected_requests")
# What `run_tables` reads of a closed loop's run_meta.json besides its iterations, when there, and as what
RUN_META_TYPES = {"kv_log": list, "kv_capacity_tokens": int, "scenario": dict, "rejected_requests": int}
# What `predict` and `build_report` write into a validation folder besides each mode's run files (`RUN_FILES`)
REPORT_FILES = ("meta.json", "summary.json", "validation.csv", "validation.csv.gz", "report.md", "scatter.png",
                "error_cdf.png", "timelines.png")


def _run_meta(meta: dict) -> dict:
    return {k: meta[k] for k in GENERATIVE_KEYS if k in meta}


def _mode_meta(out: Path, mode: str, measured_meta: dict) -> dict:
    """The run header a mode's requests are computed from: a replay follows the measured run's
    iterations; the closed loop made its own (generative runs; encoder runs need none)."""
    if mode == "replay":
        return measured_meta
    f = out / mode / RUN_META
    return read_json(f, VALIDATE_WRITES, needs={"iterations": list}, may=RUN_META_TYPES) if f.exists() else {}


def _clear(out: Path) -> None:
    """Remove what an earlier validation wrote into `out` (not the runs it measured there): nothing of it
    is then read as this one's (a generative run's closed_loop/run_meta.json gave an encoder run's closed
    loop its iterations), and a prediction that fails leaves no half-old report."""
    for name in REPORT_FILES:
        (out / name).unlink(missing_ok=True)
    for mode in MODES:
        for name in (*RUN_FILES, RUN_META):
            (out / mode / name).unlink(missing_ok=True)


def _validation_meta(out: Path) -> dict:
    """A validation folder's meta.json (none: {}); `measured_dir` (and `kernels_dir`) say where its
    recorded runs are."""
    f = out / "meta.json"
    return read_json(f, VALIDATE_WRITES, needs={"measured_dir": str}, may={"kernels_dir": str}) if f.exists() else {}


# ---------------------------------------------------------------------- predictions
def _has(run: Path, name: str) -> bool:
    """A recorded run's file, or its gzipped copy (as committed reports keep the IR)."""
    return (run / name).exists() or (run / f"{name}.gz").exists()


def _measured_files(measured: Path) -> dict:
    for name in NEEDED:
        if not _has(measured, name):
            raise LigerSimError(f"no {name} here; record a run with `ligersim hw run`", file=str(measured))
    return _hw_info(measured)


HOST_COSTS = ("in_process", "profile")


def predict(measured: str | Path, scenario: str | Path, profile: str | Path, out: str | Path,
            progress: bool = False, kernels: str | Path | None = None, host_costs: str = "in_process") -> dict:
    """Simulate the measured run closed-loop and as a replay with `profile`; then build the report
    (kernel times from `kernels`, a second recorded run of the scenario, when given).

    `host_costs="in_process"`: where the measured run timed its host per op before its clock
    (hw.json `host_in_process`), those costs replace the profile's in-situ ones. The executor is
    host-bound, and its host speed differed between processes on the same machine by more
    than the floors; the kernels, contention and the rest still come from the profile."""
    from sim.profile import EMULATED, EVENT_TIMED, HOST_IN_PROCESS, check_situ_entry, load_profile

    if host_costs not in HOST_COSTS:
        raise LigerSimError(f"unknown host costs {host_costs!r}; expected one of {', '.join(HOST_COSTS)}",
                            field="--host-costs")
    from sim.scenario import load_scenario
    from sim.simulate import jobs_from_meta, make_engine, simulate

    measured, out = Path(measured), Path(out)
    hw = _measured_files(measured)
    # what `build_report` reads of the recorded runs, read now: a corrupt file fails before the
    # simulation and before anything is written into `out`, not after both
    read_events(measured / "events.parquet")
    if kernels is not None:  # kernel times from another recorded run
        kernels = Path(kernels)
        _hw_info(kernels)
        read_events(kernels / "events.parquet")
        if _has(kernels, "ir.jsonl"):
            ir.load(kernels / "ir.jsonl")
    prof = load_profile(profile)
    scn, _ = load_scenario(scenario)
    scn.hardware.profile = str(Path(profile).resolve())
    schedule = ir.load(measured / "ir.jsonl")
    _same_setup(schedule, scn, measured, str(scenario))
    jobs = jobs_from_meta(schedule.meta) or _jobs_from_requests(measured)
    emulated = hw.get("mode") == "emulate"
    if "host_in_process" in hw:
        check_situ_entry(hw["host_in_process"], str(measured / "hw.json"), "host_in_process")
    _clear(out)  # every input read and checked: this validation's files replace an earlier one's
    token = EMULATED.set(emulated)
    timed = EVENT_TIMED.set(hw.get("timing") == "events")
    own = hw.get("host_in_process") if host_costs == "in_process" else None
    situ = HOST_IN_PROCESS.set(own)
    try:
        run = simulate(scn, jobs, record_ir=True, file=str(scenario), progress=progress)
        # its IR names each kernel's shape, for matching kernels of another run by what they are
        write_run(out / "closed_loop", run.events, jobs, run.result.schedule, scn.policy.name, run.result.sim_wall_s,
                  {"scenario": scn.name, "meta": run.result.meta}, trace=False)
        if "iterations" in run.result.meta:  # generative: which requests the simulated iterations served
            (out / "closed_loop" / RUN_META).write_text(json.dumps(_run_meta(run.result.meta)) + "\n")
        engine, cost = make_engine(scn, record_ir=False)
        if emulated:
            engine, ops = _single_rank(engine, cost, schedule)
            rank_ops = [ops]
        else:
            rank_ops = schedule.by_rank()
        arrivals = {j.request_id: j.arrival_s for j in jobs}
        if "iterations" in schedule.meta:  # generative: kernels carry iteration ids
            arrivals = iteration_arrivals(schedule.meta["iterations"], arrivals)
        rank_ops = [with_arrivals(o, arrivals) for o in rank_ops]
        from sim.runtime import replay_policy
        from sim.simulate import events_frame

        result = engine.run([replay_policy(o) for o in rank_ops], schedule.meta)
        write_run(out / "replay", events_frame(result.events), jobs, None, f"replay:{scn.policy.name}",
                  result.sim_wall_s, {"scenario": scn.name, "meta": schedule.meta}, trace=False)
    finally:
        EMULATED.reset(token)
        EVENT_TIMED.reset(timed)
        HOST_IN_PROCESS.reset(situ)
    meta = {"scenario": scn.name, "scenario_file": str(scenario), "policy": scn.policy.name,
            "profile": str(profile), "profile_device": prof.device.get("name"), "profile_date": prof.date,
            "measured_dir": str(measured), "emulated": emulated,
            "host_costs": (f"in process: timed on the measured run's first {own.get('jobs', '?')} jobs, before "
                           "its clock" if own is not None else "profile: timed in calibration's in-situ runs"),
            **_host_ratio(hw.get("host_in_process"), prof, scn),
            **({"kernels_dir": str(kernels)} if kernels is not None else {})}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return build_report(out, measured)


def _same_setup(schedule: ir.Schedule, scn, measured: Path, file: str) -> None:
    """The scenario must be the one the run was recorded under: a prediction of another policy, GPU
    count or model would be scored against the measurement as if the difference were model error."""
    rec = schedule.meta.get("scenario")
    if not isinstance(rec, dict):
        return  # an IR without its scenario (older recordings): nothing to check against
    got = {"policy.name": scn.policy.name, "hardware.count": scn.hardware.count, "model": scn.model.name}
    was = {"policy.name": (rec.get("policy") or {}).get("name"), "hardware.count": (rec.get("hardware") or {}).get("count"),
           "model": (rec.get("model") or {}).get("name")}
    for key, value in got.items():
        if was[key] is not None and was[key] != value:
            raise LigerSimError(f"{key} is {value!r} but the recorded run in {measured} had {was[key]!r}; validate a "
                                "recording with the scenario it was recorded under", file=file, field=key)


def host_speed_ratio(own: dict, given: dict) -> float | None:
    """How much host time per op `own` (an in-situ entry: this process's) took against `given`
    (the profile's) for the same op names, weighted by `own`'s sample counts: the run's host
    work costed at each's mean per op. None where they share no op."""
    a, b = own.get("launch_stats") or {}, given.get("launch_stats") or {}
    mean_b = {k: v[1] for k, v in b.items()} or dict(given.get("launch") or {})
    common = [k for k in a if k in mean_b]
    num = sum(a[k][0] * a[k][1] for k in common)
    den = sum(a[k][0] * mean_b[k] for k in common)
    return num / den if den > 0 else None


def _host_ratio(own: dict | None, prof, scn) -> dict:
    """`host_speed_vs_profile` for the report: the measured run's in-process host costs against
    the profile's in-situ entry for the scenario (on the H100, such ratios ranged 0.87-1.38)."""
    from sim.profile import host_keys

    if not own:
        return {}
    given = prof.host_entry(host_keys(scn))
    ratio = host_speed_ratio(own, given) if given else None
    return {"host_speed_vs_profile": ratio} if ratio is not None else {}


def with_arrivals(ops: list[ir.Op], arrivals: dict[int, float]) -> list[ir.Op]:
    """`ops` with a `sleep_until(arrival)` before each job's first launch. A policy that
    admits jobs by reading the clock (interleaved) records no sleeps, yet the measured
    host could not launch a job before it arrived; a replay must not either."""
    out, seen = [], set()
    for op in ops:
        k = op.kernel
        if k is not None and k.request_id >= 0 and k.request_id not in seen:
            seen.add(k.request_id)
            if k.request_id in arrivals:
                out.append(ir.Op(op.rank, "sleep_until", op.t, until=arrivals[k.request_id]))
        out.append(op)
    return out


def iteration_arrivals(iterations: list[list], arrivals: dict[int, float]) -> dict[int, float]:
    """Generative runs: iteration -> the latest arrival among the requests it serves (rows
    [iteration, group, request, tokens, emits]), before which it cannot have been launched."""
    out: dict[int, float] = {}
    for it, _g, rid, _n, _e in iterations:
        a = arrivals.get(int(rid))
        if a is not None:
            out[int(it)] = max(out.get(int(it), a), a)
    return out


def _single_rank(engine, cost, schedule: ir.Schedule):
    """Rank 0 of an emulated run alone: its collectives become local kernels lasting what
    the emulated collective targets (the link model over the original group)."""
    from sim.engine import Engine

    groups: dict[int, tuple[int, ...] | None] = {}
    ops = []
    for op in schedule.by_rank()[0]:
        k = op.kernel
        if k is not None and k.group is not None:
            nk = Kernel(k.spec, 0, k.request_id, k.layer, None, k.kernel_id, k.parent)
            groups[id(nk)] = k.group
            op = ir.Op(op.rank, op.op, op.t, op.stream, op.event, op.priority, op.until, nk)
        ops.append(op)

    def solo(k: Kernel) -> float:
        return cost.spec_solo(k.spec, groups.get(id(k), k.group))

    return Engine(1, solo, engine.contention, engine.topology, engine.host, record_ir=False), ops


def _jobs_from_requests(measured: Path) -> list[Job]:
    req = read_results(measured / "requests.csv", "a requests", ("request_id", "arrival_s"))
    return [Job(int(r), float(a)) for r, a in zip(req["request_id"], req["arrival_s"])]


# ---------------------------------------------------------------------- comparison
def _durations(ev: pd.DataFrame) -> pd.DataFrame:
    ev = ev.copy()
    ev["dur_s"] = ev["end_s"] - ev["start_s"]
    ev["frac"] = ev["fraction"].round(4)
    ev = ev.sort_values(["rank", "start_s", "kernel_id"], kind="stable")
    ev["occ"] = ev.groupby(["rank", "request_id", "layer", "name", "frac"]).cumcount()
    return ev


def kernel_shapes(schedule: ir.Schedule) -> dict[tuple[int, int], str]:
    """(rank, kernel id) -> the kernel's shape: its name and dims, split pieces' offsets included."""
    return {(op.rank, op.kernel.kernel_id): str(shape_key(op.kernel.spec))
            for op in schedule.ops if op.op == "launch" and op.kernel is not None}


def compare_kernels(measured: pd.DataFrame, predicted: pd.DataFrame, mode: str,
                    same_run: bool = True, shapes: tuple[dict, dict] | None = None) -> pd.DataFrame:
    """Kernel durations side by side. A replay executes the measured run's IR, so its kernels
    match by id; otherwise (closed loop, or kernel times from another run of the scenario) by
    what the kernel is. With both runs' `shapes` (`kernel_shapes` of their IRs), that is its
    layer, name and shape, the n-th of that shape on its rank matched to the n-th: two runs of a
    generative or interleaved scenario batch and split differently as their timing differs (the
    H100 decode run timed with CUPTI ran 23,879 kernels, its CUDA-event twin 23,020), so the same
    iteration or piece number is not the same kernel. Without them, by request, layer, name,
    piece and occurrence."""
    m, p = _durations(measured), _durations(predicted[predicted["rank"].isin(set(measured["rank"]))])
    by_id = mode == "replay" and same_run
    key = ["rank", "kernel_id"] if by_id else ["rank", "request_id", "layer", "name", "frac", "occ"]
    if shapes is not None and not by_id:
        for df, sh in ((m, shapes[0]), (p, shapes[1])):
            df["shape"] = [sh.get(k, "") for k in zip(df["rank"], df["kernel_id"])]
            df["occ_shape"] = df.groupby(["rank", "layer", "name", "shape"]).cumcount()
        key = ["rank", "layer", "name", "shape", "occ_shape"]
    cols = list(dict.fromkeys(["rank", "kernel_id", "request_id", "layer", "name", "kind", "cls", "frac", "occ",
                               "dur_s", *key]))
    j = m[cols].merge(p[key + ["dur_s"]], on=key, how="inner", suffixes=("_m", "_p"))
    out = pd.DataFrame({"mode": mode, "level": "kernel", "rank": j["rank"], "request_id": j["request_id"],
                        "layer": j["layer"], "name": j["name"], "kind": j["kind"], "cls": j["cls"],
                        "fraction": j["frac"], "kernel_id": j.get("kernel_id", j.get("kernel_id_m")),
                        "measured_s": j["dur_s_m"], "predicted_s": j["dur_s_p"]})
    out["error"] = (out["predicted_s"] - out["measured_s"]) / out["measured_s"].where(out["measured_s"] > 0)
    return out


def repeat_spread(ev: pd.DataFrame, shapes: dict[tuple[int, int], str] | None = None) -> dict:
    """How much the GPU itself varies: each kernel against the median of the run's other kernels
    of the same shape on its rank (`shapes`: `kernel_shapes` of the run's IR; without it, the same
    kernel by name and piece at its request's other layers). The median of |time / that median - 1|
    is about the least per-kernel error a model giving one time per shape can have on this run (in
    an interleaved run it also holds what contention varies, which the model is meant to predict).
    On the H100 reports it is about 1% where the model's errors are 3-10%: those are the model's."""
    d = ev[ev["request_id"] >= 0]
    dur = (d["end_s"] - d["start_s"]).to_numpy()
    if shapes is not None:
        keys = pd.MultiIndex.from_arrays([d["rank"], [shapes.get(k, "") for k in zip(d["rank"], d["kernel_id"])]])
    else:
        keys = pd.MultiIndex.from_arrays([d["rank"], d["request_id"], d["name"], d["fraction"].round(4)])
    codes, _ = pd.factorize(keys)
    order = np.argsort(codes, kind="stable")
    codes, dur = codes[order], dur[order]
    dev: list[np.ndarray] = []
    for x in np.split(dur, np.flatnonzero(np.diff(codes)) + 1):
        if len(x) < 2 or (x <= 0).any():
            continue
        others = np.array([np.median(np.delete(x, i)) for i in range(len(x))])
        dev.append(np.abs(x / others - 1.0))
    if not dev:
        return {"kernels": 0, "median": float("nan"), "p90": float("nan")}
    a = np.concatenate(dev)
    return {"kernels": len(a), "median": float(np.median(a)), "p90": float(np.quantile(a, 0.9))}


def compare_requests(m_req: pd.DataFrame, p_req: pd.DataFrame, mode: str) -> pd.DataFrame:
    """One row per request and measure: JCT, and for generative runs TTFT and TPOT."""
    frames = []
    for col in ("jct_s", "ttft_s", "tpot_s"):
        if col not in m_req or col not in p_req:
            continue
        j = m_req[["request_id", col]].merge(p_req[["request_id", col]], on="request_id", suffixes=("_m", "_p"))
        frames.append(pd.DataFrame({"mode": mode, "level": "request", "request_id": j["request_id"],
                                    "name": col.removesuffix("_s"), "measured_s": j[f"{col}_m"],
                                    "predicted_s": j[f"{col}_p"]}))
    out = pd.concat(frames, ignore_index=True)
    out["error"] = (out["predicted_s"] - out["measured_s"]) / out["measured_s"].where(out["measured_s"] > 0)
    return out


def _rel(p: float, m: float) -> float:
    return (p - m) / m if m and math.isfinite(m) and math.isfinite(p) else float("nan")


def mode_summary(kernels: pd.DataFrame, m_sum: dict, p_sum: dict, measured_kernels: int) -> dict:
    err = kernels["error"].abs().dropna()
    w = kernels["measured_s"].sum()
    return {
        "kernel_err_median": float(err.median()) if len(err) else float("nan"),
        "kernel_err_p90": float(err.quantile(0.9)) if len(err) else float("nan"),
        "kernel_err_weighted": float((kernels["predicted_s"] - kernels["measured_s"]).abs().sum() / w) if w else
        float("nan"),
        "kernels_matched": int(len(kernels)), "kernels_measured": int(measured_kernels),
        "makespan_err": _rel(p_sum["makespan_s"], m_sum["makespan_s"]),
        "jct_mean_err": _rel(p_sum["jct_mean_s"], m_sum["jct_mean_s"]),
        "jct_p90_err": _rel(p_sum["jct_p90_s"], m_sum["jct_p90_s"]),
        "throughput_err": _rel(p_sum["throughput_jobs_s"], m_sum["throughput_jobs_s"]),
        **{f"{k.removesuffix('_s')}_err": _rel(p_sum[k], m_sum[k]) for k in GENERATIVE_MEASURES if k in m_sum},
        "measured": {k: m_sum[k] for k in SUMMARY_MEASURES if k in m_sum},
        "predicted": {k: p_sum[k] for k in SUMMARY_MEASURES if k in p_sum},
    }


SUMMARY_MEASURES = ("makespan_s", "jct_mean_s", "jct_p90_s", "throughput_jobs_s", "ttft_mean_s", "tpot_mean_s",
                    "tokens_per_s")
GENERATIVE_MEASURES = ("ttft_mean_s", "tpot_mean_s", "tokens_per_s")


def build_report(out: str | Path, measured: str | Path | None = None) -> dict:
    """Compare `out/closed_loop` and `out/replay` with the measured run; write the report files."""
    out = Path(out)
    meta = _validation_meta(out)
    measured = Path(measured) if measured else _beside(out, meta.get("measured_dir"), "measured")
    hw = _measured_files(measured)
    m_ev = read_events(measured / "events.parquet")
    kernels_dir = _beside(out, meta["kernels_dir"], "measured_cupti") if meta.get("kernels_dir") else None
    k_ev = read_events(kernels_dir / "events.parquet") if kernels_dir else m_ev
    m_ir = ir.load(measured / "ir.jsonl") if _has(measured, "ir.jsonl") else None
    m_meta = _run_meta(m_ir.meta) if m_ir is not None else {}
    from sim.simulate import jobs_from_meta

    jobs = jobs_from_meta(m_meta) or _jobs_from_requests(measured)
    ranks = set(m_ev["rank"])
    # generative runs: requests from the iterations that served them (kernels carry iteration ids)
    m_req, m_sum = run_tables(m_ev, jobs, m_meta, "measured", None)
    rows, summary = [], {"scenario": meta.get("scenario"), "policy": meta.get("policy"),
                         "device": hw.get("gpu") or hw.get("device"), "hw_mode": hw.get("mode"),
                         "date": hw.get("date"), "profile": meta.get("profile"),
                         "profile_device": meta.get("profile_device"), "measured_ranks": sorted(int(r) for r in ranks),
                         "request_timing": hw.get("timing"),
                         **{k: meta[k] for k in ("host_costs", "host_speed_vs_profile") if k in meta},
                         "kernel_timing": _hw_info(kernels_dir).get("timing") if kernels_dir else hw.get("timing")}
    # kernel times from another run: match kernels by shape where both IRs are at hand
    k_shapes = kernel_shapes(ir.load(kernels_dir / "ir.jsonl")) if kernels_dir and _has(kernels_dir, "ir.jsonl") \
        else None
    for mode in MODES:
        d = out / mode
        if not (d / "events.parquet").exists():
            continue
        p_ev = read_events(d / "events.parquet")
        p_ev = p_ev[p_ev["rank"].isin(ranks)]
        p_req, p_sum = run_tables(p_ev, jobs, _mode_meta(out, mode, m_meta), mode, None)
        p_ir = m_ir if mode == "replay" else (ir.load(d / "ir.jsonl") if _has(d, "ir.jsonl") else None)
        shapes = (k_shapes, kernel_shapes(p_ir)) if k_shapes is not None and p_ir is not None else None
        k = compare_kernels(k_ev, p_ev, mode, same_run=kernels_dir is None, shapes=shapes)
        r = compare_requests(m_req, p_req, mode)
        rows += [k, r]
        summary[mode] = mode_summary(k, m_sum, p_sum, len(k_ev))
        summary[mode]["by_kind"] = {kind: float(g["error"].abs().median())
                                    for kind, g in k.groupby("kind") if g["error"].notna().any()}
    same_shapes = k_shapes if kernels_dir else (kernel_shapes(m_ir) if m_ir is not None else None)
    summary["kernel_repeat_spread"] = repeat_spread(k_ev, same_shapes)
    if m_ir is not None:  # the host time of the run whose IR is here (the events-timed one)
        rank = min(summary["measured_ranks"], default=0)
        summary["host"] = {**host_breakdown(m_ir, rank=rank), "makespan_s": m_sum.get("makespan_s"),
                           "drift": host_drift(m_ir, rank=rank)}
    if len(rows) == 0:
        raise LigerSimError("no closed_loop/ or replay/ predictions here; run `ligersim validate`", file=str(out))
    table = pd.concat(rows, ignore_index=True)
    table.to_csv(out / "validation.csv", index=False)
    (out / "summary.json").write_text(json.dumps(_clean_deep(summary), indent=2) + "\n")
    plot_validation(out, table, k_ev)
    (out / "report.md").write_text(report_markdown(summary, table))
    return summary


def read_table(out: Path) -> pd.DataFrame:
    """A report's validation.csv (or validation.csv.gz, as committed reports keep it)."""
    for name in ("validation.csv", "validation.csv.gz"):
        if (Path(out) / name).exists():
            return read_results(Path(out) / name, "a validation", ("mode", "level", "error", "measured_s", "predicted_s"),
                                "`ligersim validate` writes one")
    raise LigerSimError("no validation.csv here; make one with `ligersim validate`", file=str(out))


def _hw_info(run: Path) -> dict:
    f = run / "hw.json"
    if not f.exists():
        return {}
    return read_json(f, writer_of(f, "`ligersim hw run` writes it"), may={"mode": str, "timing": str})


def _beside(out: Path, recorded: str | None, default: str) -> Path:
    """A recorded-run folder named in meta.json, or, when that path is gone (the report was
    copied elsewhere, e.g. from the GPU machine into results/), the folder of that name in `out`."""
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    return out / (Path(recorded).name if recorded else default)


def _clean_deep(v):
    if isinstance(v, dict):
        return {k: _clean_deep(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean_deep(x) for x in v]
    return _clean(v)


# ---------------------------------------------------------------------- report
def _pct(x, sign: bool = True) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{100 * x:+.1f}%" if sign else f"{100 * x:.1f}%"


def report_markdown(summary: dict, table: pd.DataFrame) -> str:
    lines = [f"# Validation: {summary.get('scenario')} ({summary.get('policy')})", "",
             f"- measured on: {summary.get('device')} (hw mode {summary.get('hw_mode')}, ranks "
             f"{summary.get('measured_ranks')}), {summary.get('date')}",
             f"- timing: requests and makespan from a run timed with {summary.get('request_timing')}, kernels "
             f"from a run timed with {summary.get('kernel_timing')}",
             f"- profile: {summary.get('profile')} (measured on {summary.get('profile_device')})",
             *([f"- host costs per op: {summary['host_costs']}"] if summary.get("host_costs") else []),
             *([f"- this run's host took {summary['host_speed_vs_profile']:.2f}x the profile's in-situ time for "
                "the same ops (its in-process probe against calibration's runs)"]
               if summary.get("host_speed_vs_profile") else []), "",
             "Errors are (predicted − measured) / measured; kernel errors are medians and 90th percentiles of "
             "|error| over matched kernels.", "",
             "| mode | kernels matched | kernel |err| median | p90 | time-weighted | makespan | mean JCT | "
             "p90 JCT | throughput |", "|---|---|---|---|---|---|---|---|---|---|"]
    for mode in MODES:
        s = summary.get(mode)
        if s:
            lines.append(f"| {mode} | {s['kernels_matched']}/{s['kernels_measured']} | "
                         f"{_pct(s['kernel_err_median'], False)} | {_pct(s['kernel_err_p90'], False)} | "
                         f"{_pct(s['kernel_err_weighted'], False)} | {_pct(s['makespan_err'])} | {_pct(s['jct_mean_err'])} | "
                         f"{_pct(s['jct_p90_err'])} | {_pct(s['throughput_err'])} |")
    rep = summary.get("kernel_repeat_spread") or {}
    if rep.get("kernels"):
        lines += ["", f"The GPU's own spread: a kernel's time differs from the median of the run's other kernels "
                      f"of its shape by a median {_pct(rep['median'], False)} (p90 "
                      f"{_pct(rep['p90'], False)}, {rep['kernels']:,} kernels); per-kernel errors well above that "
                      "are the model's (`sim.validation.repeat_spread`)."]
    kernels = table[table["level"] == "kernel"]
    if len(kernels):
        lines += ["", "## Per kernel kind (median |error|, mean measured time)", "",
                  "| mode | kind | kernels | median |err| | mean measured (us) | mean predicted (us) |",
                  "|---|---|---|---|---|---|"]
        for (mode, kind), g in kernels.groupby(["mode", "kind"]):
            lines.append(f"| {mode} | {kind} | {len(g)} | {100 * g['error'].abs().median():.1f}% | "
                         f"{1e6 * g['measured_s'].mean():.1f} | {1e6 * g['predicted_s'].mean():.1f} |")
        worst = kernels.reindex(kernels["error"].abs().sort_values(ascending=False, kind="stable").index).head(10)
        lines += ["", "## Largest kernel errors", "", "| mode | rank | request | layer | name | measured (us) | "
                  "predicted (us) | error |", "|---|---|---|---|---|---|---|---|"]
        for r in worst.itertuples():
            lines.append(f"| {r.mode} | {int(r.rank)} | {int(r.request_id)} | {int(r.layer)} | {r.name} | {1e6 * r.measured_s:.1f} | "
                         f"{1e6 * r.predicted_s:.1f} | {_pct(r.error)} |")
    lines += host_markdown(summary.get("host"))
    lines += ["", "![predicted vs measured](scatter.png)", "![error CDF](error_cdf.png)",
              "![timelines](timelines.png)", ""]
    return "\n".join(lines)


def host_markdown(host: dict | None) -> list[str]:
    """The report's section on the measured run's host time (none without its IR): how much of it
    first uses of kernel shapes and long stalls take, and what per-op-name models account for."""
    if not host or not host.get("gaps_n"):
        return []
    total = host["total_s"]

    def row(what: str, n, s) -> str:
        share = _pct(s / total, False) if total > 0 and s is not None else "–"
        return f"| {what} | {'' if n is None else n} | {'–' if s is None else f'{1e3 * s:.1f}'} | {share} |"

    ms = f"{1e3 * host['stall_threshold_s']:g} ms"
    lines = ["", "## Host time of the measured run", "",
             f"Rank {host['rank']}'s host gaps in the IR of the events-timed run: the time from each operation "
             "to the rank's next one, leaving out blocking waits and stream declarations "
             "(`sim.host_gaps`). A first use is the first launch of a kernel shape (name and dims) in the "
             f"run; {host['shapes_n']} shapes were launched.", "",
             "| host gaps | count | ms | ÷ total |", "|---|---|---|---|",
             row("total", host["gaps_n"], total),
             row("first uses of a kernel shape", host["first_use_n"], host["first_use_s"]),
             row(f"gaps ≥ {ms}", host["stalls_n"], host["stalls_s"]),
             row(f"gaps ≥ {ms} that are first uses", host["stall_first_use_n"], host["stall_first_use_s"]),
             row("repeat uses", host["gaps_n"] - host["first_use_n"], host["repeat_s"]),
             row("n × median per op name", None, host["n_median_s"]),
             row("n × median per op name, repeat uses only", None, host["repeat_n_median_s"]),
             row("makespan of the run, for scale", None, host.get("makespan_s"))]
    mk = host.get("makespan_s")
    if mk and math.isfinite(mk) and mk > 0:
        lines += ["", f"The host gaps add up to {_pct(total / mk, False)} of the makespan."]
    drift = host.get("drift") or []
    span = drift_range(drift)
    if span:
        lines += ["", f"Host speed through the run: its repeat launches in {len(drift)} parts of equal count, in "
                  "time order, each part's median host time per op over that op's median for the whole run: "
                  + ", ".join(f"{d['ratio']:.2f}" for d in drift) + f" (range {span[0]:.2f}–{span[1]:.2f}). "
                  "The simulator charges one cost per op name, the run's average (or its first jobs'), so "
                  "where this range is wide, jobs early or late in the run are predicted long or short by as "
                  "much (`sim.host_gaps.host_drift`)."]
    if host["top_stalls"]:
        lines += ["", f"Most stall time (gaps ≥ {ms}) by op: " + ", ".join(
            f"{t['op']} {1e3 * t['s']:.1f} ms ({_count(t['n'], 'gap')}, {_count(t['first_use_n'], 'first use')})"
            for t in host["top_stalls"]) + "."]
    return lines


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def plot_validation(out: Path, table: pd.DataFrame | None = None, measured: pd.DataFrame | None = None) -> list[Path]:
    """Scatter of predicted against measured kernel times, CDF of |error|, and the measured
    timeline above the predicted ones (rank 0, the first jobs)."""
    from sim.plots import plot_timeline, plt

    out = Path(out)
    if table is None:
        table = read_table(out)
    if measured is None:
        meta = _validation_meta(out)
        d = meta.get("kernels_dir") or meta.get("measured_dir")
        measured = read_events(_beside(out, d, "measured_cupti" if meta.get("kernels_dir") else "measured")
                               / "events.parquet")
    # every table read before any figure is written
    panels = [("measured", measured)] + [(m, read_events(out / m / "events.parquet")) for m in MODES
                                         if (out / m / "events.parquet").exists()]
    k = table[table["level"] == "kernel"]
    paths = []
    fig, ax = plt.subplots(figsize=(5.2, 5), dpi=120)
    for i, (mode, g) in enumerate(k.groupby("mode")):
        ax.scatter(g["measured_s"] * 1e6, g["predicted_s"] * 1e6, s=6, alpha=0.5, color=f"C{i}", label=mode)
    if len(k):
        lo = max(1e-3, float(min(k["measured_s"].min(), k["predicted_s"].min())) * 1e6 * 0.8)
        hi = float(max(k["measured_s"].max(), k["predicted_s"].max())) * 1e6 * 1.25
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("measured kernel time (us)")
    ax.set_ylabel("predicted kernel time (us)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    paths.append(out / "scatter.png")
    fig.savefig(paths[-1])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for i, (mode, g) in enumerate(table.groupby("mode")):
        for level, ls in (("kernel", "-"), ("request", ":")):
            e = np.sort(g.loc[g["level"] == level, "error"].abs().dropna().to_numpy())
            if len(e):
                ax.plot(e * 100, np.arange(1, len(e) + 1) / len(e), ls, color=f"C{i}", label=f"{mode} {level}")
    ax.axvline(5, color="grey", lw=0.8, ls="--")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("|error| (%)")
    ax.set_ylabel("fraction")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out / "error_cdf.png")
    fig.savefig(paths[-1])
    plt.close(fig)

    rank = int(measured["rank"].min())
    reqs = sorted(int(r) for r in measured["request_id"].unique() if r >= 0)[:3]
    first = measured[measured["request_id"].isin(reqs)]
    window = (float(first["start_s"].min()), float(first["end_s"].max())) if len(first) else None
    if window is not None:
        for _, ev in panels[1:]:  # the predicted runs may last longer: widen to cover them
            pe = ev[ev["request_id"].isin(reqs) & (ev["rank"] == rank)]
            if len(pe):
                window = (min(window[0], float(pe["start_s"].min())), max(window[1], float(pe["end_s"].max())))
    tracks = max(1, len(set(measured.loc[measured["rank"] == rank, "stream"])))
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, (0.55 * tracks + 1.0) * len(panels) + 0.6), dpi=120,
                             sharex=True, squeeze=False)
    for ax, (label, ev) in zip(axes[:, 0], panels):
        plot_timeline(ev, out / "timelines.png", f"{label}: rank {rank}, jobs {reqs}", ranks=[rank], window=window,
                      ax=ax)
    fig.tight_layout()
    paths.append(out / "timelines.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    return paths
