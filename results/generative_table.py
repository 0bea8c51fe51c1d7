"""The generative-serving tables in the README: the Azure traces' first N requests on each
`scenarios/azure-*.yaml` under every policy (rank-folded where exact).

Run: `.venv/bin/python results/generative_table.py [--jobs 100] [--policies inter_op,hybrid]
[--pipeline-admission least_loaded]`; writes
results/generative/<scenario>/<policy>.json (summaries) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sim.outputs import run_tables
from sim.scenario import load_scenario, parse_scenario
from sim.simulate import SYMMETRIC_POLICIES, load_jobs, simulate

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ["azure-conv-llama2-70b-h100", "azure-code-llama2-70b-h100", "azure-conv-llama2-13b-a100-pcie",
             "azure-code-llama2-13b-a100-pcie"]
POLICIES = {"intra_op": {}, "inter_op": {}, "interleaved": {}, "hybrid": {"tp": 2}}
COLUMNS = [("ttft_mean_s", "TTFT mean (ms)", 1e3), ("ttft_p99_s", "TTFT p99 (ms)", 1e3),
           ("tpot_mean_s", "TPOT mean (ms)", 1e3), ("tpot_p99_s", "TPOT p99 (ms)", 1e3),
           ("jct_mean_s", "e2e mean (s)", 1.0), ("tokens_per_s", "tokens/s", 1.0),
           ("slo_attainment", "SLO met", 100.0), ("overlap_frac", "overlap", 100.0)]


def run(name: str, policy: str, knobs: dict, jobs: int, admission: str) -> dict:
    path = ROOT / "scenarios" / f"{name}.yaml"
    scn, base = load_scenario(path)
    d = scn.model_dump(mode="json")
    d["policy"] = {**d["policy"], "name": policy, "tp": None, "pp": None, **knobs}
    d["serving"] = {**d["serving"], "pipeline_admission": admission}
    scn = parse_scenario(d, str(path))
    js = load_jobs(scn, base, jobs)
    r = simulate(scn, js, record_ir=False, file=str(path), fold_ranks=policy in SYMMETRIC_POLICIES)
    _, s = run_tables(r.events, js, r.result.meta, policy, r.result.sim_wall_s)
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--policies", default=",".join(POLICIES), help="a subset of " + ", ".join(POLICIES))
    ap.add_argument("--pipeline-admission", default="next_group", choices=("next_group", "least_loaded"),
                    help="serving.pipeline_admission; other than the default, summaries go to POLICY-VALUE.json")
    args = ap.parse_args()
    suffix = "" if args.pipeline_admission == "next_group" else f"-{args.pipeline_admission}"
    for name in SCENARIOS:
        out = ROOT / "results" / "generative" / name
        out.mkdir(parents=True, exist_ok=True)
        print(f"\n**{name}** (first {args.jobs} requests)\n")
        print("| policy | " + " | ".join(c[1] for c in COLUMNS) + " |")
        print("|---|" + "---|" * len(COLUMNS))
        for policy, knobs in POLICIES.items():
            if policy not in args.policies.split(","):
                continue
            s = run(name, policy, knobs, args.jobs, args.pipeline_admission)
            (out / f"{policy}{suffix}.json").write_text(json.dumps(s, indent=2, default=float) + "\n")
            label = policy + (" (tp 2 x pp 2)" if policy == "hybrid" else "")
            cells = [f"{s[k] * scale:.1f}" if s.get(k) is not None else "" for k, _, scale in COLUMNS]
            print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
