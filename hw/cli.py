"""`ligersim hw run|replay`: the hw backend's command line, torch imported only when run.

`register(subparsers)` adds the `hw` command to ligersim's parser; `main` runs it alone
(`python -m hw.cli run SCENARIO -o DIR`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _common(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("-o", "--output", default=default_out, help="output folder")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cuda (NCCL or the emulated collective) or cpu (gloo processes, float32)")
    p.add_argument("--emulate", action="store_true", default=None,
                   help="cuda: run rank 0 of the group on one GPU with emulated collectives "
                        "(the default when there are fewer GPUs than ranks)")
    p.add_argument("--channels", type=int, default=16, help="CTAs of the emulated collective (NCCL channels)")
    p.add_argument("--no-trace", action="store_true", help="skip the Chrome trace")
    p.add_argument("--timing", choices=("events", "cupti"), default="events",
                   help="cuda: time kernels with CUDA events around each launch, or with CUPTI through "
                        "torch.profiler (exact when the host is the bottleneck; see hw/cupti.py)")
    p.add_argument("--logits", action="store_true",
                   help="generative: also write logits.pt, every emitted token's logits by (request, position)")


def _run(args: argparse.Namespace) -> None:
    from hw.run import run_scenario

    summary = run_scenario(args.scenario, args.output, args.device, args.jobs, args.emulate, args.channels,
                           not args.no_trace, args.logits, args.timing, args.host_probe_jobs)
    _report(summary, args.output)


def _replay(args: argparse.Namespace) -> None:
    from hw.run import replay_ir

    summary = replay_ir(args.ir, args.output, args.device, args.emulate, args.channels, not args.no_trace,
                        args.logits, args.timing)
    _report(summary, args.output)


def _report(summary: dict, out: str) -> None:
    from sim.outputs import describe

    if summary:  # torchrun ranks other than 0 have nothing to say
        print(describe(summary))
        print(f"  wrote {Path(out)}/")


def register(subparsers) -> None:
    """Add `hw run` and `hw replay` to ligersim's subcommands."""
    hw = subparsers.add_parser("hw", help="run a scenario or replay an IR on real hardware (PyTorch)")
    sub = hw.add_subparsers(dest="hw_command", required=True)
    r = sub.add_parser("run", help="run a scenario's policy with torch on a GPU (or CPU)")
    r.add_argument("scenario", help="scenario YAML file")
    r.add_argument("--jobs", type=int, default=None, help="run only the first N jobs")
    r.add_argument("--host-probe-jobs", type=int, default=0, metavar="N",
                   help="first run the scenario's first N jobs before the clock and keep the host's cost per op "
                        "in hw.json (host_in_process), which `ligersim validate` predicts with; not with "
                        "--timing cupti")
    _common(r, "out/hw-run")
    r.set_defaults(func=_run)
    rp = sub.add_parser("replay", help="execute a recorded schedule IR verbatim with torch")
    rp.add_argument("ir", help="ir.jsonl written by `ligersim run` or `ligersim hw run`")
    _common(rp, "out/hw-replay")
    rp.set_defaults(func=_replay)


def main(argv: list[str] | None = None) -> int:
    from sim.cli import main as run_cli

    p = argparse.ArgumentParser(prog="ligersim", description=__doc__)
    register(p.add_subparsers(dest="command", required=True))
    return run_cli(argv, p)


if __name__ == "__main__":
    sys.exit(main(["hw", *sys.argv[1:]]))
