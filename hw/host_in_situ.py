"""Host time per operation measured inside `ligersim hw run`, for the simulator's host model.

On the GPU, small kernels finish before Python has launched the next one, so the host sets
the pace, and what it costs per op is the executor's whole loop around the op: the policy's
bookkeeping, the runtime's events and streams, the op's torch calls, the next op's set-up.
Timing an op's dispatch alone in a tight loop (`host_ops`) measured a third to a half of that
on an H100 machine. So calibration also runs each scenario's policy for a few jobs (another
seed than the scenario's) and reads the host time between consecutive operations of the
recorded IR: a launch's cost is the time until the rank's next operation, unless that one
blocks (a sync or a sleep until an arrival), whose wait is not the launch's. After a blocking op
returns, the time to the next op is the policy's own (Liger plans its next round there), and is
kept per kind of blocking op, with how late a sleep wakes.

Each run is its own process, as each `ligersim validate` is. On the H100, runs made inside the
calibrating process spent 1.0-1.7x the host time of the same scenarios' validation runs; runs in
processes of their own 0.72-1.59x over two measurements. That machine's host speed varies between
processes, so more jobs per run help more than where it runs.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from sim import ir
from sim.host_gaps import LINEAR_DIM, blocking_costs, linear_fit, op_costs, op_costs_by
from sim.profile import host_key_of, scenario_key


def summarise(samples: dict[str, list[float]], runs: list[str],
              by_items: dict[str, list[tuple[float, float]]] | None = None,
              blocking: dict[str, list[float]] | None = None) -> dict:
    """The profile's entry for one policy: median launch time per op name, record and wait, each
    op's sample count, mean and 90th percentile (`launch_stats`), and for ops whose cost grows with
    the sequences they cover (`by_items`: `sim.host_gaps.op_costs_by`), the fitted line
    (`launch_linear`: dim, base, slope, samples). From `blocking` (`sim.host_gaps.blocking_costs`):
    the mean time from a sync's or a sleep's return to the next op (`after_s`), and how late a
    sleep woke (`sleep_late_s`); means, as a run's length is their sum."""
    ops = {k: v for k, v in sorted(samples.items()) if k not in ("record", "wait") and v}
    launch = {k: statistics.median(v) for k, v in ops.items()}
    stats = {k: [len(v), statistics.fmean(v), statistics.quantiles(v, n=10)[-1] if len(v) > 1 else v[0]]
             for k, v in ops.items()}
    entry: dict = {"launch": launch, "launch_stats": stats, "samples": sum(len(v) for v in samples.values()),
                   "runs": runs}
    fits = {k: (linear_fit(v), len(v)) for k, v in sorted((by_items or {}).items())}
    if any(f is not None for f, _ in fits.values()):
        entry["launch_linear"] = {k: [LINEAR_DIM, f[0], f[1], n] for k, (f, n) in fits.items() if f is not None}
    for k in ("record", "wait"):
        if samples.get(k):
            entry[f"{k}_s"] = statistics.median(samples[k])
    blocking = blocking or {}
    after = {k: statistics.fmean(v) for k, v in sorted(blocking.items()) if k in ir.BLOCKING and v}
    if after:
        entry["after_s"] = after
    if blocking.get("sleep_late"):
        entry["sleep_late_s"] = statistics.fmean(blocking["sleep_late"])
    return entry


def measure(scenarios: list[str], device: str, jobs: int = 8, seed_offset: int = 1000,
            work: Path | None = None, on_run: Callable[[str, dict], None] | None = None) -> dict[str, dict]:
    """Run each scenario's policy for `jobs` jobs on `device`; per `sim.profile.host_key` (pooled
    over the scenarios of a policy) and per `sim.profile.scenario_key`, the summarised costs.
    `on_run(key, entry)` gets each named scenario's own entry as soon as its run is read, so that
    a caller can keep it before a time limit stops the rest."""
    import tempfile

    import yaml

    samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    by_items: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    blocked: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    runs: dict[str, list[str]] = defaultdict(list)

    def entry(key: str) -> dict:
        return {**summarise(samples[key], runs[key], by_items[key], blocked[key]), "jobs": jobs}

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(work or tmp)
        for path in scenarios:
            d = yaml.safe_load(Path(path).read_text())
            d["seed"] = int(d.get("seed", 0)) + seed_offset
            keys = [host_key_of(d)]  # pooled per policy, and a named scenario's own
            if d.get("name"):
                keys.append(scenario_key(str(d["name"])))
            d.setdefault("name", Path(path).stem)
            wl = d.get("workload") or {}
            if wl.get("kind") == "trace" and not Path(wl["path"]).is_absolute():  # relative to its scenario
                cand = Path(path).parent / wl["path"]
                wl["path"] = str(cand.resolve() if cand.exists() else Path(wl["path"]).resolve())
            scn_file = base / f"{Path(path).stem}.yaml"
            scn_file.write_text(yaml.safe_dump(d))
            out = base / Path(path).stem
            err = run_apart(scn_file, out, device, jobs)
            if err:  # one scenario's failure leaves the others' measurements
                print(f"host in situ: {path}: {err}", file=sys.stderr)
                continue
            schedule = ir.load(out / "ir.jsonl")
            costs, items, block = op_costs(schedule), op_costs_by(schedule), blocking_costs(schedule)
            for key in keys:
                for k, v in costs.items():
                    samples[key][k].extend(v)
                for k, v in items.items():
                    by_items[key][k].extend(v)
                for k, v in block.items():
                    blocked[key][k].extend(v)
                runs[key].append(Path(path).stem)
            if on_run is not None and len(keys) > 1:
                on_run(keys[1], entry(keys[1]))
    return {key: entry(key) for key in samples}


def run_apart(scenario: Path, out: Path, device: str, jobs: int) -> str | None:
    """`ligersim hw run` of `scenario` in a process of its own; None, or why it failed."""
    cmd = [sys.executable, "-m", "sim.cli", "hw", "run", str(scenario), "-o", str(out), "--device", device,
           "--jobs", str(jobs), "--no-trace"]
    root = Path(__file__).resolve().parent.parent  # the checkout, importable in the child as here
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return lines[-1] if lines else f"exit code {done.returncode}"
    return None
