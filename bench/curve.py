"""Curve speed: a 3-policy x 8-rate latency-throughput sweep of the A100-PCIe paper scenario.

Run: `.venv/bin/python bench/curve.py [--workers N] [--ray [ADDRESS]]`; prints wall time and points/s
(with `--ray`, Ray's start-up included).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from sim.curve import jpc, sweep
from sim.scenario import load_scenario

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "liger-a100-pcie.yaml"
RATES = [20, 40, 60, 80, 100, 120, 140, 160]
POLICIES = ["intra_op", "inter_op", "interleaved"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS", help="run the points on Ray")
    args = ap.parse_args()
    scn, base = load_scenario(SCENARIO)
    scn_dict = yaml.safe_load(SCENARIO.read_text())
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        curve = sweep(scn, scn_dict, base, POLICIES, RATES, Path(d), workers=args.workers, file=str(SCENARIO),
                      progress=False, ray_address=args.ray)
        wall = time.perf_counter() - t0
    points = len(curve)
    kernels = int(curve["kernels"].sum())
    where = "local worker processes" if args.ray is None else f"Ray ({args.ray or 'started here'})"
    print(f"{where}: {points} points ({len(POLICIES)} policies x {len(RATES)} rates, {scn.workload.jobs} jobs each), "
          f"{kernels:,} kernels: {wall:.1f} s wall, {points / wall:.2f} points/s, {kernels / wall:,.0f} kernels/s")
    print(jpc(curve).to_string(index=False))


if __name__ == "__main__":
    main()
