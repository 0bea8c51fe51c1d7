"""Host time between a recorded run's operations: what each op cost the host, and where it went.

On the GPU, small kernels finish before Python has launched the next one, so the host sets the
pace. A recorded IR stamps every operation with the host time it was issued at, so an op's host
cost is the time until the rank's next operation, unless the op blocks (a sync, a sleep until an
arrival: its wait is not host work, and the time after it returns is kept apart,
`blocking_costs`) or only declares a stream. An op just before a blocking one keeps its gap: the
blocking op is stamped when it is called, before any wait, so that gap is the op's launch and the
policy's work before it blocks (a pipeline stage's bookkeeping after sending a micro-batch on:
185-409 us on the H100, which a simulator that left those gaps out never charged).

Those gaps have two parts that a per-op-name cost model treats alike: *first uses*, the first
launch of a kernel shape in a process (CUDA's lazy kernel loading, library warm-up: often
milliseconds), and the steady cost of repeat uses. `host_breakdown` separates them, to show how
much of the host time a median-per-op model (what `hw.host_in_situ` calibrates) can account for.
No torch here: `hw.host_in_situ` measures with it, the validation report reads recorded runs.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterator

from sim import ir
from sim.ir import BLOCKING
from sim.kernels import KernelSpec


def gaps(ops: list[ir.Op]) -> Iterator[tuple[ir.Op, float]]:
    """One rank's ops, each with its host gap (seconds to the next op), in order; ops whose gap
    is not their host work (a blocking op, a stream declaration, the last op) are left out."""
    for op, nxt in zip(ops, ops[1:]):
        if op.op in BLOCKING or op.op == "stream":
            continue
        yield op, max(0.0, nxt.t - op.t)


def op_name(op: ir.Op) -> str:
    """What host costs are keyed by: a launch by its kernel's name, any other op by its kind."""
    return op.kernel.spec.name if op.op == "launch" and op.kernel is not None else op.op


def shape_key(spec: KernelSpec) -> tuple:
    """A kernel shape, as a process compiles or loads it once: name and dims."""
    return spec.name, tuple(sorted(spec.dims.items()))


def op_costs(schedule: ir.Schedule) -> dict[str, list[float]]:
    """Samples of host seconds per operation: launches by kernel name, "record" and "wait"."""
    out: dict[str, list[float]] = defaultdict(list)
    for ops in schedule.by_rank():
        for op, gap in gaps(ops):
            out[op_name(op)].append(gap)
    return dict(out)


def blocking_costs(schedule: ir.Schedule) -> dict[str, list[float]]:
    """Samples of host seconds around blocking ops whose return time the run recorded (`done`):
    per kind ("sync", "sleep_until"), the time from its return to the rank's next op (the policy's
    work after it: Liger plans a round after each sync); and "sleep_late", how long after the
    time asked for a sleeping host woke (samples only where it did sleep)."""
    out: dict[str, list[float]] = defaultdict(list)
    for ops in schedule.by_rank():
        for op, nxt in zip(ops, ops[1:]):
            if op.op not in BLOCKING or op.done < 0:
                continue
            out[op.op].append(max(0.0, nxt.t - op.done))  # to whatever comes next, a sleep too
            if op.op == "sleep_until" and op.until > op.t:
                out["sleep_late"].append(max(0.0, op.done - op.until))
    return dict(out)


LINEAR_DIM = "b"  # how many sequences (prompts, decodes) an attention kernel covers


def op_costs_by(schedule: ir.Schedule, dim: str = LINEAR_DIM) -> dict[str, list[tuple[float, float]]]:
    """(dims[dim], host seconds) of each launch whose kernel has `dim`, per kernel name: host costs
    that grow with the work's item count (prefill attention loops over its prompts in Python)."""
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for ops in schedule.by_rank():
        for op, gap in gaps(ops):
            if op.op == "launch" and op.kernel is not None and dim in op.kernel.spec.dims:
                out[op.kernel.spec.name].append((float(op.kernel.spec.dims[dim]), gap))
    return dict(out)


def linear_fit(pairs: list[tuple[float, float]], min_samples: int = 8) -> tuple[float, float] | None:
    """(base, slope) of cost = base + slope × x by least squares with an intercept, so the fitted
    costs add up to the measured ones, as a mean does; None with fewer than `min_samples` samples,
    one distinct x, or a slope that is not positive (the cost does not grow with x)."""
    if len(pairs) < min_samples or len({x for x, _ in pairs}) < 2:
        return None
    mx = statistics.fmean(x for x, _ in pairs)
    my = statistics.fmean(y for _, y in pairs)
    sxx = sum((x - mx) ** 2 for x, _ in pairs)
    slope = sum((x - mx) * (y - my) for x, y in pairs) / sxx
    return (my - slope * mx, slope) if slope > 0 else None


def first_uses(ops: list[ir.Op]) -> set[int]:
    """Indices into `ops` of the launches that use a kernel shape for the first time (per rank:
    each rank of a run is its own process)."""
    seen: set[tuple] = set()
    out: set[int] = set()
    for i, op in enumerate(ops):
        if op.op == "launch" and op.kernel is not None:
            key = shape_key(op.kernel.spec)
            if key not in seen:
                seen.add(key)
                out.add(i)
    return out


def gaps_by_use(ops: list[ir.Op]) -> Iterator[tuple[ir.Op, float, bool]]:
    """`gaps(ops)`, each with whether the op is the first use of its kernel shape (`first_uses`)."""
    first = first_uses(ops)
    index = {id(op): i for i, op in enumerate(ops)}
    for op, gap in gaps(ops):
        yield op, gap, index[id(op)] in first


def host_breakdown(schedule: ir.Schedule, stall_s: float = 1e-3, rank: int = 0, top: int = 5) -> dict:
    """Where rank `rank`'s host gaps went, in seconds: all of them (`total_s`, `gaps_n`), first
    uses of a kernel shape (`first_use_n`/`_s`; `shapes_n` shapes were launched in all), gaps of
    at least `stall_s` (`stalls_n`/`_s`, `stall_first_use_n`/`_s` of them first uses), and what
    per-op-name medians account for: n × median (`n_median_s`; `repeat_n_median_s` over the repeat
    uses, whose sum is `repeat_s`). `top_stalls`: the `top` op names with the most stall seconds."""
    ops = schedule.by_rank()[rank] if rank < schedule.world else []
    samples: dict[str, list[float]] = defaultdict(list)
    repeat: dict[str, list[float]] = defaultdict(list)
    stalls: dict[str, list] = defaultdict(lambda: [0, 0.0, 0])  # name -> [n, seconds, first uses]
    total = first_s = stall_s_sum = stall_first_s = 0.0
    n = first_n = stall_n = stall_first_n = 0
    for op, gap, is_first in gaps_by_use(ops):
        name = op_name(op)
        samples[name].append(gap)
        n += 1
        total += gap
        if is_first:
            first_n += 1
            first_s += gap
        else:
            repeat[name].append(gap)
        if gap >= stall_s:
            s = stalls[name]
            s[0] += 1
            s[1] += gap
            s[2] += is_first
            stall_n += 1
            stall_s_sum += gap
            if is_first:
                stall_first_n += 1
                stall_first_s += gap
    top_stalls = sorted(stalls.items(), key=lambda kv: (-kv[1][1], kv[0]))[:top]
    return {
        "rank": rank, "stall_threshold_s": stall_s, "gaps_n": n, "total_s": total,
        "shapes_n": len(first_uses(ops)), "first_use_n": first_n, "first_use_s": first_s,
        "stalls_n": stall_n, "stalls_s": stall_s_sum,
        "stall_first_use_n": stall_first_n, "stall_first_use_s": stall_first_s,
        "n_median_s": sum(len(v) * statistics.median(v) for v in samples.values()),
        "repeat_n_median_s": sum(len(v) * statistics.median(v) for v in repeat.values()),
        "repeat_s": total - first_s,
        "top_stalls": [{"op": k, "n": v[0], "s": v[1], "first_use_n": v[2]} for k, v in top_stalls],
    }


def host_drift(schedule: ir.Schedule, rank: int = 0, parts: int = 8) -> list[dict]:
    """How the host's speed moved through a run: rank `rank`'s repeat-use launches (first uses
    left out, they are slow for another reason), in `parts` runs of equal count in time order,
    each with the median over its launches of the launch's host gap divided by the median of its
    op name over the whole run (1 = the run's typical speed). A model charging one cost per op
    name charges the run's average: where parts differ, early or late jobs are predicted long or
    short by as much. On the H100, interleaved TP 2 (light) went from 0.72 to 1.09 of its own
    medians between its first and last eighth, intra_op TP 2 from 1.08 to 0.97; intra_op TP 8
    stayed within 0.99-1.01. Rows: part, t0_s, t1_s
    (host times of its first and last launch), n, ratio."""
    ops = schedule.by_rank()[rank] if rank < schedule.world else []
    samples = [(op.t, op_name(op), gap) for op, gap, first in gaps_by_use(ops) if op.op == "launch" and not first]
    if parts < 1 or len(samples) < parts:
        return []
    by_name: dict[str, list[float]] = defaultdict(list)
    for _t, name, gap in samples:
        by_name[name].append(gap)
    med = {name: statistics.median(v) for name, v in by_name.items()}
    ratios = [(t, gap / med[name]) for t, name, gap in samples if med[name] > 0]
    if len(ratios) < parts:
        return []
    out = []
    for p in range(parts):
        chunk = ratios[p * len(ratios) // parts:(p + 1) * len(ratios) // parts]
        out.append({"part": p, "t0_s": chunk[0][0], "t1_s": chunk[-1][0], "n": len(chunk),
                    "ratio": statistics.median(r for _t, r in chunk)})
    return out


def drift_range(drift: list[dict]) -> tuple[float, float] | None:
    """The slowest and fastest parts of a `host_drift` (None when it has none)."""
    ratios = [d["ratio"] for d in drift or []]
    return (min(ratios), max(ratios)) if ratios else None
