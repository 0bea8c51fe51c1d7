"""Where a validation run's makespan error lives: the simulator given the measured run's own host costs.

A diagnostic, not a prediction. For each committed report under `results/validation/NAME/`, this
re-predicts the measured run with the committed profile, except that the scenario's in-situ host
costs are replaced by those of the measured run itself (`hw.host_in_situ.summarise` of its IR: per-op
medians and means, which the simulator charges). If the simulator then comes close to the measured
makespan, its scheduling of host and GPU work is right and the error is in the host costs it was
given; if not, the model's structure is wrong. Nothing is written under `results/`.

`--first-jobs N` keeps only the host costs of the run's first N jobs (its ops until the N-th
arriving job ended): an estimate of what `ligersim validate`'s in-process probe would give,
whose N jobs run before the clock in the run's own process (`hw.launch.host_probe`).

Run: `.venv/bin/python results/host_oracle.py [NAME ...] [--first-jobs N]`
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    import yaml

    from hw.host_in_situ import summarise
    from sim import ir
    from sim.host_gaps import blocking_costs, op_costs, op_costs_by
    from sim.profile import host_key_of, scenario_key
    from sim.validation import predict

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="report folders (default: all)")
    ap.add_argument("--profile", default=str(ROOT / "profiles" / "h100-sxm.yaml"))
    ap.add_argument("--root", default=str(ROOT / "results" / "validation"))
    ap.add_argument("--first-jobs", type=int, default=None, metavar="N",
                    help="only the host costs of the run's first N jobs")
    args = ap.parse_args()
    root = Path(args.root)
    names = args.names or sorted(p.parent.name for p in root.glob("*/measured"))
    base = yaml.safe_load(Path(args.profile).read_text())
    whose = f"its first {args.first_jobs} jobs'" if args.first_jobs else "the run's own"
    print(f"{'scenario':36s} {'makespan':>9s} {'mean JCT':>9s}   (closed loop, with {whose} host costs)")
    for name in names:
        out = root / name
        scn_path = ROOT / "scenarios" / "validation" / f"{name}.yaml"
        scn = yaml.safe_load(scn_path.read_text())
        key = host_key_of(scn)
        run = ir.load(out / "measured" / "ir.jsonl")
        if args.first_jobs:
            import pandas as pd

            req = pd.read_csv(out / "measured" / "requests.csv").sort_values("arrival_s")
            until = float(req["end_s"].iloc[:args.first_jobs].max())
            run = ir.Schedule(run.world, [op for op in run.ops if op.t <= until], run.meta)
        own = summarise(op_costs(run), [name], op_costs_by(run), blocking_costs(run))
        given = base.get("host_in_situ", {})
        given = given.get(scenario_key(scn.get("name", name))) or given.get(key) or {}
        for k in ("after_s", "sleep_late_s"):  # runs recorded before `done` existed have none
            if k not in own and k in given:
                own[k] = given[k]
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            (tmp / "profile.yaml").write_text(yaml.safe_dump({**base, "host_in_situ": {key: own}}))
            shutil.copytree(out / "measured", tmp / "measured")
            kernels = out / "measured_cupti"
            s = predict(tmp / "measured", scn_path, tmp / "profile.yaml", tmp / "out",
                        kernels=kernels if kernels.is_dir() else None)
        c = s["closed_loop"]
        print(f"{name:36s} {c['makespan_err']:+9.1%} {c['jct_mean_err']:+9.1%}", flush=True)


if __name__ == "__main__":
    main()
