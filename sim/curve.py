"""Latency–throughput curves and job processing capacity (JPC).

A curve runs the scenario at each offered rate under each policy (in parallel worker
processes) and records achieved throughput and JCT. A rate is *sustained* when the system
completes jobs at least `SUSTAIN` × as fast as they arrived (the realised arrival rate of
the drawn jobs, `arrival_rate`, not the nominal one, so sampling noise is not overload): below capacity the achieved rate
tracks the offered one, above it the queue grows and the achieved rate stalls at capacity.
JPC is the highest achieved rate among sustained points (NaN if none is sustained).
Rows are appended to `curve.csv` as they finish, so an interrupted sweep keeps its points
and `--resume` skips them.
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from tqdm import tqdm

from sim.errors import LigerSimError, ScenarioWarning
from sim.outputs import read_results
from sim.policies import reads
from sim.scenario import Scenario, parse_scenario
from sim.simulate import fit_context, load_jobs, simulate
from sim.workload import with_rate

SUSTAIN = 0.9
GROWTH = 2.0
CURVE_COLUMNS = ["policy", "offered_rate", "arrival_rate", "achieved_rate", "jct_mean_s", "jct_p50_s", "jct_p90_s", "jct_p99_s",
                 "jct_growth", "slo_attainment", "gpu_busy_frac", "overlap_frac", "jobs", "kernels", "sim_wall_s"]
SLO_ATTAINMENT = 0.9


MAX_RATES = 10_000  # points of one line: a typo like 1:1e9:1 would otherwise build a list for minutes


def parse_rates(text: str) -> list[float]:
    """`1,2,5` or `START:STOP:STEP` (inclusive), or a mix: `1,2,5:50:5`."""
    rates: list[float] = []
    try:
        for part in text.split(","):
            if ":" in part:
                start, stop, step = (float(x) for x in part.split(":"))
                if not (step > 0 and math.isfinite(start) and math.isfinite(stop) and math.isfinite(step)):
                    raise ValueError
                n = int(math.floor((stop - start) / step + 1e-9)) + 1
                if n > MAX_RATES:
                    raise LigerSimError(f"{part!r} is {n:,} rates; a sweep takes at most {MAX_RATES:,}",
                                        field="--rates")
                rates.extend(start + i * step for i in range(n))
            elif part.strip():
                rates.append(float(part))
    except ValueError:
        raise LigerSimError(f"{text!r}: give rates in jobs/s as R1,R2,... or START:STOP:STEP",
                            field="--rates") from None
    if not rates or any(not (r > 0 and math.isfinite(r)) for r in rates):
        raise LigerSimError(f"{text!r}: every rate must be a positive number of jobs/s", field="--rates")
    return sorted(set(round(r, 9) for r in rates))


def policy_variant(scn_dict: dict, policy: str) -> dict:
    """The scenario under another policy: a name (TP/PP degrees kept only for `hybrid`, or where
    the scenario gives its prefill replicas a TP degree of their own), or `hybrid:TPxPP` for a
    hybrid of those degrees, either with `+dpN` for N data-parallel replicas or `+PpDd[:A/B]` for P
    prefill and D decode replicas (disaggregated; of TP A and B); without either, the scenario's
    `policy.dp`, `policy.prefill_replicas` and `policy.prefill_tp` (see `scenario_variants`)."""
    (name, degrees), layout = policy_degrees(policy), replica_layout(policy)
    pol = dict(scn_dict.get("policy") or {})
    own_split = layout is None and pol.get("prefill_tp") is not None  # the scenario's TP per phase
    if (name != "hybrid" or degrees) and not own_split:
        pol.pop("tp", None)
        pol.pop("pp", None)
    if degrees:
        pol["tp"], pol["pp"] = degrees
    if layout is not None:
        dp, prefill, tps = layout
        for key in ("dp", "prefill_replicas", "prefill_tp"):  # 1, 0, None: the defaults
            pol.pop(key, None)
        if dp > 1:
            pol["dp"] = dp
        if prefill:
            pol["prefill_replicas"] = prefill
        if tps:
            pol["prefill_tp"], pol["tp"] = tps
    pol["name"] = name
    return {**scn_dict, "policy": pol}


def replica_layout(policy: str) -> tuple[int, int, tuple[int, int] | None] | None:
    """`intra_op+dp2` -> (2, 0, None); `intra_op+1p3d` -> (4, 1, None): replicas and how many of
    them only prefill; `intra_op+1p2d:2/1` -> (3, 1, (2, 1)), the prefill and decode replicas' TP
    degrees; no suffix -> None."""
    _, sep, rest = policy.partition("+")
    if not sep:
        return None
    text, colon, degrees = rest.lower().partition(":")
    if text.startswith("dp") and text[2:].isdecimal() and int(text[2:]) >= 1 and not colon:
        return int(text[2:]), 0, None
    p, x, d = text.removesuffix("d").partition("p")
    a, slash, b = degrees.partition("/")
    tps_ok = not colon or (slash and a.isdecimal() and b.isdecimal() and int(a) >= 1 and int(b) >= 1)
    if text.endswith("d") and x and p.isdecimal() and d.isdecimal() and int(p) >= 1 and int(d) >= 1 and tps_ok:
        return int(p) + int(d), int(p), (int(a), int(b)) if colon else None
    raise LigerSimError(f"{policy!r}: give data-parallel replicas as +dpN (e.g. intra_op+dp2), or prefill and "
                        "decode replicas as +PpDd (e.g. intra_op+1p3d), with their TP degrees as +PpDd:A/B "
                        "(e.g. intra_op+1p2d:2/1)", field="--policies")


def replicas_of(policy: str) -> int | None:
    """`intra_op+dp2` -> 2, `intra_op+1p3d` -> 4; no suffix -> None."""
    layout = replica_layout(policy)
    return None if layout is None else layout[0]


def policy_degrees(policy: str) -> tuple[str, tuple[int, int] | None]:
    """`hybrid:2x4` -> ("hybrid", (2, 4)); a plain name -> (name, None); a `+dpN` suffix aside."""
    name, sep, rest = policy.partition("+")[0].partition(":")
    if not sep:
        return name, None
    tp, x, pp = rest.lower().partition("x")
    if name != "hybrid" or not x or not tp.isdecimal() or not pp.isdecimal() or int(tp) < 1 or int(pp) < 1:
        raise LigerSimError(f"{policy!r}: give a policy name, hybrid:TPxPP (e.g. hybrid:2x2) or all",
                            field="--policies")
    return name, (int(tp), int(pp))


def layout_tag(dp: int, prefill: int, tps: tuple[int, int] | None = None) -> str:
    """The suffix naming `dp` replicas, `prefill` of them prefill-only (of TP degrees `tps`, prefill
    and decode, when they differ): +dpN, +PpDd[:A/B], or none."""
    if not prefill:
        return f"+dp{dp}" if dp > 1 else ""
    return f"+{prefill}p{dp - prefill}d" + (f":{tps[0]}/{tps[1]}" if tps else "")


def policy_label(policy: str) -> str:
    """One spelling per line (`hybrid:02X2+DP02` is `hybrid:2x2+dp2`), so `--resume` finds its points."""
    (name, degrees), layout = policy_degrees(policy), replica_layout(policy)
    tag = "" if layout is None else layout_tag(*layout) or "+dp1"
    return (f"{name}:{degrees[0]}x{degrees[1]}" if degrees else name) + tag


def named_line(policy: str, dp: int, prefill: int = 0, tps: tuple[int, int] | None = None) -> str:
    """The label of a line asked for by name: without a suffix it runs the scenario's replicas
    (`dp`, `prefill` of them prefill-only, of TP degrees `tps`), and says so when there are several
    (else `intra_op` would name both that line and `all`'s one-replica line)."""
    label = policy_label(policy)
    return label if replica_layout(label) is not None else label + layout_tag(dp, prefill, tps)


def every_layout(gpus: int) -> list[str]:
    """Every way to parallelise `gpus` GPUs: for each number of data-parallel replicas dividing
    them, intra_op, inter_op, interleaved and each hybrid TPxPP (1 < TP < a replica's GPUs) on a
    replica's GPUs (one GPU: intra_op alone, the others would repeat it)."""
    out = []
    for dp in (d for d in range(1, gpus + 1) if gpus % d == 0):
        per, tag = gpus // dp, layout_tag(dp, 0)
        names = ["intra_op", "inter_op", "interleaved"] if per > 1 else ["intra_op"]
        names += [f"hybrid:{tp}x{per // tp}" for tp in range(2, per) if per % tp == 0]
        out += [n + tag for n in names]
    return out


def every_split(gpus: int) -> list[str]:
    """Every way to split `gpus` GPUs into prefill and decode replicas (`intra_op+PpDd[:A/B]`): P
    prefill replicas of TP A and D decode replicas of TP B, A and B dividing one another, with
    P x A + D x B = gpus (`:A/B` only where A and B differ)."""
    out = []
    for a in range(1, gpus):
        for b in range(1, gpus):
            if a % b and b % a:
                continue
            for p in range(1, gpus // a + 1):
                rest = gpus - p * a
                if rest >= b and rest % b == 0:
                    out.append("intra_op" + layout_tag(p + rest // b, p, (a, b) if a != b else None))
    return out


VARY_SECTIONS = ("policy", "serving", "hardware", "model")  # not the workload: a curve's jobs are one per rate


def parse_vary(items: list[str] | None) -> list[tuple[str, list]]:
    """`--vary KEY=V1,V2` (repeatable): a scenario field and the values to sweep it over, each read
    as YAML (`8` an int, `true` a bool, `nvswitch-h100` a string)."""
    out: list[tuple[str, list]] = []
    for item in items or []:
        key, sep, values = item.partition("=")
        key = key.strip()
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not vals or not key or "" in key.split("."):
            raise LigerSimError(f"{item!r}: give KEY=V1,V2,... with KEY a scenario field such as policy.split",
                                field="--vary")
        if key.split(".")[0] not in VARY_SECTIONS:
            raise LigerSimError(f"{item!r}: a curve can vary fields of {', '.join(VARY_SECTIONS)}; the workload "
                                "sets the jobs of every point (give another scenario file to change it)", field="--vary")
        if any(k == key for k, _ in out):
            raise LigerSimError(f"{key} is given twice", field="--vary")
        if key in ("policy.name", "policy.tp", "policy.pp"):  # each line is named by its policy
            raise LigerSimError(f"{item!r}: choose policies and hybrid degrees with --policies (e.g. "
                                "intra_op,hybrid:2x2)", field="--vary")
        out.append((key, [yaml.safe_load(v) for v in vals]))
    return out


def with_setting(scn_dict: dict, key: str, value, file: str, _path: str = "") -> dict:
    """The scenario mapping with the dotted field `key` set (copies along the path; a preset given
    by name, as `model: llama2-70b`, becomes `{preset: llama2-70b}` so its fields can be set, and
    a section left out that stands for a preset, as `hardware.host`, starts from that preset)."""
    from sim.scenario import DEFAULT_PRESETS

    head, _, rest = key.partition(".")
    if not rest:
        return {**scn_dict, head: value}
    path = f"{_path}.{head}" if _path else head
    inner = scn_dict.get(head)
    if inner is None and path in DEFAULT_PRESETS:
        inner = DEFAULT_PRESETS[path]
    if isinstance(inner, str):
        inner = {"preset": inner}
    if inner is None:
        inner = {}
    if not isinstance(inner, dict):
        full = f"{_path}.{key}" if _path else key
        raise LigerSimError(f"--vary {full}: {path} is {inner!r}, not a mapping with fields", file=file, field=full)
    return {**scn_dict, head: with_setting(inner, rest, value, file, path)}


def scenario_variants(policies: list[str], vary: list[tuple[str, list]], scn: Scenario, scn_dict: dict,
                      jobs: list, file: str, base_dir: Path | None = None) -> dict[str, dict]:
    """The sweep's lines, label -> scenario mapping: each policy under each combination of `vary`,
    checked here before any point runs (schema, TP against heads, weights and KV cache against GPU
    memory, as the simulator checks them). `all` stands for every way to parallelise the scenario's
    GPUs (`every_layout`: replicas, and on a replica's GPUs intra_op, inter_op, interleaved and each
    hybrid TPxPP); those the model cannot run are left out with a warning, while a line asked for
    by name that cannot run is an error."""
    from sim.simulate import prepare

    every = {"all": every_layout(scn.hardware.count), "disaggregated": every_split(scn.hardware.count)}
    if "disaggregated" in policies and scn.serving.mode != "generative":
        raise LigerSimError("--policies disaggregated splits prefill from decode: it needs serving.mode: generative",
                            file=file, field="--policies")
    pol = scn.policy
    split = (pol.prefill_tp, scn.tp()) if pol.prefill_tp and pol.prefill_tp != scn.tp() else None  # TP per phase
    out: dict[str, dict] = {}
    generative = scn.serving.mode == "generative"
    mode_varies = any(k == "serving.mode" for k, _ in vary)  # then which fields count is per line
    for asked in policies:
        for policy in every.get(asked) or [named_line(asked, scn.policy.dp, scn.policy.prefill_replicas, split)]:
            name = policy_degrees(policy)[0]
            ignored = [] if mode_varies else [k for k, _ in vary if not reads(name, k, generative)]
            for k in ignored:  # one line, not several identical ones
                warnings.warn(f"--vary {k}: {name} does not read it{' when serving generatively' if generative else ''};"
                              f" one {policy} line", ScenarioWarning, stacklevel=2)
            one_replica = (replicas_of(policy) or scn.policy.dp) == 1 and all(k != "policy.dp" for k, _ in vary)
            if one_replica and any(k == "policy.router" for k, _ in vary):
                ignored.append("policy.router")
                warnings.warn(f"--vary policy.router: {policy} runs one replica, which nothing routes to; one line",
                              ScenarioWarning, stacklevel=2)
            combos = list(itertools.product(*[[(k, v) for v in vals] for k, vals in vary if k not in ignored]))
            for combo in combos:
                label = " ".join([policy, *(f"{k}={v}" for k, v in combo)])
                if label in out:
                    continue
                variant = policy_variant(scn_dict, policy if asked != "all" or "+" in policy else policy + "+dp1")
                for k, v in combo:
                    if k == "hardware.profile" and isinstance(v, str) and base_dir and not Path(v).is_absolute():
                        v = str((base_dir / v).resolve())  # relative to the scenario, as in the file
                    variant = with_setting(variant, k, v, file)
                try:
                    line = parse_scenario(variant, file)
                    prepare(line, fitted(line, jobs), record_ir=False, file=file)
                except LigerSimError as e:
                    if asked not in every:
                        raise LigerSimError(f"{label}: {e}", field="--policies") from None
                    warnings.warn(f"--policies {asked}: {label} left out: {e}", ScenarioWarning, stacklevel=2)
                    continue
                out[label] = variant
    if not out:
        raise LigerSimError(f"no policy of --policies {','.join(policies)} can run this scenario (see the warnings "
                            "above)" if policies else "give at least one policy", field="--policies")
    return out


def jobs_at_rate(scn: Scenario, base_dir: Path | None, rate: float, jobs: int | None) -> list:
    """The workload's jobs offered at `rate`, the same for every line, so loaded once per rate; each
    point fits them to its own scenario's context (`fitted`), which `--vary` may change."""
    scn = scn.model_copy(update={"workload": with_rate(scn.workload, rate)})
    return load_jobs(scn, base_dir, jobs, fit=False)


def fitted(scn: Scenario, jobs: list) -> list:
    """`fit_context` without its warning: the sweep said it once, before the points started."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScenarioWarning)
        return fit_context(scn, jobs)


def run_point(variant: dict, label: str, rate: float, job_list: list, file: str,
              fold_ranks: bool = False) -> dict:
    """One point of a curve: the line `label`'s scenario mapping at `rate` (top-level so worker
    processes and Ray tasks can run it). The warnings it raised travel back with its row (key
    `warnings`), for the sweep to say each once rather than once per worker."""
    from sim.outputs import run_tables
    from sim.simulate import SYMMETRIC_POLICIES

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        scn = parse_scenario(variant, file)
        scn = scn.model_copy(update={"workload": with_rate(scn.workload, rate)})
        job_list = fitted(scn, job_list)
        run = simulate(scn, job_list, record_ir=False, file=file,
                       fold_ranks=fold_ranks and scn.policy.name in SYMMETRIC_POLICIES)
        req, s = run_tables(run.events, job_list, run.result.meta, scn.policy.name, run.result.sim_wall_s)
        req = req.sort_values("arrival_s")
        third = max(1, len(req) // 3)
        s["jct_growth"] = float(req["jct_s"].iloc[-third:].mean() / req["jct_s"].iloc[:third].mean())
    said = [(w.category if "<" not in w.category.__qualname__ else UserWarning, str(w.message)) for w in caught]
    return {"policy": label, "offered_rate": rate, "arrival_rate": s["offered_rate_jobs_s"],
            "achieved_rate": s["throughput_jobs_s"], **{k: s.get(k) for k in CURVE_COLUMNS[4:]},
            "warnings": list(dict.fromkeys(said))}


def read_curve(path: Path) -> pd.DataFrame:
    """A sweep's curve.csv, or a one-line error saying it is not one (`--resume`, `plot curve`)."""
    return read_results(path, "a curve", ("policy", "offered_rate", "achieved_rate", "jct_mean_s"),
                        "`ligersim curve` writes one")


def jpc(curve: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for policy, g in curve.groupby("policy", sort=False):
        ok = (g["achieved_rate"] >= SUSTAIN * g["arrival_rate"]) & (g["jct_growth"] <= GROWTH)
        if "slo_attainment" in g and g["slo_attainment"].notna().any():  # generative with SLOs
            ok = g["slo_attainment"] >= SLO_ATTAINMENT
        ok = g[ok]
        rows.append({"policy": policy, "jpc_jobs_s": float(ok["achieved_rate"].max()) if len(ok) else np.nan,
                     "capacity_jobs_s": float(g["achieved_rate"].max())})
    return pd.DataFrame(rows, columns=["policy", "jpc_jobs_s", "capacity_jobs_s"])


def resolved_dict(scn: Scenario, scn_dict: dict) -> dict:
    """The scenario's mapping with its profile's path as `load_scenario` resolved it (relative to
    the scenario file), so a point finds it from any working directory."""
    hw = scn_dict.get("hardware")
    if scn.hardware.profile and isinstance(hw, dict):
        return {**scn_dict, "hardware": {**hw, "profile": scn.hardware.profile}}
    return scn_dict


def _run_local(variants: dict[str, dict], todo: list[tuple[str, float]], jobs_at, file: str, fold_ranks: bool,
               workers: int, late: list[dict]) -> Iterator[dict]:
    """Each point's row as it finishes, from worker processes on this machine. Stopped early (an
    error, Ctrl-C), it cancels the points not started and puts the rows of those that still finish
    in `late`, for the caller to keep."""
    pool = ProcessPoolExecutor(max_workers=workers)
    futs: list = []
    given: set = set()
    try:
        for p, r in todo:
            futs.append(pool.submit(run_point, variants[p], p, r, jobs_at(r), file, fold_ranks))
        for fut in as_completed(futs):
            given.add(fut)
            yield fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        late += [f.result() for f in futs if f not in given and not f.cancelled() and f.exception() is None]


def sweep(scn: Scenario, scn_dict: dict, base_dir: Path | None, policies: list[str], rates: list[float],
          out: Path, jobs: int | None = None, workers: int | None = None, resume: bool = False,
          file: str = "<scenario>", progress: bool = True, fold_ranks: bool = False,
          ray_address: str | None = None, vary: list[tuple[str, list]] | None = None) -> pd.DataFrame:
    """Run every (line, rate) point not yet in `out/curve.csv`, appending each row as it finishes,
    then write the sorted curve and `jpc.csv`. A line is a policy under one combination of `vary`
    (`parse_vary`). Points run in local worker processes, or on a Ray cluster when `ray_address` is
    given ("" starts or finds one as `ray.init()` does)."""
    if workers is not None and workers < 1:
        raise LigerSimError(f"--workers {workers}: give the number of worker processes, at least 1", field="--workers")
    said: set[tuple] = set()

    def say(category: type[Warning], message: str) -> None:
        """Each warning once, whether the checks here or a worker raised it (a worker that does not
        share this process's memory raises again what the checks said)."""
        if (category, message) not in said:
            said.add((category, message))
            warnings.warn(message, category, stacklevel=3)

    with warnings.catch_warnings(record=True) as checks:
        warnings.simplefilter("default")
        first = load_jobs(scn, base_dir, jobs, fit=False)  # fail fast on the workload
        fit_context(scn, first)  # for its warning: each point fits the jobs to its own line
        scn_dict = resolved_dict(scn, scn_dict)
        variants = scenario_variants(policies, vary or [], scn, scn_dict, first, file, base_dir)
    for w in checks:
        say(w.category, str(w.message))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "curve.csv"
    done = read_curve(path) if resume and path.exists() else pd.DataFrame(columns=CURVE_COLUMNS)
    have = {(p, round(r, 9)) for p, r in zip(done["policy"], done["offered_rate"])}
    todo = [(p, r) for p in variants for r in rates if (p, round(r, 9)) not in have]
    if not resume or not path.exists():
        pd.DataFrame(columns=CURVE_COLUMNS).to_csv(path, index=False)
    loaded: dict[float, list] = {}

    def jobs_at(rate: float) -> list:
        if rate not in loaded:
            loaded[rate] = jobs_at_rate(scn, base_dir, rate, jobs)
        return loaded[rate]

    late: list[dict] = []
    if not todo:  # every point is in curve.csv already (a resume): start nothing
        rows: Iterator[dict] = (row for row in late)
    elif ray_address is not None:
        from sim.sweep_ray import run_on_ray

        rows = run_on_ray(variants, todo, jobs_at, file, fold_ranks, ray_address, workers)
    else:
        rows = _run_local(variants, todo, jobs_at, file, fold_ranks,
                          workers or min(len(todo), os.cpu_count() or 1) or 1, late)

    def keep(row: dict) -> None:
        said_here = row.pop("warnings", [])
        pd.DataFrame([row], columns=CURVE_COLUMNS).to_csv(path, mode="a", header=False, index=False)
        for category, message in said_here:  # after the row is saved: `-W error` must not lose it
            say(category, message)

    bar = tqdm(total=len(todo), desc="curve", unit="run", disable=not progress)
    try:
        for row in rows:
            keep(row)
            bar.set_postfix_str(f"{row['policy']} @ {row['offered_rate']:g}/s")
            bar.update()
    finally:
        rows.close()  # type: ignore[attr-defined]
        for row in late:
            keep(row)
        bar.close()
    curve = pd.read_csv(path)
    order = {p: i for i, p in enumerate(variants)}
    curve = curve.sort_values(["policy", "offered_rate"], key=lambda c: c.map(order) if c.name == "policy" else c)
    curve.to_csv(path, index=False)
    jpc(curve).to_csv(out / "jpc.csv", index=False)
    return curve
