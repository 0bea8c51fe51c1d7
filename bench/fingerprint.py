"""Fingerprints of simulated runs: one line per (scenario, policy, variant) with a sha256 of the
events table and of the IR, so an engine change can be shown to leave every result unchanged.

Runs every scenario in scenarios/*.yaml and scenarios/validation/*.yaml (the first `--jobs` jobs)
under intra_op, inter_op, interleaved, and hybrid where the scenario sets tp/pp; the symmetric
policies also rank-folded, and the validation scenarios also with the H100 profile (measured
kernel times, host costs and kernel gaps: the engine paths a roofline run leaves out); the
other scenarios also as two data-parallel replicas of intra_op and interleaved (and, generative,
as one prefill and one decode replica).
Run: `python bench/fingerprint.py > before.txt`, change things, run again and `diff`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from sim import ir
from sim.curve import policy_variant
from sim.errors import LigerSimError
from sim.scenario import parse_scenario
from sim.simulate import SYMMETRIC_POLICIES, load_jobs, simulate

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ("intra_op", "inter_op", "interleaved", "hybrid")
PROFILE = ROOT / "profiles" / "h100-sxm.yaml"


def events_digest(df: pd.DataFrame) -> str:
    """sha256 over every column's values: numbers as their bytes, text joined (exact, unlike CSV)."""
    h = hashlib.sha256()
    for col in df.columns:
        h.update(col.encode())
        values = df[col].to_numpy()
        if values.dtype == object:
            h.update("\x1f".join(map(str, values)).encode())
        else:
            h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()[:16]


def ir_digest(schedule: ir.Schedule) -> str:
    """sha256 of the IR's content: every op with its host times and its kernel's spec written out
    (not `sim.ir.save`'s bytes, whose spec lines follow which spec objects are shared)."""
    header = json.dumps([schedule.world, schedule.meta], sort_keys=True).replace(str(ROOT), "<checkout>")
    h = hashlib.sha256(header.encode())  # the same in any checkout (the header names the profile's path)
    specs: dict[int, str] = {}
    for op in schedule.ops:
        k = op.kernel
        kd = ""
        if k is not None:
            sd = specs.get(id(k.spec))
            if sd is None:
                sd = specs[id(k.spec)] = json.dumps(k.spec.to_dict(), sort_keys=True)
            kd = f"{k.kernel_id},{k.request_id},{k.layer},{k.group},{k.parent},{sd}"
        h.update(f"{op.rank},{op.op},{op.t!r},{op.stream},{op.event},{op.priority},{op.until!r},{op.done!r},{kd}\n"
                 .encode())
    return h.hexdigest()[:16]


def variants(data: dict, validation: bool) -> list[tuple[str, dict, bool]]:
    """(label, scenario dict, fold) for every policy and variant a scenario is fingerprinted under."""
    out = []
    has_tp_pp = bool({"tp", "pp"} & set(data.get("policy") or {}))
    for policy in POLICIES:
        if policy == "hybrid" and not has_tp_pp:
            continue
        d = policy_variant(data, policy)
        profiled = [("", d)]
        if validation:
            hw = dict(d["hardware"])
            hw["profile"] = str(PROFILE)
            profiled.append(("+prof", {**d, "hardware": hw}))
        for tag, dd in profiled:
            out.append((policy + tag, dd, False))
            if policy in SYMMETRIC_POLICIES:
                out.append((policy + tag + "+fold", dd, True))
    if not validation and data["hardware"]["count"] % 2 == 0:  # two replicas sharing the engine (and links)
        policies = ["intra_op+dp2", "interleaved+dp2"]
        if (data.get("serving") or {}).get("mode") == "generative":
            policies.append("intra_op+1p1d")  # disaggregated: KV pushes and host notices
        for policy in policies:
            out += [(policy, policy_variant(data, policy), False), (policy + "+fold", policy_variant(data, policy), True)]
    return out


def fingerprint(path: Path, jobs: int) -> list[str]:
    data = yaml.safe_load(path.read_text())
    name = path.relative_to(ROOT).as_posix()
    lines = []
    for label, d, fold in variants(data, "validation" in path.parts):
        t0 = time.perf_counter()
        try:
            scn = parse_scenario(d, str(path))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                job_list = load_jobs(scn, path.parent, jobs)
                run = simulate(scn, job_list, record_ir=True, file=str(path), fold_ranks=fold)
            line = (f"{name} {label} kernels={len(run.events)} end={run.result.end_s!r} "
                    f"events={events_digest(run.events)} ir={ir_digest(run.result.schedule)}")
        except LigerSimError as e:
            line = f"{name} {label} error: {str(e).splitlines()[0]}"
        print(f"  {time.perf_counter() - t0:6.1f} s  {name} {label}", file=sys.stderr, flush=True)
        lines.append(line)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=40, help="each scenario's first N jobs")
    ap.add_argument("--trace-jobs", type=int, default=3,
                    help="a trace's first N requests (the Azure traces' long outputs make 40 take minutes)")
    ap.add_argument("--only", default="", help="only scenario paths containing this text")
    ap.add_argument("--skip", default="", help="skip scenario paths containing any of these comma-separated texts "
                    "(llama3-405b: its 16 unfolded ranks take most of an hour at 40 jobs)")
    args = ap.parse_args()
    paths = sorted((ROOT / "scenarios").glob("*.yaml")) + sorted((ROOT / "scenarios" / "validation").glob("*.yaml"))
    runs = errors = 0
    for path in paths:
        if args.only in str(path) and not any(t and t in str(path) for t in args.skip.split(",")):
            trace = "kind: trace" in path.read_text()
            for line in fingerprint(path, args.trace_jobs if trace else args.jobs):
                print(line, flush=True)
                runs, errors = runs + 1, errors + (" error: " in line)
    # an error line matches on both sides of a comparison without testing anything: count them
    print(f"{runs} runs, {errors} refused by their scenario (error lines)", file=sys.stderr)


if __name__ == "__main__":
    main()
