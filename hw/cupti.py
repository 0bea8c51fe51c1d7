"""Kernel times from CUPTI (through torch.profiler), the alternative to CUDA events.

CUDA events recorded around a launch time the stream between them: when the host is the
bottleneck (small decode kernels, the Python around each op), the stream sits idle after the
start event until the kernel is launched, and that host gap counts as kernel time. CUPTI
reports when each GPU kernel (and memcpy/memset) actually ran. `TorchRuntime(timing="cupti")`
wraps each op's launch in a `record_function` range tagged `ligersim#N`; after the run the
profiler's trace is read here: the CUDA runtime or driver calls made inside a range carry
correlation ids, which name the device activities they launched, so op N started with the
first of its activities and lasted as long as they kept the GPU busy. One op may launch several
kernels (a norm is an add, a bias and a norm), and one with no device work (a no-op on this
rank) gets none.

Host times: the profiler's clock differs from the runtime's (`perf_counter` since the run's
origin) by an offset, estimated as the median difference between each range's start and the
host time the runtime took just before entering it.
"""

from __future__ import annotations

import bisect
import json
import statistics
from collections import defaultdict
from pathlib import Path

TAG = "ligersim#"
LAUNCH_CATS = frozenset({"cuda_runtime", "cuda_driver"})
DEVICE_CATS = frozenset({"kernel", "gpu_memcpy", "gpu_memset"})


def op_intervals(events: list[dict]) -> dict[int, tuple[float, float, float, float]]:
    """op index -> (its range's start, device start, device end, device busy), µs on the
    trace's clock, for every tagged range that launched device work. Busy is the length of the
    union of its activities: an op of several kernels whose host dispatch is slower than they
    run leaves the GPU idle between them, and that gap is the host's, not the op's."""
    ranges = []
    launches: dict[object, list[tuple[float, int]]] = defaultdict(list)
    device: dict[int, list[float]] = {}
    for e in events:
        cat, args = e.get("cat"), e.get("args") or {}
        if cat == "user_annotation" and str(e.get("name", "")).startswith(TAG):
            ts = float(e["ts"])
            ranges.append((ts, ts + float(e.get("dur", 0.0)), int(e["name"][len(TAG):]), e.get("tid")))
        elif cat in LAUNCH_CATS and "correlation" in args:
            launches[e.get("tid")].append((float(e["ts"]), int(args["correlation"])))
        elif cat in DEVICE_CATS and "correlation" in args:
            ts = float(e["ts"])
            span = device.setdefault(int(args["correlation"]), [ts, ts + float(e.get("dur", 0.0))])
            span[0], span[1] = min(span[0], ts), max(span[1], ts + float(e.get("dur", 0.0)))
    for calls in launches.values():
        calls.sort()
    out: dict[int, tuple[float, float, float, float]] = {}
    for t0, t1, idx, tid in ranges:
        calls = launches.get(tid, [])
        lo, hi = bisect.bisect_left(calls, (t0, -1)), bisect.bisect_right(calls, (t1, 1 << 62))
        spans = sorted(device[c] for _, c in calls[lo:hi] if c in device)
        if spans:
            out[idx] = (t0, spans[0][0], max(s[1] for s in spans), _union(spans))
    return out


def _union(spans: list[list[float]]) -> float:
    """Total length covered by sorted [start, end] spans."""
    total, cur0, cur1 = 0.0, spans[0][0], spans[0][1]
    for a, b in spans[1:]:
        if a > cur1:
            total += cur1 - cur0
            cur0, cur1 = a, b
        else:
            cur1 = max(cur1, b)
    return total + cur1 - cur0


def host_offset_us(intervals: dict[int, tuple[float, float, float]], host_s: dict[int, float]) -> float:
    """Runtime host time (µs) minus trace time: the median over ops of host launch time minus
    range start (the range opens right after the runtime reads its clock)."""
    diffs = [host_s[i] * 1e6 - iv[0] for i, iv in intervals.items() if i in host_s]
    if not diffs:
        raise ValueError("no tagged op launched device work: nothing to align the profiler's clock with")
    return statistics.median(diffs)


def load_trace(path: str | Path) -> list[dict]:
    """The events of a Chrome trace written by `torch.profiler.profile.export_chrome_trace`."""
    data = json.loads(Path(path).read_text())
    return data["traceEvents"] if isinstance(data, dict) else data
