"""Generative serving speed: the first 600 s of the Azure conversation trace (2,867 requests)
on LLaMA-2-70B over 4 x H100-SXM under intra_op and interleaved (issue 7's benchmark).

Prints, per policy, wall time and simulated kernels per second, plus what was simulated
(iterations, TTFT/TPOT). `--fold-ranks` simulates rank 0 only (exact for these
tensor-parallel policies, 4x fewer kernels); `--seconds` shortens the trace.
Run: `.venv/bin/python bench/generative.py [--fold-ranks] [--seconds 600]`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sim.outputs import run_tables
from sim.scenario import parse_scenario
from sim.simulate import load_jobs, simulate

TRACE = Path(__file__).resolve().parent.parent / "traces" / "azure_llm_2023_conv.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=600.0, help="replay the trace's first N seconds")
    ap.add_argument("--policies", default="intra_op,interleaved")
    ap.add_argument("--fold-ranks", action="store_true")
    args = ap.parse_args()
    base = {"name": "bench-generative", "hardware": {"gpu": "H100-SXM", "count": 4, "interconnect": "nvswitch-h100"},
            "model": "llama2-70b", "workload": {"kind": "trace", "path": str(TRACE)},
            "serving": {"mode": "generative"}}
    for policy in args.policies.split(","):
        scn = parse_scenario({**base, "policy": {"name": policy}}, "bench")
        jobs = [j for j in load_jobs(scn, None) if j.arrival_s < args.seconds]
        t0 = time.perf_counter()
        run = simulate(scn, jobs, record_ir=False, fold_ranks=args.fold_ranks)
        wall = time.perf_counter() - t0
        req, s = run_tables(run.events, jobs, run.result.meta, policy, run.result.sim_wall_s)
        n, its = len(run.events), len({row[0] for row in run.result.meta["iterations"]})
        print(f"{policy}: {len(jobs)} requests, {its:,} iterations, {n:,} kernels"
              f"{' (rank 0 only)' if args.fold_ranks else ''}; wall {wall:.1f} s (engine {run.result.sim_wall_s:.1f} s)"
              f" -> {n / run.result.sim_wall_s:,.0f} kernels/s in the engine; TTFT mean {s['ttft_mean_s'] * 1e3:.0f} ms,"
              f" TPOT mean {s['tpot_mean_s'] * 1e3:.1f} ms, {s['tokens_per_s']:,.0f} tokens/s", flush=True)
        del run, req  # one policy's tables at a time: the next run starts from a clean slate


if __name__ == "__main__":
    main()
