"""Calibrated GPU profiles: measured kernel costs, host costs, contention and link fits.

A profile is a versioned YAML file written by `ligersim calibrate` (`hw/calibrate.py`) and
named by a scenario's `hardware.profile`. It records how it was made (device, SM count,
driver, CUDA and torch versions, date, command) and:

- `kernels`: per kernel kind, the measured solo times over a grid of shapes (median and
  10th/90th percentiles of repeated timings after warm-up), GEMMs including the split
  pieces k/8 of each model GEMM;
- `host`: the host's cost per launched operation and the event-sync wake-up latency;
- `contention`: every measured pair of kernel classes (compute-bound GEMM, memory-bound,
  attention, emulated collective, DMA copy) × priority order × launch order × size, and the
  table the simulator uses, keyed by its classes (`sim.kernels.KERNEL_CLASSES`);
- `emulated_collective`: the single-GPU collective's measured time against its target;
- `links`: α–β fits of the link model to measured NCCL tables (`sim.linkfit`).

`MeasuredKernels.estimate` turns the tables into a solo time for any kernel: exact at a
measured shape, log–log interpolation of time against work (FLOPs for compute kernels,
bytes otherwise) between the nearest measured shapes of the same *family* (shapes that
differ only along the axis that varies with the tokens: a GEMM's M for fixed N, K), and
outside every family's range the roofline scaled by the nearest measured shape's
measured/roofline ratio (continuous at the edge), with a one-time warning.

A kind the profile has never measured is an error, not a silent roofline: a calibrated
prediction that quietly mixes in uncalibrated physics would be misleading. The simulator
checks every kind a scenario needs when it loads the profile (`require_kinds`).
"""

from __future__ import annotations

import bisect
import contextvars
import math
import os
import re
import statistics
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sim.contention import FIRSTS
from sim.errors import LigerSimError
from sim.ir import BLOCKING
from sim.kernels import KERNEL_CLASSES, KIND_CLASS, KernelSpec

PROFILE_FORMAT = "ligersim-profile"
PROFILE_VERSION = 1
COMPUTE_KINDS = frozenset({"gemm", "bgemm", "attention"})
# the dims that identify a shape, per kind (split GEMM pieces also carry n0/n_full: not shape)
SHAPE_DIMS = {"gemm": ("m", "n", "k"), "bgemm": ("b", "m", "n", "k"), "attention": ("b", "h", "sq", "skv", "d", "kv_h"),
              "decode_attention": ("b", "h", "ctx", "d", "kv_h", "ctx_max")}
# calibration's contention classes and the simulator class each stands for
CONTENTION_CLASSES = {"gemm": "compute", "attention": "compute", "memory": "memory",
                      "collective": "collective", "copy": "copy"}
PRIORITIES = ("higher", "lower", "equal")


class ProfileWarning(UserWarning):
    """A profile is used outside what it measured (shape range, partial run, other GPU)."""


@dataclass(slots=True)
class Measurement:
    """Solo time of one kernel shape: median and spread of `reps` timings."""

    dims: dict[str, int]
    median_s: float
    p10_s: float
    p90_s: float
    reps: int
    name: str = ""
    flops: float = 0.0
    bytes: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["name"]:
            d.pop("name")
        return d


@dataclass
class Profile:
    device: dict[str, Any]
    date: str
    command: str
    host: dict[str, float] = field(default_factory=dict)
    kernels: dict[str, list[Measurement]] = field(default_factory=dict)
    contention: dict[str, list[dict]] = field(default_factory=lambda: {"measurements": [], "table": []})
    emulated_collective: list[dict] = field(default_factory=list)
    links: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    status: str = "complete"
    path: str = "<profile>"
    host_ops: dict[str, float] = field(default_factory=dict)  # op name (or kind) -> host dispatch time, s
    # host_key or scenario_key -> {"launch": {op name: s}, "record_s": s, "wait_s": s, "after_s":
    # {"sync": s, "sleep_until": s}, "runs": [...], ...}: host time per operation measured inside
    # `hw run`s of the policy or scenario (`hw.host_in_situ`)
    host_in_situ: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "status": self.status,
                "device": self.device, "date": self.date, "command": self.command, "settings": self.settings,
                "host": self.host,
                "kernels": {k: [m.to_dict() for m in v] for k, v in sorted(self.kernels.items())},
                "contention": self.contention, "emulated_collective": self.emulated_collective,
                "links": self.links, **({"host_ops": self.host_ops} if self.host_ops else {}),
                **({"host_in_situ": self.host_in_situ} if self.host_in_situ else {})}

    def host_params(self, keys: str | list[str], launch_s: float,
                    sync_wakeup_s: float) -> tuple[float, float, dict[str, float]]:
        """(cost of a record or wait, sync wake-up, launch cost per op name) for the first of `keys`
        the profile measured: a `scenario_key` (the scenario's own short runs), a `host_key` such as
        "interleaved" or "intra_op/generative" (a generative key falls back to its policy's entry).

        These are the in-situ measurements (the executor's Python around each op, the policy's own
        bookkeeping included), else the runtime's cost per launch plus each op's dispatch timed
        alone (`launch_costs`).

        An op's cost is its mean where the profile keeps one (`launch_stats`), else its median.
        When the host sets the pace, a run's length is the sum of these costs, and the expected
        sum of n samples is n × mean: host times are skewed to the right, and in the H100
        validation runs n × median came to 37-83% of the measured sum."""
        wake = self.host.get("sync_wakeup_s", sync_wakeup_s)
        situ = self._situ(keys)
        if situ and situ.get("launch"):
            other = statistics.median([situ.get("record_s", launch_s), situ.get("wait_s", launch_s)])
            stats = situ.get("launch_stats") or {}
            return other, wake, {str(k): float(stats[k][1] if k in stats else v) for k, v in situ["launch"].items()}
        return self.host.get("launch_s", launch_s), wake, self.launch_costs()

    def host_record_wait(self, keys: str | list[str]) -> tuple[float | None, float | None]:
        """(host seconds of an event record, of a stream wait) of the entry `host_params` uses: their
        means where it keeps them (`record_stats`, `wait_stats`), else their medians; None where it
        has neither (the simulator then charges `host_params`' record-or-wait cost)."""
        situ = self._situ(keys) or {}
        if not situ.get("launch"):
            return None, None

        def one(kind: str) -> float | None:
            stats = situ.get(f"{kind}_stats")
            return float(stats[1]) if stats else (float(situ[f"{kind}_s"]) if f"{kind}_s" in situ else None)

        return one("record"), one("wait")

    def host_linear(self, keys: str | list[str]) -> dict[str, tuple[str, float, float]]:
        """Op name -> (dim, base s, s per unit of dim) for the ops whose in-situ host cost grows with
        one of their dims (`launch_linear`, of the entry `host_params` uses): prefill attention's
        Python loops over the iteration's prompts, about 0.1 ms each on the H100."""
        situ = self._situ(keys) or {}
        return {str(k): (str(v[0]), float(v[1]), float(v[2])) for k, v in (situ.get("launch_linear") or {}).items()}

    def host_after(self, keys: str | list[str]) -> tuple[dict[str, float], float]:
        """(host seconds from a blocking op's return to the next op, per kind; how late a sleep
        wakes) of the entry `host_params` uses; ({}, 0) where it was not measured."""
        situ = self._situ(keys) or {}
        return ({str(k): float(v) for k, v in (situ.get("after_s") or {}).items()},
                float(situ.get("sleep_late_s", 0.0)))

    def host_entry(self, keys: str | list[str]) -> dict | None:
        """The in-situ entry `host_params` uses for `keys`, or None."""
        return self._situ(keys)

    def _situ(self, keys: str | list[str]) -> dict | None:
        """The first of `keys` (and generative keys' policies) with in-situ host costs."""
        keys = [keys] if isinstance(keys, str) else list(keys)
        keys += [k.split("/")[0] for k in keys if "/" in k and not k.startswith(SCENARIO_KEY)]
        return next((self.host_in_situ[k] for k in keys if self.host_in_situ.get(k)), None)

    def launch_costs(self) -> dict[str, float]:
        """Host time to launch each measured op through the hw runtime: the runtime's own work
        per launch (`host.runtime_s`) plus the op's dispatch (`host_ops`). When the host is the
        bottleneck (small kernels behind Python), these, not the kernels, set the pace."""
        if not self.host_ops:
            return {}
        h = self.host
        runtime = h.get("runtime_s", max(0.0, h.get("launch_s", 0.0) - h.get("generic_op_s", 0.0)))
        return {name: runtime + t for name, t in self.host_ops.items()}

    def contention_pairs(self) -> list[tuple[str, str, str, float, str]]:
        """The simulator's table: (victim class, other class, priority relation, slowdown, which
        started first)."""
        return [(p["victim"], p["other"], p.get("priority", "any"), float(p["slowdown"]), p.get("first", "any"))
                for p in self.contention.get("table", [])]

    def emulation_overhead_s(self) -> float:
        """Median of (measured − target) of the emulated collective: its launch and tail cost."""
        diffs = sorted(e["median_s"] - e["target_s"] for e in self.emulated_collective)
        return max(0.0, diffs[len(diffs) // 2]) if diffs else 0.0

    def emulated_times(self, interconnect: str) -> EmulatedTimes:
        """`EmulatedTimes` from this profile's measurements of the emulated all-reduce on
        `interconnect` (all of them when none was taken on it)."""
        rows = [e for e in self.emulated_collective if e.get("interconnect") == interconnect] or \
            list(self.emulated_collective)
        by_n: dict[int, dict[float, list[float]]] = {}
        for e in rows:
            if e["target_s"] > 0 and e["median_s"] > 0:
                by_n.setdefault(int(e["n"]), {}).setdefault(float(e["target_s"]), []).append(float(e["median_s"]))
        points = {n: tuple((t, statistics.fmean(ms)) for t, ms in sorted(v.items())) for n, v in by_n.items()}
        return EmulatedTimes(points, self.emulation_overhead_s())


@dataclass(frozen=True)
class EmulatedTimes:
    """How long the single-GPU emulated all-reduce (`hw.collectives.EmulatedCollectives`) lasts for a
    link-model time `target_s`, read off calibration's measurements of it.

    The emulation copies a ring all-reduce's bytes through HBM, then spins until the target has
    passed. A small one ends a launch-and-tail overhead after its target (~4 us on an H100); a large
    one is still copying when its target passes: on an H100 a 32 MB all-reduce over 8 ranks measured
    239 us for a 182 us target, and validation of TP 8 runs predicted such all-reduces 20% short with
    a constant overhead. So between measured targets of the group size the measured time is
    interpolated (as measured / target, in log target); below them the smallest one's excess is
    added, above them the largest one's ratio applies; a group size never measured gets the
    median overhead."""

    points: dict[int, tuple[tuple[float, float], ...]]  # group size -> (target s, measured s), by target
    overhead_s: float

    def time(self, target_s: float, n: int) -> float:
        if target_s <= 0:
            return 0.0
        pts = self.points.get(n)
        if not pts:
            return target_s + self.overhead_s
        if target_s <= pts[0][0]:
            return target_s + pts[0][1] - pts[0][0]
        if target_s >= pts[-1][0]:
            return target_s * pts[-1][1] / pts[-1][0]
        i = bisect.bisect_right([t for t, _ in pts], target_s)
        (t0, m0), (t1, m1) = pts[i - 1], pts[i]
        w = math.log(target_s / t0) / math.log(t1 / t0)
        return target_s * ((m0 / t0) * (1 - w) + (m1 / t1) * w)


def host_key(policy: str, generative: bool) -> str:
    """A profile's key for a policy's in-situ host costs: generative serving runs other host code
    per op (iterations, paged KV index tensors) than encoder and prefill jobs, so they are kept apart."""
    return f"{policy}/generative" if generative else policy


SCENARIO_KEY = "scenario:"


def scenario_key(name: str) -> str:
    """A profile's key for one scenario's in-situ host costs. Host time per op also depends on the
    model and the parallel layout (an all-reduce cost the host 158 us in the TP 2 encoder run and
    104 us in the TP 4 decode run on the H100, medians), so calibration keeps each scenario's own short
    runs (another seed) beside the policy's pooled ones, and a scenario it measured uses its own."""
    return SCENARIO_KEY + name


def host_keys(scn) -> list[str]:
    """The in-situ keys a parsed scenario's host costs are looked up under, first match first: its
    own (`scenario_key`), then its policy's (`host_key`)."""
    return [scenario_key(scn.name), host_key(scn.policy.name, scn.serving.mode == "generative")]


def host_key_of(scenario: dict) -> str:
    """`host_key` of a scenario's raw (YAML) dict, before it is parsed."""
    return host_key((scenario.get("policy") or {}).get("name", "intra_op"),
                    (scenario.get("serving") or {}).get("mode") == "generative")


def _number(v: Any) -> bool:
    """A finite number, as YAML writes one; true and false are none (Python counts them as 1 and 0)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _time(v: Any) -> bool:
    return _number(v) and v >= 0


def _got(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else repr(v)


def _need(d: dict, key: str, file: str, where: str) -> float:
    if key not in d:
        raise LigerSimError("required field is missing", file=file, field=f"{where}.{key}" if where else key)
    v = d[key]
    if not isinstance(v, int | float) or isinstance(v, bool):  # the caller checks its range (and inf, nan)
        raise LigerSimError(f"must be a number, got {_got(v)}", file=file, field=f"{where}.{key}" if where else key)
    return float(v)


def _optional(d: dict, key: str, default: float, file: str, where: str, integer: bool = False) -> float:
    """An optional number ≥ 0 of a measurement (an integer ≥ 1 with `integer`), else a LigerSimError."""
    v = d.get(key, default)
    ok = (isinstance(v, int) and not isinstance(v, bool) and v >= 1) if integer else _time(v)
    if not ok:
        raise LigerSimError(f"must be {'a whole number ≥ 1' if integer else 'a finite number ≥ 0'}, got {_got(v)}",
                            file=file, field=f"{where}.{key}")
    return v


def profile_from_dict(d: Any, file: str = "<profile>") -> Profile:
    """Validate a parsed profile document; every problem is a one-line LigerSimError."""
    if not isinstance(d, dict) or d.get("format") != PROFILE_FORMAT:
        raise LigerSimError(f"not a ligersim profile (top-level `format` must be {PROFILE_FORMAT!r}); make one "
                            "with `ligersim calibrate`", file=file, field="format")
    if d.get("version") != PROFILE_VERSION:
        raise LigerSimError(f"profile version {d.get('version')!r} is not supported; this ligersim reads version "
                            f"{PROFILE_VERSION} (re-run `ligersim calibrate`)", file=file, field="version")
    device = d.get("device") or {}
    if not isinstance(device, dict) or "name" not in device:
        raise LigerSimError("required field is missing", file=file, field="device.name")
    kernels: dict[str, list[Measurement]] = {}
    raw = d.get("kernels") or {}
    if not isinstance(raw, dict):
        raise LigerSimError("must map kernel kinds to lists of measurements", file=file, field="kernels")
    for kind, entries in raw.items():
        if kind not in KIND_CLASS:
            raise LigerSimError(f"unknown kernel kind; expected one of {', '.join(sorted(KIND_CLASS))}", file=file,
                                field=f"kernels.{kind}")
        if not isinstance(entries, list):
            raise LigerSimError("must be a list of measurements", file=file, field=f"kernels.{kind}")
        out = []
        for i, e in enumerate(entries):
            where = f"kernels.{kind}[{i}]"
            if not isinstance(e, dict) or not isinstance(e.get("dims"), dict):
                raise LigerSimError("each measurement needs `dims` (a mapping)", file=file, field=where)
            med = _need(e, "median_s", file, where)
            if not (med > 0 and math.isfinite(med)):
                raise LigerSimError(f"median_s must be a finite number > 0, got {med}", file=file,
                                    field=f"{where}.median_s")
            bad = [k for k, v in e["dims"].items() if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0)]
            if bad:
                raise LigerSimError(f"must be whole numbers >= 0, got {e['dims'][bad[0]]!r}", file=file,
                                    field=f"{where}.dims.{bad[0]}")
            p10, p90, flops, nbytes = (float(_optional(e, k, d, file, where)) for k, d in (
                ("p10_s", med), ("p90_s", med), ("flops", 0.0), ("bytes", 0.0)))
            out.append(Measurement({k: int(v) for k, v in e["dims"].items()}, med, p10, p90,
                                   int(_optional(e, "reps", 1, file, where, integer=True)), str(e.get("name", "")),
                                   flops, nbytes))
        kernels[str(kind)] = out
    contention = d.get("contention") or {}
    table = contention.get("table", []) if isinstance(contention, dict) else None
    if not isinstance(table, list):
        raise LigerSimError("must be a list of {victim, other, priority, slowdown}", file=file,
                            field="contention.table")
    for i, p in enumerate(table):
        where = f"contention.table[{i}]"
        if not isinstance(p, dict) or p.get("victim") not in KERNEL_CLASSES or p.get("other") not in KERNEL_CLASSES:
            raise LigerSimError(f"victim and other must be kernel classes ({', '.join(KERNEL_CLASSES)})",
                                file=file, field=where)
        if p.get("priority", "any") not in (*PRIORITIES, "any"):
            raise LigerSimError(f"priority must be one of {', '.join((*PRIORITIES, 'any'))}", file=file,
                                field=f"{where}.priority")
        slowdown = _need(p, "slowdown", file, where)
        if not (slowdown >= 1.0 and math.isfinite(slowdown)):
            raise LigerSimError(f"slowdown must be a finite number ≥ 1, got {slowdown}", file=file,
                                field=f"{where}.slowdown")
        if p.get("first", "any") not in FIRSTS:
            raise LigerSimError(f"first must be one of {', '.join(FIRSTS)}", file=file, field=f"{where}.first")
    host = d.get("host") or {}
    for key, what in (("host", host), ("links", d.get("links") or {}), ("settings", d.get("settings") or {})):
        if not isinstance(what, dict):
            raise LigerSimError("must be a mapping", file=file, field=key)
    for key, v in host.items():  # launch_s, sync_wakeup_s, ...: every one a time
        if not _time(v):
            raise LigerSimError(f"must be a time ≥ 0 in seconds, got {_got(v)}", file=file, field=f"host.{key}")
    host_ops = d.get("host_ops") or {}
    if not isinstance(host_ops, dict) or not all(_time(v) for v in host_ops.values()):
        raise LigerSimError("must map op names to host times ≥ 0 in seconds", file=file, field="host_ops")
    emulated = d.get("emulated_collective") or []
    for i, e in enumerate(emulated if isinstance(emulated, list) else [None]):
        if not (isinstance(e, dict) and isinstance(e.get("n"), int) and not isinstance(e["n"], bool) and e["n"] >= 1
                and _time(e.get("target_s")) and _time(e.get("median_s"))):
            raise LigerSimError("must be a list of {n: GPUs ≥ 1, target_s, median_s: seconds ≥ 0}", file=file,
                                field=f"emulated_collective[{i}]" if isinstance(emulated, list) else "emulated_collective")
    situ = d.get("host_in_situ") or {}
    if not isinstance(situ, dict):
        raise LigerSimError("must map policies to their in-situ host costs", file=file, field="host_in_situ")
    for pol, v in situ.items():
        check_situ_entry(v, file, f"host_in_situ.{pol}")
    return Profile(device=dict(device), date=str(d.get("date", "")), command=str(d.get("command", "")),
                   host={k: float(v) for k, v in host.items()}, kernels=kernels,
                   contention={"measurements": list(contention.get("measurements", [])), "table": list(table)},
                   emulated_collective=list(emulated), links=dict(d.get("links") or {}),
                   settings=dict(d.get("settings") or {}), status=str(d.get("status", "complete")), path=file,
                   host_ops={str(k): float(v) for k, v in host_ops.items()},
                   host_in_situ={str(k): dict(v) for k, v in situ.items()})


def check_situ_entry(v, file: str, where: str) -> None:
    """An in-situ host entry (a profile's `host_in_situ` value, or a run's `host_in_process`) is
    well formed, else a LigerSimError naming `file` and the field under `where`."""
    launch = v.get("launch") if isinstance(v, dict) else None
    if not isinstance(launch, dict) or not all(_time(t) for t in launch.values()):
        raise LigerSimError("must be an in-situ entry: {launch: {op name: host seconds ≥ 0}, ...}", file=file,
                            field=where)
    linear = v.get("launch_linear") or {}
    if not isinstance(linear, dict) or not all(
            isinstance(x, list | tuple) and len(x) == 4 and isinstance(x[0], str)
            and all(_number(y) for y in x[1:]) for x in linear.values()):
        raise LigerSimError("must map op names to [dim, base s, s per unit, samples]", file=file,
                            field=f"{where}.launch_linear")
    stats = v.get("launch_stats") or {}
    if not isinstance(stats, dict) or not all(
            isinstance(x, list | tuple) and len(x) == 3 and all(_time(y) for y in x) for x in stats.values()):
        raise LigerSimError("must map op names to [samples, mean s, 90th percentile s], all ≥ 0", file=file,
                            field=f"{where}.launch_stats")
    for kind in ("record", "wait"):
        x = v.get(f"{kind}_stats")
        if x is not None and not (isinstance(x, list | tuple) and len(x) == 3
                                  and all(_time(y) for y in x)):
            raise LigerSimError("must be [samples, mean s, 90th percentile s], all ≥ 0", file=file,
                                field=f"{where}.{kind}_stats")
    after = v.get("after_s") or {}
    if not isinstance(after, dict) or not all(
            k in BLOCKING and _time(x) for k, x in after.items()):
        raise LigerSimError("must map sync and sleep_until to host seconds ≥ 0", file=file,
                            field=f"{where}.after_s")
    for key in ("sleep_late_s", "record_s", "wait_s"):
        if key in v and not _time(v[key]):
            raise LigerSimError(f"must be a time ≥ 0 in seconds, got {_got(v[key])}", file=file, field=f"{where}.{key}")


_CACHE: dict[tuple[str, float], Profile] = {}


# libyaml's safe loader and dumper where PyYAML has them: the same documents and text as the pure-Python
# safe ones, 4x faster to read and 3x faster to write the H100 profile (5.9 s and 2.8 s in Python)
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile (cached per file and modification time)."""
    path = Path(path)
    try:
        key = (str(path.resolve()), path.stat().st_mtime)
    except OSError:
        raise LigerSimError("profile file not found; make one with `ligersim calibrate -o PATH`",
                            file=str(path), field="hardware.profile") from None
    if key not in _CACHE:
        try:
            data = yaml.load(path.read_text(), Loader=SAFE_LOADER)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise LigerSimError(f"malformed YAML{where}", file=str(path)) from None
        _CACHE[key] = profile_from_dict(data, str(path))
    return _CACHE[key]


def save_profile(profile: Profile, path: str | Path) -> Path:
    """Write atomically (a temporary file renamed over the target): an interrupted write
    never leaves half a profile behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    header = (f"# ligersim profile of {profile.device.get('name')} ({profile.status}), {profile.date}\n"
              f"# made by: {profile.command}\n")
    tmp.write_text(header + yaml.dump(profile.to_dict(), Dumper=SAFE_DUMPER, sort_keys=False, width=120))
    os.replace(tmp, path)
    profile.path = str(path)
    return path


# ---------------------------------------------------------------------- interpolation
def shape_key(kind: str, dims: dict[str, int], name: str = "") -> tuple:
    """What makes two measurements the same shape (pointwise kernels: the op and its size)."""
    cols = SHAPE_DIMS.get(kind)
    if cols is None:
        return (name, dims.get("elems", dims.get("nbytes", 0)))
    return tuple(dims.get(c, 0) for c in cols)


def families(kind: str, dims: dict[str, int], name: str = "") -> list[tuple]:
    """Family keys of a shape, most specific first: shapes in one family differ only along
    the axis that grows with the job's tokens, so time is close to a power law of work."""
    if kind == "gemm":
        return [("nk", dims["n"], dims["k"]), ()]
    if kind == "bgemm":
        m, n, k = dims["m"], dims["n"], dims["k"]
        pat, d = ("qk", k) if m == n else ("sv", n) if m == k else ("bmm", k)
        return [(pat, dims["b"], d), (pat, d), ()]
    if kind == "attention":
        pat = "prefill" if dims["sq"] == dims["skv"] else "decode"
        return [(pat, dims["h"], dims.get("kv_h", dims["h"]), dims["d"], dims["b"]),
                (pat, dims["h"], dims.get("kv_h", dims["h"]), dims["d"]), ()]
    if kind == "decode_attention":  # time follows the KV bytes read, at a given batch of sequences
        h, kvh, d = dims["h"], dims.get("kv_h", dims["h"]), dims["d"]
        return [("b", h, kvh, d, dims["b"]), ("heads", h, kvh, d), ()]
    return [("name", name), ()] if name else [()]


def padding(kind: str, dims: dict[str, int] | None) -> float:
    """Decode attention's work padded to the longest context over its true work (b × ctx_max /
    ctx), which its time follows (`sim.kernels.decode_attention`); 1 for every other kernel."""
    if kind == "decode_attention" and dims and dims.get("ctx_max") and dims.get("ctx"):
        return dims["b"] * dims["ctx_max"] / dims["ctx"]
    return 1.0


def work(kind: str, flops: float, nbytes: float, dims: dict[str, int] | None = None) -> float:
    """The axis times are interpolated along: FLOPs for compute kernels, bytes otherwise (for
    decode attention, padded: `padding`)."""
    return max(flops if kind in COMPUTE_KINDS else nbytes * padding(kind, dims), 1.0)


@dataclass(slots=True)
class _Family:
    x: list[float]  # log work, ascending, unique
    y: list[float]  # log median time
    ratio: list[float]  # log(measured / roofline) at each point, for extrapolation


class MeasuredKernels:
    """The kernel tables of a profile, ready for lookups."""

    def __init__(self, profile: Profile, roofline: Callable[[KernelSpec], float]):
        self.profile, self.roofline = profile, roofline
        self.exact: dict[tuple, float] = {}
        # an in-context profile's entries of kinds otherwise keyed by shape alone (GEMMs, attention),
        # per op: in context an op's time depends on the op before it (`hw.calibrate.entry_key`)
        self.by_op: dict[tuple, float] = {}
        by_op = bool(profile.settings.get("in_context"))
        self.fams: dict[tuple, _Family] = {}
        self.warned: set[tuple] = set()
        points: dict[tuple, dict[float, list[tuple[float, float]]]] = {}
        for kind, entries in profile.kernels.items():
            # an in-context profile's ops of a shape-keyed kind answer for their shape only where no
            # entry timed alone (a split GEMM piece) does, and not for one another: after the rest
            later = by_op and kind in SHAPE_DIMS
            for m in sorted(entries, key=lambda e: bool(e.name)) if later else entries:
                spec = _spec_of(kind, m)
                if not (later and m.name):
                    self.exact[(kind, *shape_key(kind, m.dims, m.name))] = m.median_s
                if m.name:  # a named op also answers for its kind's anonymous shape
                    self.exact.setdefault((kind, *shape_key(kind, m.dims)), m.median_s)
                x = math.log(work(kind, spec.flops, spec.bytes, spec.dims))
                r = math.log(m.median_s / max(roofline(spec) * padding(kind, spec.dims), 1e-12))
                fams = families(kind, m.dims, m.name)
                if by_op and m.name and kind in SHAPE_DIMS:
                    self.by_op[(kind, m.name, *shape_key(kind, m.dims))] = m.median_s
                    fams = [("op", m.name, *fams[0]), *fams]
                for fam in fams:
                    points.setdefault((kind, *fam), {}).setdefault(x, []).append((math.log(m.median_s), r))
        for key, by_x in points.items():
            xs = sorted(by_x)
            ys = [sum(p[0] for p in by_x[x]) / len(by_x[x]) for x in xs]
            rs = [sum(p[1] for p in by_x[x]) / len(by_x[x]) for x in xs]
            self.fams[key] = _Family(xs, ys, rs)

    @property
    def kinds(self) -> set[str]:
        return {k for k, v in self.profile.kernels.items() if v}

    def require(self, kinds: Iterable[str]) -> None:
        """Refuse up front a scenario needing a kind this profile never measured."""
        missing = sorted(set(kinds) - self.kinds)
        if missing:
            advice = ("the CUDA backend does not run mixture-of-experts layers, so no calibration measures "
                      "them: leave hardware.profile out to price this model with the roofline"
                      if "grouped_gemm" in missing else "re-run `ligersim calibrate` with a scenario that uses them")
            raise LigerSimError(f"no measurements of kernel kind(s) {', '.join(missing)} (the profile has "
                                f"{', '.join(sorted(self.kinds)) or 'none'}); {advice}", file=self.profile.path,
                                field=f"kernels.{missing[0]}")

    def estimate(self, spec: KernelSpec) -> float:
        kind = spec.kind
        if kind not in self.profile.kernels or not self.profile.kernels[kind]:
            self.require([kind])
        x = math.log(work(kind, spec.flops, spec.bytes, spec.dims))
        keys = families(kind, spec.dims, spec.name)
        if self.by_op and kind in SHAPE_DIMS and not spec.is_piece:
            # the op's own entries first: exact, then along its own points (before a shape another
            # op, or a piece timed alone, measured)
            t = self.by_op.get((kind, spec.name, *shape_key(kind, spec.dims)))
            if t is not None:
                return t
            keys = [("op", spec.name, *keys[0]), *keys]
            fam = self.fams.get((kind, *keys[0]))
            if fam is not None and len(fam.x) > 1 and fam.x[0] <= x <= fam.x[-1]:
                return math.exp(_lerp(fam.x, fam.y, x))
        t = self.exact.get((kind, *shape_key(kind, spec.dims, spec.name)))
        if t is None:
            t = self.exact.get((kind, *shape_key(kind, spec.dims)))
        if t is not None:
            return t
        fams = [self.fams.get((kind, *f)) for f in keys]
        for fam in fams:
            if fam is not None and len(fam.x) > 1 and fam.x[0] <= x <= fam.x[-1]:
                return math.exp(_lerp(fam.x, fam.y, x))
        fam = next(f for f in fams if f is not None)  # the () family exists for every measured kind
        i = min(range(len(fam.x)), key=lambda j: abs(fam.x[j] - x))
        key = (kind, families(kind, spec.dims, spec.name)[0])
        if key not in self.warned:
            self.warned.add(key)
            warnings.warn(f"{self.profile.path}: {kind} {spec.name or ''} {_dims_str(spec.dims)} is outside the "
                          "measured range; using the roofline scaled by the nearest measured shape",
                          ProfileWarning, stacklevel=3)
        return self.roofline(spec) * padding(kind, spec.dims) * math.exp(fam.ratio[i])


def _lerp(xs: list[float], ys: list[float], x: float) -> float:
    j = bisect.bisect_left(xs, x)
    if xs[j] == x:
        return ys[j]
    x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _dims_str(dims: dict[str, int]) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in dims.items() if k not in ("n0", "n_full")) + ")"


def _spec_of(kind: str, m: Measurement) -> KernelSpec:
    """A spec for a measurement: its FLOPs and bytes as recorded, else as the constructors count them."""
    from sim import kernels as K

    d = m.dims
    if m.flops or m.bytes:
        return KernelSpec(kind, m.name or kind, dict(d), m.flops, m.bytes)
    if kind == "gemm":
        return K.gemm(m.name or kind, d["m"], d["n"], d["k"])
    if kind == "bgemm":
        return K.bgemm(m.name or kind, d["b"], d["m"], d["n"], d["k"])
    if kind == "attention":
        return K.attention(m.name or kind, d["b"], d["h"], d["sq"], d["skv"], d["d"], d.get("kv_h", d["h"]),
                           d["sq"] == d["skv"])
    return K.pointwise(kind, m.name or kind, d.get("elems", 1), 1, 1, 1.0)


def kinds_needed(model, tp: int, pp: int = 1) -> set[str]:
    """Non-collective kernel kinds a model's jobs launch (they do not depend on the job's size)."""
    from sim.layers import epilogue_kernels, layer_kernels, prologue_kernels

    specs = layer_kernels(model, tp, 1, 2) + prologue_kernels(model, tp, 1, 2) + epilogue_kernels(model, tp, 1, 2)
    return {s.kind for s in specs if not s.is_collective}


def contention_table(measurements: list[dict]) -> list[dict]:
    """The simulator's table from measured slowdowns: per (sim victim class, sim other class,
    priority relation) and per which kernel started first, the median over sizes and calibration
    classes that map to the same simulator class; and per (victim, other, priority) over both
    orders, for kernels that start together. Two collectives share links in the link model
    instead, so that pair is left out."""
    groups: dict[tuple[str, str, str, str], list[float]] = {}
    for m in measurements:
        v, o = CONTENTION_CLASSES.get(m["victim"]), CONTENTION_CLASSES.get(m["other"])
        if v is None or o is None or (v == o == "collective"):
            continue
        for first in {"any", m.get("first", "any")}:
            groups.setdefault((v, o, m["priority"], first), []).append(float(m["slowdown"]))
    out = []
    for (v, o, p, first), xs in sorted(groups.items()):
        out.append({"victim": v, "other": o, "priority": p, **({"first": first} if first != "any" else {}),
                    "slowdown": round(max(1.0, statistics.median(xs)), 4), "samples": len(xs)})
    return out


def links_section(directory: str | Path) -> dict:
    """α–β fits of the link model to the NCCL tables in `directory`, with their fit errors."""
    from sim.linkfit import fit_all

    fits = fit_all(directory)
    topo: dict[str, list[dict]] = {}
    for r in fits.to_dict("records"):
        topo.setdefault(r["topology"], []).append(
            {"collective": r["collective"], "n": int(r["n"]), "nodes": int(r["nodes"]),
             "alpha_s": float(f"{r['alpha_s']:.4g}"), "bandwidth_GBps": float(f"{r['bandwidth_GBps']:.4g}"),
             "median_rel_err": float(f"{r['median_rel_err']:.3g}"), "p90_rel_err": float(f"{r['p90_rel_err']:.3g}"),
             "warnings": list(r["warnings"])})
    return {"source": str(directory), "model": "ring all-reduce T = 2(n-1)·alpha + 2(n-1)/n·S/B; "
            "send/recv T = alpha + S/B", "topologies": topo}


def profile_cost(path: str | Path, roofline, scn):
    """(ProfileCost, Profile) for a scenario: the profile loaded, every kind it needs checked."""
    from sim.costs import ProfileCost

    prof = load_profile(path)
    if prof.status != "complete":
        _warn_once(("partial", prof.path), f"{prof.path}: profile is {prof.status} (calibration was interrupted); "
                   "re-run `ligersim calibrate` to finish it")
    sms = prof.device.get("sms")
    measured_on, gpu = _gpu_family(str(prof.device.get("name", ""))), _gpu_family(scn.hardware.gpu.name)
    if measured_on and gpu and measured_on != gpu:  # an H200's profile for an H100 scenario has the same SMs
        _warn_once(("family", prof.path, scn.hardware.gpu.name),
                   f"{prof.path}: measured on {prof.device.get('name')} but the scenario's GPU is "
                   f"{scn.hardware.gpu.name}: kernel times are the profile's GPU's (set hardware.gpu to match it)")
    elif sms and sms != scn.hardware.gpu.sms:
        _warn_once(("sms", prof.path, scn.hardware.gpu.name),
                   f"{prof.path}: measured on {prof.device.get('name')} ({sms} SMs) but the scenario's GPU is "
                   f"{scn.hardware.gpu.name} ({scn.hardware.gpu.sms} SMs)")
    key = (id(prof), roofline.peak_flops, roofline.hbm_bw, roofline.sms, roofline.kernel_overhead_s)
    measured = _MEASURED.get(key)
    if measured is None or measured.profile is not prof:  # one per profile and GPU: warnings stay one-time
        measured = _MEASURED[key] = MeasuredKernels(prof, roofline.spec_solo)
    measured.require(kinds_needed(scn.model_shape(), scn.tp(), scn.pp()))
    emulation = prof.emulated_times(scn.hardware.interconnect.name) if EMULATED.get() else None
    return ProfileCost(roofline, measured, emulation), prof


def _gpu_family(name: str) -> str | None:
    """The GPU model in a device or preset name ("NVIDIA H100 80GB HBM3" and "H100-SXM": H100; GH200,
    MI300X, RTX A6000 too), or None."""
    m = re.search(r"\b([A-Z]{1,2}\d{2,4})(?:[A-Z]?\b|(?=[-_]))", name.upper())
    return m.group(1) if m else None


# Set by validation while it predicts a run whose collectives were emulated on one GPU: the
# emulated kernel lasts what calibration measured it to last (`EmulatedTimes`), not the link model's time.
EMULATED: contextvars.ContextVar[bool] = contextvars.ContextVar("emulated", default=False)
# Set by validation while it predicts a run that measured its own host costs before its clock
# (`hw.launch.host_probe`): that in-situ entry replaces the profile's for the scenario.
HOST_IN_PROCESS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("host_in_process", default=None)
# Set by validation while it predicts a run timed with CUDA events: the executor brackets each op
# with a pair of timing events, GPU work of their own between queued kernels (`host.event_pair_gpu_s`).
EVENT_TIMED: contextvars.ContextVar[bool] = contextvars.ContextVar("event_timed", default=False)


_WARNED: set[tuple] = set()
_MEASURED: dict[tuple, MeasuredKernels] = {}


def _warn_once(key: tuple, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, ProfileWarning, stacklevel=3)
