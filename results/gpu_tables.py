"""The README's GPU tables, from committed results: the validation errors of every suite scenario
(`results/validation/NAME/summary.json`, issue 5) and the measured intra_op vs interleaved runs
of issue 4 (`results/hw/NAME/summary.json`).

Run: `.venv/bin/python results/gpu_tables.py [--validation DIR] [--hw DIR]` after the GPU session
(`scripts/gpu-suite.sh`) has brought its outputs back. Prints Markdown; says which scenarios miss
the issue's floors (median per-kernel |error|, makespan and mean-JCT |error| each ≤ 5%).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLOOR = 0.05
MODES = ("closed_loop", "replay")


def _pct(x: float | None, sign: bool = True) -> str:
    if x is None or x != x:
        return "–"
    return f"{x:+.1%}" if sign else f"{x:.1%}"


def misses(mode: dict) -> list[str]:
    """Which of the issue's floors a mode's summary misses."""
    out = []
    for key in ("kernel_err_median", "makespan_err", "jct_mean_err"):
        v = mode.get(key)
        if v is None or v != v or abs(v) > FLOOR:
            out.append(key)
    return out


def validation_table(root: Path) -> str:
    """One row per scenario; each error as closed loop / replay."""
    rows = []
    for f in sorted(root.glob("*/summary.json")):
        s = json.loads(f.read_text())
        modes = [s[m] for m in MODES if s.get(m)]
        if not modes:
            continue

        def both(key, sign=True, modes=modes):
            return " / ".join(_pct(m.get(key), sign) for m in modes)

        miss = sorted({k for m in modes for k in misses(m)})
        host = "in process" if str(s.get("host_costs", "")).startswith("in process") else "profile"
        if s.get("host_speed_vs_profile"):
            host += f" ({s['host_speed_vs_profile']:.2f}x)"
        drift = [d["ratio"] for d in (s.get("host") or {}).get("drift") or []]
        spread = f"{min(drift):.2f}–{max(drift):.2f}" if drift else "–"
        rep = (s.get("kernel_repeat_spread") or {}).get("median")
        rows.append(f"| {f.parent.name} | {s.get('policy')} | {host} | {spread} | {_pct(rep, False)} | "
                    f"{both('kernel_err_median', False)} | "
                    f"{both('kernel_err_p90', False)} | {both('makespan_err')} | {both('jct_mean_err')} | "
                    f"{both('ttft_mean_err') if 'ttft_mean_err' in modes[0] else '–'} | "
                    f"{'yes' if not miss else 'no: ' + ', '.join(k.removesuffix('_err') for k in miss)} |")
    if not rows:
        return f"(no validation results under {root})"
    devices = sorted({json.loads(f.read_text()).get("device") or "?" for f in root.glob("*/summary.json")})
    dates = sorted({str(json.loads(f.read_text()).get("date", ""))[:10] for f in root.glob("*/summary.json")})
    head = (f"Measured on {', '.join(devices)} ({', '.join(dates)}). Errors are (predicted − measured) / measured, "
            "each as closed loop / replay; kernel errors are the median and 90th percentile of |error| over "
            "matched kernels. Host costs per op: measured in the run's own process before its clock (with this "
            "host's speed against the profile's in-situ runs), or the profile's. Host drift: the measured run's "
            "host speed through the run, the lowest and highest of its eighths against its own median per op "
            "(`sim.host_gaps.host_drift`). GPU spread: the median of |time / median − 1| of each measured kernel "
            "against the run's other kernels of its shape (`sim.validation.repeat_spread`), about the least "
            "kernel error a model of one time per shape can have.\n\n"
            "| scenario | policy | host costs | host drift | GPU spread | kernel \\|err\\| median | kernel p90 | "
            "makespan | mean JCT | mean TTFT | within 5% |\n|---|---|---|---|---|---|---|---|---|---|---|")
    return head + "\n" + "\n".join(rows)


def hw_table(root: Path) -> str:
    runs = {f.parent.name: json.loads(f.read_text()) for f in sorted(root.glob("*/summary.json"))}
    runs = {k: v for k, v in runs.items() if "completed" in v}  # measured runs, not validation reports
    if not runs:
        return f"(no measured runs under {root})"
    lines = ["| run | policy | jobs | makespan (s) | throughput (jobs/s) | mean JCT (ms) | p90 JCT (ms) | overlap |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in runs.items():
        lines.append(f"| {name} | {s['policy']} | {s['completed']}/{s['jobs']} | {s['makespan_s']:.3f} | "
                     f"{s['throughput_jobs_s']:.1f} | {s['jct_mean_s'] * 1e3:.2f} | {s['jct_p90_s'] * 1e3:.2f} | "
                     f"{_pct(s.get('overlap_frac'), False)} |")
    # compare like with like: runs whose names differ only in the policy (e.g. a -events suffix)
    for name, b in runs.items():
        if b["policy"] != "interleaved":
            continue
        a = runs.get(name.replace("interleaved", "intra"))
        if a is None or a["policy"] != "intra_op":
            continue
        lines.append("")
        lines.append(f"{name} vs {name.replace('interleaved', 'intra')}: throughput "
                     f"{b['throughput_jobs_s'] / a['throughput_jobs_s'] - 1:+.1%}, makespan "
                     f"{b['makespan_s'] / a['makespan_s'] - 1:+.1%}, mean JCT {b['jct_mean_s'] / a['jct_mean_s'] - 1:+.1%}")
    device = (root / "device.txt").read_text().strip().replace("\n", "; ") if (root / "device.txt").exists() else ""
    return (f"Device: {device}\n\n" if device else "") + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--validation", type=Path, default=HERE / "validation")
    ap.add_argument("--hw", type=Path, default=HERE / "hw")
    args = ap.parse_args(argv)
    print("## Validation\n\n" + validation_table(args.validation) + "\n\n## Issue 4 runs\n\n" + hw_table(args.hw))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
