"""README figures that are not curves: intra_op vs interleaved timelines on the V100 setup.

Run: `.venv/bin/python results/figures.py` (writes results/timeline-v100.png).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from sim.plots import plot_timeline
from sim.scenario import load_scenario, parse_scenario
from sim.simulate import load_jobs, simulate

HERE = Path(__file__).resolve().parent
SCENARIO = HERE.parent / "scenarios" / "liger-v100-nvlink.yaml"


def main() -> None:
    scn, base = load_scenario(SCENARIO)
    d = scn.model_dump(mode="json")
    d["workload"]["arrival"]["rate"] = 400.0  # saturating: several jobs in flight
    fig, axes = plt.subplots(2, 1, figsize=(11, 4.6), dpi=120, sharex=True)
    for ax, policy in zip(axes, ["intra_op", "interleaved"]):
        d["policy"]["name"] = policy
        s = parse_scenario(d, str(SCENARIO))
        jobs = load_jobs(s, base, 24)
        run = simulate(s, jobs, record_ir=False)
        t0 = run.events["start_s"].min() + 0.040
        plot_timeline(run.events, HERE, f"{policy}: rank 0, {scn.name} at saturation", ranks=[0],
                      window=(t0, t0 + 0.012), ax=ax)
    for ax in axes:
        ax.set_xlabel("")
    axes[-1].set_xlabel("time (ms)")
    fig.tight_layout()
    fig.savefig(HERE / "timeline-v100.png")
    print(f"wrote {HERE / 'timeline-v100.png'}")


if __name__ == "__main__":
    main()
