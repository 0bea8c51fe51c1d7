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
    rows = []
    for f in sorted(root.glob("*/summary.json")):
        s = json.loads(f.read_text())
        for mode in MODES:
            m = s.get(mode)
            if not m:
                continue
            miss = misses(m)
            rows.append(f"| {f.parent.name} | {s.get('policy')} | {mode} | {_pct(m['kernel_err_median'], False)} | "
                        f"{_pct(m['kernel_err_p90'], False)} | {_pct(m['makespan_err'])} | {_pct(m['jct_mean_err'])} | "
                        f"{_pct(m.get('ttft_mean_err'))} | {_pct(m['throughput_err'])} | "
                        f"{'yes' if not miss else 'no: ' + ', '.join(miss)} |")
    if not rows:
        return f"(no validation results under {root})"
    devices = sorted({json.loads(f.read_text()).get("device") or "?" for f in root.glob("*/summary.json")})
    dates = sorted({str(json.loads(f.read_text()).get("date", ""))[:10] for f in root.glob("*/summary.json")})
    head = (f"Measured on {', '.join(devices)} ({', '.join(dates)}). Errors are (predicted − measured) / measured; "
            "kernel errors are the median and 90th percentile of |error| over matched kernels.\n\n"
            "| scenario | policy | mode | kernel \\|err\\| median | p90 | makespan | mean JCT | mean TTFT | "
            "throughput | within 5% |\n|---|---|---|---|---|---|---|---|---|---|")
    return head + "\n" + "\n".join(rows)


def hw_table(root: Path) -> str:
    runs = {f.parent.name: json.loads(f.read_text()) for f in sorted(root.glob("*/summary.json"))}
    if not runs:
        return f"(no measured runs under {root})"
    lines = ["| run | policy | jobs | makespan (s) | throughput (jobs/s) | mean JCT (ms) | p90 JCT (ms) | overlap |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in runs.items():
        lines.append(f"| {name} | {s['policy']} | {s['completed']}/{s['jobs']} | {s['makespan_s']:.3f} | "
                     f"{s['throughput_jobs_s']:.1f} | {s['jct_mean_s'] * 1e3:.2f} | {s['jct_p90_s'] * 1e3:.2f} | "
                     f"{_pct(s.get('overlap_frac'), False)} |")
    by_policy = {s["policy"]: s for s in runs.values()}
    if {"intra_op", "interleaved"} <= set(by_policy):
        a, b = by_policy["intra_op"], by_policy["interleaved"]
        lines.append("")
        lines.append(f"interleaved vs intra_op: throughput {b['throughput_jobs_s'] / a['throughput_jobs_s'] - 1:+.1%}, "
                     f"makespan {b['makespan_s'] / a['makespan_s'] - 1:+.1%}, mean JCT "
                     f"{b['jct_mean_s'] / a['jct_mean_s'] - 1:+.1%}")
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
