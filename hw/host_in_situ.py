"""Host time per operation measured inside `ligersim hw run`, for the simulator's host model.

On the GPU, small kernels finish before Python has launched the next one, so the host sets
the pace, and what it costs per op is the executor's whole loop around the op: the policy's
bookkeeping, the runtime's events and streams, the op's torch calls, the next op's set-up.
Timing an op's dispatch alone in a tight loop (`host_ops`) measured a third to a half of that
on an H100 machine. So calibration also runs each scenario's policy for a few jobs (another
seed than the scenario's) and reads the host time between consecutive operations of the
recorded IR: a launch's cost is the time until the rank's next operation (`sim.host_gaps.gaps`:
up to a blocking op's call, not through its wait). After a blocking op returns, the time to the
next op is the policy's own (Liger plans its next round there), and is kept per kind of blocking
op, with how late a sleep wakes.

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
    op's sample count, mean and 90th percentile (`launch_stats`; `record_stats`, `wait_stats`), and for ops whose cost grows with
    the sequences they cover (`by_items`: `sim.host_gaps.op_costs_by`), the fitted line
    (`launch_linear`: dim, base, slope, samples). From `blocking` (`sim.host_gaps.blocking_costs`):
    the mean time from a sync's or a sleep's return to the next op (`after_s`), and how late a
    sleep woke (`sleep_late_s`); means, as a run's length is their sum."""
    ops = {k: v for k, v in sorted(samples.items()) if k not in ("record", "wait") and v}
    launch = {k: statistics.median(v) for k, v in ops.items()}
    entry: dict = {"launch": launch, "launch_stats": {k: _stats(v) for k, v in ops.items()}, "samples": sum(len(v) for v in samples.values()),
                   "runs": runs}
    fits = {k: (linear_fit(v), len(v)) for k, v in sorted((by_items or {}).items())}
    if any(f is not None for f, _ in fits.values()):
        entry["launch_linear"] = {k: [LINEAR_DIM, f[0], f[1], n] for k, (f, n) in fits.items() if f is not None}
    for k in ("record", "wait"):  # the median, as before; the mean is what the simulator charges
        if samples.get(k):
            entry[f"{k}_s"] = statistics.median(samples[k])
            entry[f"{k}_stats"] = _stats(samples[k])
    blocking = blocking or {}
    after = {k: statistics.fmean(v) for k, v in sorted(blocking.items()) if k in ir.BLOCKING and v}
    if after:
        entry["after_s"] = after
    if blocking.get("sleep_late"):
        entry["sleep_late_s"] = statistics.fmean(blocking["sleep_late"])
    return entry


def _stats(v: list[float]) -> list:
    """[samples, mean, 90th percentile] of one op's host times."""
    return [len(v), statistics.fmean(v), statistics.quantiles(v, n=10)[-1] if len(v) > 1 else v[0]]


def pool(entries: list[dict]) -> dict:
    """One policy's entry from its scenarios' own entries, so that it covers all of them when a
    resumed calibration measured only some: per op, the sample-weighted mean of their means (the
    pooled mean, exact: what the simulator charges) and of their medians and 90th percentiles
    (approximations of the pooled ones); fitted lines, record, wait and blocking costs weighted by
    the samples behind them."""
    def wmean(pairs: list[tuple[float, float]]) -> float:
        total = sum(w for w, _ in pairs)
        return sum(w * v for w, v in pairs) / total if total else pairs[0][1]

    def pooled(stats: list[list]) -> list:  # [samples, mean, p90] triples, each weighted by its samples
        return [sum(x[0] for x in stats), wmean([(x[0], x[1]) for x in stats]), wmean([(x[0], x[2]) for x in stats])]

    out: dict = {"launch": {}, "launch_stats": {}, "samples": sum(e.get("samples", 0) for e in entries),
                 "runs": [r for e in entries for r in e.get("runs", [])]}
    for op in sorted({op for e in entries for op in e.get("launch", {})}):
        have = [e for e in entries if op in e.get("launch", {})]
        n = [e.get("launch_stats", {}).get(op, [e.get("samples", 1)])[0] for e in have]
        out["launch"][op] = wmean([(w, e["launch"][op]) for w, e in zip(n, have)])
        stats = [e["launch_stats"][op] for e in have if op in e.get("launch_stats", {})]
        if stats:
            out["launch_stats"][op] = pooled(stats)
    if not out["launch_stats"]:
        del out["launch_stats"]
    lines = [e["launch_linear"] for e in entries if e.get("launch_linear")]
    if lines:
        out["launch_linear"] = {}
        for op in sorted({op for li in lines for op in li}):
            fits = [li[op] for li in lines if op in li]
            out["launch_linear"][op] = [fits[0][0], wmean([(f[3], f[1]) for f in fits]),
                                        wmean([(f[3], f[2]) for f in fits]), sum(f[3] for f in fits)]
    for kind in ("record", "wait"):
        stats = [e[f"{kind}_stats"] for e in entries if f"{kind}_stats" in e]
        if stats:
            out[f"{kind}_stats"] = pooled(stats)
    for key in ("record_s", "wait_s", "sleep_late_s"):
        vals = [(e.get("samples", 1), e[key]) for e in entries if key in e]
        if vals:
            out[key] = wmean(vals)
    after = {k: wmean([(e.get("samples", 1), e["after_s"][k]) for e in entries if k in e.get("after_s", {})])
             for k in sorted({k for e in entries for k in e.get("after_s", {})})}
    if after:
        out["after_s"] = after
    jobs = {e["jobs"] for e in entries if "jobs" in e}
    if len(jobs) == 1:
        out["jobs"] = jobs.pop()
    return out


def own_key(scenario: dict, path: str) -> str:
    """A scenario's own in-situ entry: its name's, else its file's stem's."""
    return scenario_key(str(scenario.get("name") or Path(path).stem))


def measure(scenarios: list[str], device: str, jobs: int = 8, seed_offset: int = 1000,
            work: Path | None = None, on_run: Callable[[str, dict], None] | None = None) -> dict[str, dict]:
    """Run each scenario's policy for `jobs` jobs on `device`; per `sim.profile.host_key` (pooled
    over the scenarios of a policy) and per scenario (`own_key`), the summarised costs.
    `on_run(key, entry)` gets each scenario's own entry as soon as its run is read, so that a
    caller can keep it before a time limit stops the rest."""
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
            keys = [host_key_of(d), own_key(d, path)]  # pooled per policy, and the scenario's own
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
            if on_run is not None:
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
