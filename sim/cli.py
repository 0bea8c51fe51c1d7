"""The `ligersim` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sim.errors import LigerSimError


def _run(args: argparse.Namespace) -> None:
    from sim.outputs import describe, write_run
    from sim.scenario import load_scenario
    from sim.simulate import load_jobs, simulate

    scn, base = load_scenario(args.scenario)
    jobs = load_jobs(scn, base, args.jobs)
    run = simulate(scn, jobs, record_ir=not args.no_ir, file=str(args.scenario))
    out = Path(args.output)
    summary = write_run(out, run.events, jobs, None if args.no_ir else run.result.schedule, scn.policy.name,
                        run.result.sim_wall_s, {"scenario": scn.name}, trace=not args.no_trace)
    print(f"{scn.name}: {scn.hardware.count} x {scn.hardware.gpu.name} over {scn.hardware.interconnect.name}, "
          f"{scn.model.name} ({scn.model.layers} layers)")
    print(describe(summary))
    print(f"  wrote {out}/")


def _replay(args: argparse.Namespace) -> None:
    from sim import ir
    from sim.outputs import describe, write_run
    from sim.simulate import replay

    schedule = ir.load(args.ir)
    run = replay(schedule)
    out = Path(args.output)
    summary = write_run(out, run.events, run.jobs, schedule, f"replay:{schedule.meta.get('policy', '?')}",
                        run.result.sim_wall_s, {"scenario": run.scenario.name}, trace=not args.no_trace)
    print(describe(summary))
    print(f"  wrote {out}/")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ligersim", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="simulate a scenario")
    r.add_argument("scenario", help="scenario YAML file")
    r.add_argument("-o", "--output", default="out/run", help="output folder")
    r.add_argument("--jobs", type=int, default=None, help="simulate only the first N jobs")
    r.add_argument("--no-trace", action="store_true", help="skip the Chrome trace (large runs)")
    r.add_argument("--no-ir", action="store_true", help="skip recording the schedule IR")
    r.set_defaults(func=_run)

    rp = sub.add_parser("replay", help="re-execute a recorded schedule IR in the simulator")
    rp.add_argument("ir", help="ir.jsonl written by `ligersim run`")
    rp.add_argument("-o", "--output", default="out/replay", help="output folder")
    rp.add_argument("--no-trace", action="store_true", help="skip the Chrome trace")
    rp.set_defaults(func=_replay)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except LigerSimError as e:
        print(f"ligersim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ligersim: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
