"""The `ligersim` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sim.errors import LigerSimError

if TYPE_CHECKING:
    import pandas as pd

FOLD_HINT_S = 10.0  # a run that took this long is told that --fold-ranks would have been faster


def _run(args: argparse.Namespace) -> None:
    from sim.outputs import describe, write_run
    from sim.scenario import load_scenario
    from sim.simulate import SYMMETRIC_POLICIES, load_jobs, simulate

    scn, base = load_scenario(args.scenario)
    jobs = load_jobs(scn, base, args.jobs)
    run = simulate(scn, jobs, record_ir=not args.no_ir, file=str(args.scenario), progress=sys.stderr.isatty(),
                   fold_ranks=args.fold_ranks)
    out = Path(args.output)
    interrupted = bool(run.result.meta.get("interrupted"))
    summary = write_run(out, run.events, jobs, None if args.no_ir else run.result.schedule, scn.policy.name,
                        run.result.sim_wall_s, {"scenario": scn.name, "interrupted": interrupted,
                                                "meta": run.result.meta},
                        trace=not args.no_trace, trace_kernels=args.trace_kernels, progress=sys.stderr.isatty())
    if interrupted:
        print(f"ligersim: interrupted; wrote the {len(run.events):,} kernels completed so far to {out}/",
              file=sys.stderr)
    elif not args.no_plot and len(run.events):
        from sim.plots import plot_timeline

        # the busiest moment: the slowest job's lifetime, when the most jobs were in flight
        ev = run.events[run.events["request_id"] >= 0]
        span = ev.groupby("request_id").agg(t0=("start_s", "min"), t1=("end_s", "max"), rank=("rank", "min"))
        worst = (span["t1"] - span["t0"]).idxmax()
        t0, t1, rank = span.loc[worst, "t0"], span.loc[worst, "t1"], int(span.loc[worst, "rank"])
        plot_timeline(run.events, out / "timeline.png", f"{scn.name}: {scn.policy.name}, rank {rank} while job "
                      f"{worst} runs", ranks=[rank], window=(t0, t1))
    pol, pf = scn.policy, scn.policy.prefill_replicas
    split = (f"{pf} prefill" + (f" (tp {pol.prefill_tp})" if pol.prefill_tp else "") + f" + {pol.dp - pf} decode"
             if pf else f"{pol.dp}")
    replicas = (f", {split} replicas of tp {scn.tp()}" + (f" x pp {scn.pp()}" if scn.pp() > 1 else "")
                + f" ({pol.router})") if pol.dp > 1 else ""
    m = scn.model
    moe = (f"; {m.experts} experts, top {m.experts_per_token}, "
           + ("expert-parallel" if pol.expert_parallel else "tensor-parallel")) if m.experts else ""
    print(f"{scn.name}: {scn.hardware.count} x {scn.hardware.gpu.name} over {scn.hardware.interconnect.name}, "
          f"{m.name} ({m.layers} layers{moe}){replicas}")
    print(describe(summary))
    if (not args.fold_ranks and scn.policy.name in SYMMETRIC_POLICIES and scn.replica_gpus() > 1
            and run.result.sim_wall_s > FOLD_HINT_S):
        print(f"  --fold-ranks simulates one rank per replica: exact for {scn.policy.name}, about "
              f"{scn.replica_gpus()}x faster")
    print(f"  wrote {out}/")


def _replay(args: argparse.Namespace) -> None:
    from sim import ir
    from sim.outputs import describe, write_run
    from sim.simulate import replay

    schedule = ir.load(args.ir)
    run = replay(schedule, file=str(args.ir))
    out = Path(args.output)
    summary = write_run(out, run.events, run.jobs, schedule, f"replay:{schedule.meta.get('policy', '?')}",
                        run.result.sim_wall_s, {"scenario": run.scenario.name}, trace=not args.no_trace,
                        trace_kernels=args.trace_kernels, progress=sys.stderr.isatty())
    print(describe(summary))
    print(f"  wrote {out}/")


def best_line(table) -> str:
    """Which line of a sweep has the highest JPC; lines within 1% of it are named with it, since
    a sweep's rate grid cannot tell them apart."""
    ranked = table.dropna(subset=["jpc_jobs_s"]).sort_values("jpc_jobs_s", ascending=False, kind="stable")
    if not len(ranked):
        return "highest JPC: none (no line sustains any swept rate)"
    top = ranked["jpc_jobs_s"].iloc[0]
    tied = ranked[ranked["jpc_jobs_s"] >= 0.99 * top]
    rest = ranked.iloc[len(tied):]
    names = " and ".join(f"{r.policy} ({r.jpc_jobs_s:.4g})" for r in tied.itertuples())
    return (f"highest JPC: {names} jobs/s" + (" (within 1%: a tie at these rates)" if len(tied) > 1 else "")
            + (f"; next {rest['policy'].iloc[0]} ({rest['jpc_jobs_s'].iloc[0]:.4g})" if len(rest) else ""))


def _curve(args: argparse.Namespace) -> None:
    import yaml

    from sim.curve import jpc, parse_rates, parse_vary, sweep
    from sim.plots import plot_curve
    from sim.scenario import load_scenario

    scn, base = load_scenario(args.scenario)
    scn_dict = yaml.safe_load(Path(args.scenario).read_text())
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    rates = parse_rates(args.rates)
    out = Path(args.output)
    curve = sweep(scn, scn_dict, base, policies, rates, out, jobs=args.jobs, workers=args.workers,
                  resume=args.resume, file=str(args.scenario), fold_ranks=args.fold_ranks, ray_address=args.ray,
                  vary=parse_vary(args.vary))
    table = jpc(curve)
    plot_curve(curve, out / "curve.png", f"{scn.name}: JCT vs throughput", table)
    print(curve[["policy", "offered_rate", "achieved_rate", "jct_mean_s", "jct_p99_s"]].to_string(index=False))
    print(table.to_string(index=False))
    if len(table) > 1:
        print(best_line(table))
    print(f"wrote {out}/curve.csv, jpc.csv, curve.png")


def _trace_gen(args: argparse.Namespace) -> None:
    from sim.scenario import load_scenario
    from sim.simulate import load_jobs
    from sim.workload import with_rate, write_trace

    scn, base = load_scenario(args.scenario)
    wl = with_rate(scn.workload, args.rate) if args.rate is not None else scn.workload
    jobs = load_jobs(scn.model_copy(update={"workload": wl}), base, args.jobs, fit=False)
    path = write_trace(jobs, args.output)
    print(f"wrote {len(jobs)} jobs to {path}")


def _plot(args: argparse.Namespace) -> None:
    from sim.outputs import read_events, read_json, read_results
    from sim.plots import plot_curve, plot_timeline

    d = Path(args.dir)
    if args.what == "validation":
        from sim.validation import plot_validation

        print("wrote " + ", ".join(str(p) for p in plot_validation(d)))  # (`read_table` says when there is none)
        return
    if args.what == "curve":
        if not (d / "curve.csv").exists():
            raise LigerSimError("no curve.csv here; make one with `ligersim curve`", file=str(d))
        from sim.curve import read_curve

        curve = read_curve(d / "curve.csv")
        table = (read_results(d / "jpc.csv", "a JPC", ("policy", "jpc_jobs_s"), "`ligersim curve` writes one")
                 if (d / "jpc.csv").exists() else None)
        paths = [plot_curve(curve, d / f"curve.{ext}", f"{d.name}: JCT vs throughput", table) for ext in ("png", "svg")]
    else:
        if not (d / "events.parquet").exists():
            raise LigerSimError("no events.parquet here; make one with `ligersim run`", file=str(d))
        ev = read_events(d / "events.parquet")
        summary = read_json(d / "summary.json", may={"scenario": str, "policy": str}) \
            if (d / "summary.json").exists() else {}
        ranks, reqs, window = args.ranks, args.requests, args.window
        _check_selection(ev, d, ranks, reqs, window)
        title = f"{summary.get('scenario', d.name)}: {summary.get('policy', '')} timeline"
        paths = [plot_timeline(ev, d / f"timeline.{ext}", title, ranks, window, reqs) for ext in ("png", "svg")]
    print("wrote " + ", ".join(str(p) for p in paths))


def _id_ranges(ids: list[int], most: int = 8) -> str:
    """Sorted ids said briefly: [0, 1, 2, 3, 7] -> "0-3, 7" (the first `most` runs of them, then "...")."""
    runs: list[list[int]] = []
    for i in ids:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    parts = [f"{a}-{b}" if b > a else str(a) for a, b in runs]
    return ", ".join(parts[:most]) + (", ..." if len(parts) > most else "")


def _check_selection(ev: pd.DataFrame, d: Path, ranks: list[int] | None, requests: list[int] | None,
                     window: tuple[float, float] | None) -> None:
    """`plot timeline`: --ranks or --requests naming any the run does not have, or a --window in which
    the selected kernels do not run, is an error saying what there is (it drew an empty figure)."""
    for option, noun, column, asked in (("--ranks", "ranks", "rank", ranks),
                                        ("--requests", "requests", "request_id", requests)):
        if asked is None:
            continue
        have = sorted(int(i) for i in ev[column].unique() if i >= 0)  # (request -1: setup kernels)
        missing = sorted(set(asked) - set(have))
        if missing:
            raise LigerSimError(f"this run has {noun} {_id_ranges(have)}" if have else f"this run has no {noun}",
                                file=str(d), field=f"{option} {','.join(map(str, missing))}")
        ev = ev[ev[column].isin(asked)]
    if window is not None and len(ev) and not ((ev["end_s"] >= window[0]) & (ev["start_s"] <= window[1])).any():
        raise LigerSimError(f"the kernels selected run from {ev['start_s'].min() * 1e3:g} to "
                            f"{ev['end_s'].max() * 1e3:g} ms", file=str(d),
                            field=f"--window {window[0] * 1e3:g}:{window[1] * 1e3:g}")
    if not len(ev):  # an empty run, or ranks and requests that exist but not together
        raise LigerSimError("no kernels to draw" + (" of these ranks and requests" if ranks or requests else ""),
                            file=str(d))


def _calibrate(args: argparse.Namespace) -> None:
    from hw.calibrate import calibrate

    prof = calibrate(args.output, args.device, args.quick, args.scenario, args.fresh, cold_l2=args.cold_l2,
                     timer=args.timer, evict_weights=not args.warm_weights, in_situ_jobs=args.in_situ_jobs,
                     cold_ops=not args.warm_ops, in_context=args.in_context)
    n = sum(len(v) for v in prof.kernels.values())
    print(f"{prof.device.get('name')}: {n} kernel shapes over {len(prof.kernels)} kinds, "
          f"{len(prof.contention.get('table', []))} contention entries, launch {prof.host.get('launch_s', 0) * 1e6:.2f} us, "
          f"sync wake-up {prof.host.get('sync_wakeup_s', 0) * 1e6:.2f} us")
    print(f"  wrote {args.output}")


def _validate(args: argparse.Namespace) -> None:
    from hw.validate import validate

    s = validate(args.scenario, args.profile, args.output, args.device, args.jobs, args.measured, args.emulate,
                 args.channels, progress=sys.stderr.isatty(), timing=args.timing, kernels=args.kernels_from,
                 host_probe_jobs=args.host_probe_jobs, host_costs=args.host_costs.replace("-", "_"))
    for mode in ("closed_loop", "replay"):
        if mode in s:
            m = s[mode]
            print(f"{mode}: kernel |err| median {m['kernel_err_median']:.1%} p90 {m['kernel_err_p90']:.1%}, "
                  f"makespan {m['makespan_err']:+.1%}, mean JCT {m['jct_mean_err']:+.1%}")
    from sim.host_gaps import drift_range

    span = drift_range((s.get("host") or {}).get("drift"))
    if span:  # a JCT miss this wide can be the host's own drift, not the model (report.md says more)
        print(f"host speed through the measured run: {span[0]:.2f}-{span[1]:.2f} of its own median per op")
    print(f"  wrote {args.output}/validation.csv, summary.json, report.md, scatter.png, error_cdf.png, timelines.png")


def _schema(args: argparse.Namespace) -> None:
    from sim.reference import reference

    print(reference(), end="")


def _count(text: str) -> int:
    """A count argument: a whole number >= 0 (argparse names the option in its error)."""
    try:
        n = int(text.replace(",", "").replace("_", ""))
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return n


def _ids(text: str) -> list[int]:
    """`0,2,3`: whole numbers >= 0."""
    try:
        ids = [int(x) for x in text.split(",")]
    except ValueError:
        ids = [-1]
    if any(i < 0 for i in ids):
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers >= 0, got {text!r}")
    return ids


def _window(text: str) -> tuple[float, float]:
    """`START:END` in milliseconds, START < END; returned in seconds."""
    try:
        start, end = (float(x) for x in text.split(":"))
    except ValueError:
        start = end = float("nan")
    if not start < end:
        raise argparse.ArgumentTypeError(f"expected START:END in milliseconds with START < END, got {text!r}")
    return start / 1e3, end / 1e3


def _trace_kernels_arg(p: argparse.ArgumentParser) -> None:
    from sim.outputs import TRACE_KERNELS

    p.add_argument("--trace-kernels", type=_count, default=TRACE_KERNELS, metavar="N",
                   help=f"the Chrome trace holds the run's first N kernels at most, whole streams up to a time "
                        f"(default {TRACE_KERNELS:,}: larger JSON traces do not open in Perfetto's web UI); 0: all")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ligersim", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="simulate a scenario")
    r.add_argument("scenario", help="scenario YAML file")
    r.add_argument("-o", "--output", default="out/run", help="output folder")
    r.add_argument("--jobs", type=int, default=None, help="simulate only the first N jobs")
    r.add_argument("--no-trace", action="store_true", help="skip the Chrome trace (large runs)")
    _trace_kernels_arg(r)
    r.add_argument("--no-ir", action="store_true", help="skip recording the schedule IR")
    r.add_argument("--no-plot", action="store_true", help="skip timeline.png (rank 0, a few jobs)")
    r.add_argument("--fold-ranks", action="store_true",
                   help="simulate rank 0 only: exact and faster for the tensor-parallel policies")
    r.set_defaults(func=_run)

    rp = sub.add_parser("replay", help="re-execute a recorded schedule IR in the simulator")
    rp.add_argument("ir", help="ir.jsonl written by `ligersim run`")
    rp.add_argument("-o", "--output", default="out/replay", help="output folder")
    rp.add_argument("--no-trace", action="store_true", help="skip the Chrome trace")
    _trace_kernels_arg(rp)
    rp.set_defaults(func=_replay)

    c = sub.add_parser("curve", help="latency-throughput curves and JPC over offered rates")
    c.add_argument("scenario", help="scenario YAML file")
    c.add_argument("--policies", default="intra_op,inter_op,interleaved",
                   help="comma-separated: intra_op, inter_op, interleaved, hybrid (the scenario's TP/PP), "
                        "hybrid:TPxPP, each optionally +dpN for N data-parallel replicas (intra_op+dp2); "
                        "intra_op+PpDd[:A/B] for P prefill and D decode replicas (of TP A and B); all (every way "
                        "to parallelise the GPUs that fits, replicas included); disaggregated (every prefill/"
                        "decode split that fits; generative)")
    c.add_argument("--rates", required=True, help="offered rates in jobs/s: R1,R2,... or START:STOP:STEP")
    c.add_argument("-o", "--output", default="out/curve", help="output folder")
    c.add_argument("--jobs", type=int, default=None, help="use only the first N jobs at each rate")
    c.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: one per core); with --ray, the most points queued at once")
    c.add_argument("--vary", action="append", metavar="KEY=V1,V2",
                   help="sweep a scenario field too, a line per value (repeat for a grid): e.g. policy.split=2,4,8, "
                        "serving.groups=2,3, hardware.interconnect=nvswitch-h100,pcie4")
    c.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the points on a Ray cluster: ADDRESS as ray.init takes it ('auto', 'ray://HOST:10001'); "
                        "without one, RAY_ADDRESS or a Ray started on this machine (pip install 'ligersim[ray]')")
    c.add_argument("--resume", action="store_true", help="keep points already in OUTPUT/curve.csv")
    c.add_argument("--fold-ranks", action="store_true",
                   help="simulate rank 0 only for the tensor-parallel policies (exact, faster)")
    c.set_defaults(func=_curve)

    t = sub.add_parser("trace", help="workload traces")
    tsub = t.add_subparsers(dest="trace_command", required=True)
    tg = tsub.add_parser("gen", help="write the jobs of a scenario's workload as a trace file")
    tg.add_argument("scenario", help="scenario YAML whose workload section generates the jobs")
    tg.add_argument("-o", "--output", required=True, help="trace file to write (.csv or .parquet)")
    tg.add_argument("--rate", type=float, default=None, help="offered rate in jobs/s (overrides the scenario)")
    tg.add_argument("--jobs", type=int, default=None, help="keep only the first N jobs")
    tg.set_defaults(func=_trace_gen)

    from hw.cli import register as register_hw  # imports no torch until a hw command runs

    register_hw(sub)

    cal = sub.add_parser("calibrate", help="measure kernel costs, host costs and contention into a profile")
    cal.add_argument("-o", "--output", required=True, help="profile to write, e.g. profiles/h100-sxm.yaml (an "
                     "interrupted run resumes from it)")
    cal.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda, or cpu (tests the machinery)")
    cal.add_argument("--quick", action="store_true", help="fewer shapes, sizes and repetitions")
    cal.add_argument("--scenario", action="append", default=None,
                     help="scenario whose model shapes to measure (repeatable; default: scenarios/validation/*.yaml "
                          "on cuda, built-in tiny models on cpu)")
    cal.add_argument("--fresh", action="store_true", help="start over instead of resuming OUTPUT")
    cal.add_argument("--cold-l2", action="store_true",
                     help="flush L2 before each repetition of every kernel (default: ops but GEMMs, and GEMMs whose "
                          "weight a run reads from HBM)")
    cal.add_argument("--timer", choices=("events", "cupti"), default="events",
                     help="how CUDA kernels are timed: CUDA events around each repetition, or CUPTI as "
                          "`validate --timing cupti` times them (small kernels: events add the GPU's start latency)")
    cal.add_argument("--warm-weights", action="store_true",
                     help="time every GEMM warm (default: a GEMM whose weight fits in L2 but whose model's weights "
                          "on a rank do not is timed cold, as a run reads it from HBM)")
    cal.add_argument("--warm-ops", action="store_true",
                     help="time every op but GEMMs warm (default: with L2 flushed first, as in a run they follow "
                          "other kernels' traffic)")
    cal.add_argument("--in-situ-jobs", type=int, default=None,
                     help="jobs per scenario in the in-situ host runs (default 8; more: less noise, longer)")
    cal.add_argument("--in-context", action="store_true",
                     help="time each kernel inside its job's (or generative iteration's) whole layer sequence, over "
                          "per-layer weights, in the order and on the inputs a run gives it (default: each alone, "
                          "under the L2 rules); see profiles/README.md")
    cal.set_defaults(func=_calibrate)

    va = sub.add_parser("validate", help="run a scenario on the GPU and in the simulator; report the errors")
    va.add_argument("scenario", help="scenario YAML file")
    va.add_argument("--profile", required=True, help="profile written by `ligersim calibrate`")
    va.add_argument("-o", "--output", default="out/validate", help="output folder")
    va.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where the measured run executes")
    va.add_argument("--jobs", type=int, default=None, help="use only the first N jobs")
    va.add_argument("--measured", default=None, help="use this recorded `ligersim hw run` folder instead of running")
    va.add_argument("--emulate", action="store_true", default=None,
                    help="cuda: rank 0 of the group on one GPU (the default with fewer GPUs than ranks)")
    va.add_argument("--channels", type=int, default=16, help="CTAs of the emulated collective")
    va.add_argument("--timing", choices=("events", "cupti", "both"), default="events",
                    help="cuda: how the measured run times kernels (CUDA events, CUPTI via torch.profiler, or "
                         "both: request times from an events run, kernel times from a CUPTI run)")
    va.add_argument("--kernels-from", default=None,
                    help="with --measured: compare kernel times of this second recorded run (e.g. CUPTI-timed)")
    va.add_argument("--host-probe-jobs", type=int, default=16, metavar="N",
                    help="the events-timed run first runs its first N jobs before its clock, to measure the host's "
                         "cost per op in that process (0: none)")
    va.add_argument("--host-costs", choices=("in-process", "profile"), default="in-process",
                    help="host cost per op to predict with: measured in the run's own process before its clock "
                         "(where it was), or the profile's in-situ runs")
    va.set_defaults(func=_validate)

    pl = sub.add_parser("plot", help="plot a curve or a run's timeline (PNG and SVG)")
    pl.add_argument("what", choices=["curve", "timeline", "validation"])
    pl.add_argument("dir", help="output folder of `ligersim curve`, `ligersim run` or `ligersim validate`")
    pl.add_argument("--ranks", type=_ids, help="timeline: comma-separated ranks (default all)")
    pl.add_argument("--requests", type=_ids, help="timeline: comma-separated request ids (default all)")
    pl.add_argument("--window", type=_window, help="timeline: START:END in milliseconds")
    pl.set_defaults(func=_plot)

    sc = sub.add_parser("schema", help="print the scenario reference (every field, unit, default, preset)")
    sc.set_defaults(func=_schema)
    return p


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Run a command; user errors print one line and exit 2, Ctrl-C exits 130."""
    args = (parser or build_parser()).parse_args(argv)
    import warnings

    from sim.errors import ScenarioWarning
    from sim.profile import ProfileWarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, (ScenarioWarning, ProfileWarning)):  # about the user's files: one line
            print(f"ligersim: warning: {message}", file=sys.stderr)
        else:
            sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():  # the caller's warning display is back as it was afterwards
        warnings.showwarning = show
        try:
            args.func(args)
        except LigerSimError as e:
            print(f"ligersim: error: {e}", file=sys.stderr)
            return 2
        except OSError as e:  # an output folder that is a file, a path that is a folder, a full disk...
            if not e.filename:
                raise
            print(f"ligersim: error: {e.filename}: {e.strerror or e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("ligersim: interrupted", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
