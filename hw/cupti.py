"""Kernel times from CUPTI (through torch.profiler), the alternative to CUDA events.

CUDA events recorded around a launch time the stream between them: when the host is the
bottleneck (small decode kernels, the Python around each op), the stream sits idle after the
start event until the kernel is launched, and that host gap counts as kernel time. CUPTI
reports when each GPU kernel (and memcpy/memset) actually ran. `TorchRuntime(timing="cupti")`
wraps each op's launch in a `record_function` range tagged `ligersim#N`; after the run the
profiler's trace is read here: the CUDA runtime or driver calls made inside a range carry
correlation ids, which name the device activities they launched, so op N started with the
first of its activities and lasted as long as a GPU fed without host delays would be busy with
them (`op_intervals`). One op may launch several kernels (a norm is an add, a bias and a norm),
and one with no device work (a no-op on this rank) gets none.

Host times: the profiler's clock differs from the runtime's (`perf_counter` since the run's
origin) by an offset, estimated as the median difference between each range's start and the
host time the runtime took just before entering it.
"""

from __future__ import annotations

import bisect
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

TAG = "ligersim#"
LAUNCH_CATS = frozenset({"cuda_runtime", "cuda_driver"})
DEVICE_CATS = frozenset({"kernel", "gpu_memcpy", "gpu_memset"})


@dataclass(frozen=True, slots=True)
class OpTiming:
    """One tagged op's device work, µs on the trace's clock."""

    range_start: float  # the op's record_function range opened (host)
    start: float  # its first activity started (device)
    end: float  # its last activity ended
    busy: float  # length of the union of its activities
    fed: float  # busy plus the gaps between them that the GPU, not the host, caused
    kernels: tuple[tuple[float, float, float], ...]  # (start, end, ready) per activity, by start


def op_intervals(events: list[dict]) -> dict[int, OpTiming]:
    """op index -> its `OpTiming`, for every tagged range that launched device work.

    An op of several kernels (a norm is an upcast, a reduction, a scale) leaves gaps between
    them. Where the next kernel's launch call had not returned before the previous kernel ended,
    the gap is the host's (Python slower than the GPU) and not the op's; where it had, the gap is
    the GPU's own latency between dependent kernels, which the op costs wherever it runs and which
    calibration's back-to-back timings include. `fed` counts exactly the latter: the op's time on
    a GPU that is never kept waiting by the host."""
    ranges = []
    launches: dict[object, list[tuple[float, int, float]]] = defaultdict(list)
    device: dict[int, list[float]] = {}
    for e in events:
        cat, args = e.get("cat"), e.get("args") or {}
        if cat == "user_annotation" and str(e.get("name", "")).startswith(TAG):
            ts = float(e["ts"])
            ranges.append((ts, ts + float(e.get("dur", 0.0)), int(e["name"][len(TAG):]), e.get("tid")))
        elif cat in LAUNCH_CATS and "correlation" in args:
            ts = float(e["ts"])
            launches[e.get("tid")].append((ts, int(args["correlation"]), ts + float(e.get("dur", 0.0))))
        elif cat in DEVICE_CATS and "correlation" in args:
            ts = float(e["ts"])
            span = device.setdefault(int(args["correlation"]), [ts, ts + float(e.get("dur", 0.0))])
            span[0], span[1] = min(span[0], ts), max(span[1], ts + float(e.get("dur", 0.0)))
    for calls in launches.values():
        calls.sort()
    out: dict[int, OpTiming] = {}
    for t0, t1, idx, tid in ranges:
        calls = launches.get(tid, [])
        lo, hi = bisect.bisect_left(calls, (t0, -1, 0.0)), bisect.bisect_right(calls, (t1, 1 << 62, 0.0))
        spans = sorted((device[c][0], device[c][1], ready) for _, c, ready in calls[lo:hi] if c in device)
        if spans:
            busy, fed = _busy_and_fed(spans)
            out[idx] = OpTiming(t0, spans[0][0], max(sp[1] for sp in spans), busy, fed, tuple(spans))
    return out


def _busy_and_fed(spans: list[tuple[float, float, float]]) -> tuple[float, float]:
    """Union length of sorted (start, end, ready) spans, and that plus the part of each gap in the
    union that came after the next activity was ready (its launch call had returned)."""
    busy, gpu_gaps = 0.0, 0.0
    cur0, cur1 = spans[0][0], spans[0][1]
    for a, b, ready in spans[1:]:
        if a > cur1:
            busy += cur1 - cur0
            gpu_gaps += max(0.0, a - max(cur1, ready))
            cur0, cur1 = a, b
        else:
            cur1 = max(cur1, b)
    busy += cur1 - cur0
    return busy, busy + gpu_gaps


def rep_times(events: list[dict], reps: int) -> tuple[list[float], list[float]]:
    """Seconds of each of `reps` repetitions tagged `ligersim#0..reps-1` (calibration's CUPTI timer):
    its device work as a fed GPU runs it (`OpTiming.fed`), as validation's CUPTI runs time an op;
    and the gaps between consecutive repetitions whose next one was already launched when the
    previous ended (all of them, behind calibration's gate): the GPU's own time from one kernel's
    end to the next queued kernel's start, which CUPTI's kernel times leave out."""
    ops = op_intervals(events)
    missing = [i for i in range(reps) if i not in ops]
    if missing:
        raise ValueError(f"CUPTI saw no device work for {len(missing)} of {reps} repetitions (first: {missing[0]})")
    pairs = [(ops[i], ops[i + 1]) for i in range(reps - 1)]
    gaps = [(b.start - a.end) / 1e6 for a, b in pairs
            if b.start >= a.end and max(r for _, _, r in b.kernels) <= a.end]
    return [ops[i].fed / 1e6 for i in range(reps)], gaps


def host_offset_us(intervals: dict[int, OpTiming], host_s: dict[int, float]) -> float:
    """Runtime host time (µs) minus trace time: the median over ops of host launch time minus
    range start (the range opens right after the runtime reads its clock)."""
    diffs = [host_s[i] * 1e6 - iv.range_start for i, iv in intervals.items() if i in host_s]
    if not diffs:
        raise ValueError("no tagged op launched device work: nothing to align the profiler's clock with")
    return statistics.median(diffs)


def load_trace(path: str | Path) -> list[dict]:
    """The events of a Chrome trace written by `torch.profiler.profile.export_chrome_trace`."""
    data = json.loads(Path(path).read_text())
    return data["traceEvents"] if isinstance(data, dict) else data
