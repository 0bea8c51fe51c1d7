"""Engine speed: simulated kernels per wall-clock second.

4 GPUs, the GLM-130B-shaped encoder at 70 layers, 200 jobs, in-order policy (issue 2's
benchmark; floor 100,000 kernels/s on one core). Run: `.venv/bin/python bench/engine.py`.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from sim.scenario import parse_scenario
from sim.simulate import load_jobs, simulate

SCENARIO = {
    "name": "bench-engine",
    "hardware": {"gpu": "A100-SXM", "count": 4, "interconnect": "nvswitch-a100"},
    "model": {"preset": "liger-encoder", "layers": 70},
    "workload": {"kind": "generate", "jobs": 200, "arrival": {"process": "poisson", "rate": 5.0},
                 "batch": 2, "seq_len": {"dist": "uniform", "low": 16, "high": 128}},
    "policy": {"name": "in_order"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--policy", default="in_order")
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--profile", action="store_true", help="print the top functions by time")
    ap.add_argument("--record-ir", action="store_true", help="also record the IR (as `ligersim run` does)")
    args = ap.parse_args()
    scn_dict = dict(SCENARIO, policy={"name": args.policy})
    scn_dict["workload"] = dict(SCENARIO["workload"], jobs=args.jobs)
    scn = parse_scenario(scn_dict, "bench")
    jobs = load_jobs(scn, None)
    prof = cProfile.Profile() if args.profile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    run = simulate(scn, jobs, record_ir=args.record_ir)
    if prof:
        prof.disable()
    wall = time.perf_counter() - t0
    n = len(run.events)
    eng = run.result.sim_wall_s
    print(f"policy {args.policy}: {n:,} kernels, {len(jobs)} jobs, 4 GPUs, 70 layers")
    print(f"engine: {eng:.2f} s -> {n / eng:,.0f} kernels/s; end to end (incl. events table): "
          f"{wall:.2f} s -> {n / wall:,.0f} kernels/s")
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
