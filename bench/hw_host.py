"""Host cost of the hw executor: kernels launched per second, and where the host's time goes.

A small kernel on an H100 lasts a few microseconds; if the Python that launches it takes longer,
the GPU waits and no policy's overlap can show. This runs scenarios through `ligersim hw run`
under cProfile and prints, per scenario, kernels, wall time, host microseconds per kernel, GPU
busy fraction, and the functions that take the host's time.

    python bench/hw_host.py SCENARIO.yaml [...] [--jobs N] [--device cuda] [--timing events|cupti]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import tempfile
import time
from pathlib import Path

from hw.run import run_scenario


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("scenarios", nargs="+")
    ap.add_argument("--jobs", type=int)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--timing", default="events")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("-o", "--output", help="write each scenario's profile text here")
    args = ap.parse_args()
    rows = []
    for path in args.scenarios:
        name = Path(path).stem
        with tempfile.TemporaryDirectory() as d:
            prof = cProfile.Profile()
            t0 = time.perf_counter()
            prof.enable()
            summary = run_scenario(path, Path(d) / "out", device=args.device, jobs=args.jobs, trace=False,
                                   timing=args.timing)
            prof.disable()
            wall = time.perf_counter() - t0
        text = io.StringIO()
        st = pstats.Stats(prof, stream=text)
        st.sort_stats("tottime").print_stats(args.top)
        st.sort_stats("cumulative").print_stats(args.top)
        if args.output:
            Path(args.output).mkdir(parents=True, exist_ok=True)
            (Path(args.output) / f"{name}.txt").write_text(text.getvalue())
            (Path(args.output) / f"{name}.json").write_text(json.dumps(summary, indent=1, default=str))
        else:
            print(text.getvalue())
        n = summary.get("kernels") or 0
        rows.append((name, n, wall, summary.get("makespan_s", float("nan")), summary.get("gpu_busy_frac")))
    print(f"{'scenario':40s} {'kernels':>8s} {'wall s':>7s} {'makespan s':>10s} {'us/kernel':>9s} {'busy':>5s}")
    for name, n, wall, mk, busy in rows:
        per = mk / n * 1e6 if n else float("nan")
        print(f"{name:40s} {n:8d} {wall:7.2f} {mk:10.3f} {per:9.1f} {busy or 0:5.2f}")


if __name__ == "__main__":
    main()
