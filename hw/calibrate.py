"""`ligersim calibrate`: measure a GPU (or the CPU) and write a profile the simulator reads.

What is measured, and how (the profile format is `sim.profile`):
- kernel costs: every kernel the scenarios' models launch, at their real shapes, over a
  grid of (batch, sequence length) spanning each scenario's workload, GEMMs also as split
  pieces k/8. Named layer ops run through the kernel library (`hw.kernels`), exactly as a
  `ligersim hw run` executes them (a layer-norm op there is an add, a bias and a norm);
  GEMM pieces run as plain GEMMs of their shape. Median, 10th and 90th percentile of
  repeated timings after warm-up: CUDA events around each launch on GPU (L2 flushed
  between repetitions, as other kernels would evict it in a real run), perf_counter on CPU;
- host costs: the host time per launch through the same torch runtime the hw backend uses,
  and the delay from an event completing to the host thread resuming (CUDA);
- contention (CUDA): every pair of kernel classes (GEMM, memory-bound add, fused attention,
  emulated collective, device-to-host copy) on two streams, both priority orders (and
  equal), both launch orders, two sizes: the victim's time beside the other (repeated to
  cover it) against its time alone;
- the emulated collective (CUDA + Triton): measured time against the link model's target;
- link α–β fits of the shipped NCCL tables (`profiles/nccl`, via `sim.linkfit`).

Resumable: the profile is saved (status `partial`) every few seconds and when interrupted;
re-running with the same output skips every measurement already in it.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from hw.calibrate_iterations import (
    IterShape,
    SyntheticComposition,
    iteration_shapes,
    named_op,
    run_iteration_kernel,
)
from hw.torchenv import check_device, torch_dtype
from sim.errors import LigerSimError
from sim.kernels import Kernel, KernelSpec, split_gemm
from sim.layers import (
    ModelShape,
    epilogue_kernels,
    iteration_layer,
    layer_kernels,
    layer_params,
    prologue_kernels,
)
from sim.profile import (
    PROFILE_VERSION,
    Measurement,
    Profile,
    contention_table,
    links_section,
    load_profile,
    save_profile,
    shape_key,
)
from sim.provenance import code_version

REPO = Path(__file__).resolve().parents[1]
SAVE_EVERY_S = 20.0  # saving a profile of the H100's size takes about a second (`sim.profile.save_profile`)
HIGH, LOW = -1, 0  # stream priorities as the interleaved policy uses them (CUDA: lower is higher)

# Built-in tiny scenarios for CPU calibration (machinery checks, CI): one encoder, one decoder.
TINY_CPU = [
    {"name": "tiny-encoder", "hardware": {"gpu": "A100-SXM", "count": 2, "interconnect": "nvswitch-a100"},
     "model": {"preset": "liger-encoder", "hidden": 128, "heads": 2, "kv_heads": 2, "head_dim": 64, "ffn": 256,
               "layers": 2},
     "workload": {"kind": "generate", "jobs": 4, "arrival": {"process": "poisson", "rate": 1000}, "batch": 1,
                  "seq_len": {"dist": "uniform", "low": 8, "high": 32}}},
    {"name": "tiny-decoder", "hardware": {"gpu": "A100-SXM", "count": 2, "interconnect": "nvswitch-a100"},
     "model": {"preset": "llama2-7b", "hidden": 128, "heads": 2, "kv_heads": 2, "head_dim": 64, "ffn": 256,
               "layers": 2, "vocab": 256},
     "workload": {"kind": "generate", "jobs": 4, "arrival": {"process": "poisson", "rate": 1000}, "batch": 1,
                  "seq_len": {"dist": "uniform", "low": 8, "high": 32}}},
    {"name": "tiny-generative", "hardware": {"gpu": "A100-SXM", "count": 2, "interconnect": "nvswitch-a100"},
     "model": {"preset": "llama2-7b", "hidden": 128, "heads": 2, "kv_heads": 2, "head_dim": 64, "ffn": 256,
               "layers": 2, "vocab": 256},
     "workload": {"kind": "generate", "jobs": 4, "arrival": {"process": "poisson", "rate": 1000},
                  "prompt_tokens": {"dist": "uniform", "low": 8, "high": 48},
                  "output_tokens": {"dist": "uniform", "low": 2, "high": 8}},
     "serving": {"mode": "generative", "max_batch_tokens": 32, "chunked_prefill": True}},
]


@dataclass
class Settings:
    device: str = "cuda"
    quick: bool = False
    warmup: int = 5
    reps: int = 30
    flush_l2: bool = True  # cleared unless `calibrate(cold_l2=True)`
    timer: str = "events"  # CUDA kernels: "events" around each repetition, or "cupti" (`Timer`)
    evict_weights: bool = True  # GEMMs whose weight a run reads from HBM are timed cold (`weight_evicted`)
    cold_ops: bool = True  # every kernel but a GEMM is timed cold (`cold_op`)
    fractions: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7)
    seq_points: int = 6  # sequence lengths per scenario, log-spaced over its range
    scenarios: list[str] = field(default_factory=list)
    # host dispatch time of each named op (CUDA: launches are asynchronous, so the host's time in
    # an op is its dispatch; on CPU it would be the op's whole execution)
    host_ops: bool = True
    host_op_reps: int = 5
    in_situ_jobs: int = 8  # jobs per scenario in the in-situ host measurement
    # time each kernel inside its job's (or generative iteration's) whole layer sequence, as a run
    # executes it (`Calibration._in_context`), instead of alone under the L2 rules
    in_context: bool = False
    context_passes: int = 3

    @classmethod
    def make(cls, device: str, quick: bool, scenarios: list[str] | None) -> Settings:
        s = cls(device=device, quick=quick)
        if quick:
            s.warmup, s.reps, s.fractions, s.seq_points = 2, 7, (2, 4, 6), 3
        if device == "cpu":
            s.flush_l2, s.warmup, s.reps, s.host_ops = False, 1, min(s.reps, 5), False
        if scenarios:
            s.scenarios = [str(Path(p)) for p in scenarios]
        elif device == "cuda":
            s.scenarios = sorted(glob.glob(str(REPO / "scenarios" / "validation" / "*.yaml")))
        return s


# ---------------------------------------------------------------------- what to measure
@dataclass
class Target:
    """One model sharding at one job shape: the layer kernels to time there."""

    model: ModelShape
    tp: int
    batch: int
    seq: int


def _scenarios(settings: Settings) -> list[tuple]:
    """(scenario, its jobs) for every scenario to calibrate for (built-in tiny ones on CPU)."""
    from sim.scenario import load_scenario, parse_scenario
    from sim.simulate import load_jobs

    if settings.scenarios:
        loaded = [load_scenario(path) for path in settings.scenarios]
    else:
        loaded = [(parse_scenario(d, f"<builtin {d['name']}>"), REPO) for d in TINY_CPU]
    if not loaded:
        raise LigerSimError("no scenarios to calibrate for; pass --scenario FILE", field="--scenario")
    from hw.run import dense_only

    for (scn, _), path in zip(loaded, settings.scenarios or [None] * len(loaded)):
        dense_only(scn, str(path or scn.name))  # one replica's kernels are all it needs: dp > 1 is fine
    return [(scn, load_jobs(scn, base)) for scn, base in loaded]


def targets(settings: Settings) -> list[Target]:
    """(model, tp, batch, seq) to measure: each encoder-style scenario's model and sharding over
    a log grid of the sequence lengths (and every batch size) its workload draws."""
    out: dict[tuple, Target] = {}
    for scn, jobs in _scenarios(settings):
        if scn.serving.mode == "generative":
            continue
        batches = sorted({j.batch for j in jobs})
        seqs = sorted({j.seq_len for j in jobs})
        grid = sorted({int(round(x)) for x in np.geomspace(seqs[0], seqs[-1], settings.seq_points)} | {seqs[0], seqs[-1]})
        m = scn.model.shape()
        for b in batches:
            for s in grid:
                out[(m, scn.tp(), b, s)] = Target(m, scn.tp(), b, s)
    return list(out.values())


def gen_targets(settings: Settings) -> list[IterShape]:
    """Synthetic iterations spanning every generative scenario's workload (`hw.calibrate_iterations`)."""
    out: dict[IterShape, None] = {}
    for scn, jobs in _scenarios(settings):
        if scn.serving.mode == "generative":
            out.update(dict.fromkeys(iteration_shapes(scn, jobs, settings.seq_points)))
    return list(out)


def specs_of(t: Target, fractions: tuple[int, ...]) -> list[KernelSpec]:
    """The target's layer kernels (no collectives), each GEMM also split at k/8."""
    specs = [s for s in prologue_kernels(t.model, t.tp, t.batch, t.seq) + layer_kernels(t.model, t.tp, t.batch, t.seq)
             + epilogue_kernels(t.model, t.tp, t.batch, t.seq) if not s.is_collective]
    pieces = []
    for s in specs:
        if s.kind == "gemm" and s.dims["n"] >= 8:
            pieces += [split_gemm(s, j / 8)[0] for j in fractions]
    return specs + pieces


def weight_evicted(model: ModelShape, tp: int, spec: KernelSpec, l2_bytes: int) -> bool:
    """Whether a GEMM's weight comes from HBM when it runs although it would fit in L2: every
    layer has its own weights (in a real model, and in `ligersim hw run`: `KernelLibrary.own_weights`),
    so the rest of the model's weights on a rank pass through L2 before the weight is used again.
    Timed warm, such a weight is read from L2 at every repetition: LLaMA-2-7B's QKV projection at
    TP 4 (25 MB of a 101 MB layer, 50 MB of L2 on an H100) was predicted 19% short in the decode
    run (median), its down projection 10%. A weight larger than L2 streams from HBM either way, and
    a model whose weights on a rank all fit in L2 keeps them there."""
    if spec.kind != "gemm" or l2_bytes <= 0:
        return False
    weight = spec.dims["k"] * spec.dims.get("n_full", spec.dims["n"]) * spec.dtype_bytes
    return weight < l2_bytes < layer_params(model) * model.dtype_bytes / tp * model.layers


def cold_op(spec: KernelSpec) -> bool:
    """Whether an op is timed with L2 flushed before each repetition: every kind but a GEMM (and
    the collectives, timed apart). In a run such an op follows other kernels: a layer's GEMMs
    stream their weights through L2, and older operands (the residual a norm adds) come from HBM,
    while repeated warm on one input it finds everything in L2. On the H100 (2026-11-22, both
    protocols CUPTI-timed, against the 12 validation runs' ~30k kernels), norms, pointwise ops,
    RoPE and attention ran between their warm and flushed times or beyond (0.6-2.7 of the way,
    median per kind), and their median errors fell from 13-26% warm to 5-16% flushed. Softmax ran
    near its warm time (6% error warm, 18% flushed); it is not singled out, as no rule of what an op
    reads sets it apart from the pointwise ops after GEMMs that ran near their flushed times. A GEMM
    keeps the weight rule (`weight_evicted`): flushed, GEMMs came out at 8% median error, against 6%."""
    return spec.kind != "gemm" and not spec.is_collective


def entry_key(spec: KernelSpec, by_op: bool = False) -> tuple:
    """What one profile entry stands for: a GEMM's shape (any op of that shape shares it), any other
    kernel's op and shape; with `by_op` (in-context timing) every whole kernel's op and shape. In a
    run, which op precedes a kernel sets what it finds in L2: the H100's encoder runs took their Q
    projection 7-12% longer than calibration's time for the shape, K and V of the same shape 0-5%
    (median per run). Split GEMM pieces, timed alone either way, stay keyed by shape."""
    named = spec.kind != "gemm" or (by_op and not spec.is_piece)
    name = spec.name if named else ""
    return (spec.kind, name, *shape_key(spec.kind, spec.dims, name))


# ---------------------------------------------------------------------- timing
GATE_HZ = 2.0e9  # torch.cuda._sleep counts SM cycles: at <= 2 GHz (H100/H200 boost 1.98) a gate lasts >= its seconds
HOST_PER_REP_S = 30e-6  # the flush and two event records around each repetition, on the host


class Timer:
    """Median of repeated timings after warm-up: CUDA events per launch, CUPTI, or perf_counter.

    CUDA events time the stream from one record to the next, which includes the GPU's latency to
    start the kernel after the first event and to record the second: on an H100 a 1,024-element multiply
    measured 4.0 us, and the validation runs' single small kernels (softmax, transposes, small batched GEMMs) ran
    1.5-3 us shorter under CUPTI than the events-timed profile said. `timer="cupti"` times each
    repetition as validation's CUPTI runs time an op (`hw.cupti.rep_times`): its kernels' busy time
    plus the gaps the GPU itself leaves between them."""

    def __init__(self, torch, settings: Settings):
        self.torch, self.s = torch, settings
        self.cuda = settings.device == "cuda"
        self.cupti = self.cuda and settings.timer == "cupti"
        self.last_gaps: list[float] = []  # CUPTI: gaps between the last measurement's repetitions
        self.last_enqueue_s = 0.0  # host time the last gated measurement took to enqueue its calls
        self.l2_bytes = (getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or 0) if self.cuda else 0
        self._flush = None
        self._cold = settings.flush_l2

    def _evict(self) -> None:
        """Flush L2 before a repetition (written over by a buffer twice its size), when cold."""
        if not (self._cold and self.cuda):
            return
        if self._flush is None:
            self._flush = self.torch.empty(2 * (self.l2_bytes or 64 << 20), dtype=self.torch.uint8, device="cuda")
        self._flush.zero_()

    def times(self, fn: Callable[[], None], reps: int | None = None, warmup: int | None = None,
              cold: bool | None = None) -> list[float]:
        """`cold`: flush L2 before each repetition (default: the settings' `flush_l2`)."""
        reps = reps or self.s.reps
        self._cold = self.s.flush_l2 if cold is None else cold
        host = []
        for _ in range(max(2, self.s.warmup if warmup is None else warmup)):
            t0 = time.perf_counter()
            fn()
            host.append(time.perf_counter() - t0)
        if not self.cuda:
            out = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
            return out
        # The GPU is held by a sleeping kernel while the host enqueues every repetition, so the
        # events bracket the kernels alone: a small kernel finishes before Python has dispatched
        # the next one, and ungated events would time the host's dispatch instead (on an H100
        # with torch 2.11 a bias+transpose measured 39-76 us ungated, 16-19 us gated).
        gate_s = reps * (min(host[1:]) + HOST_PER_REP_S) + 200e-6
        return self._gated(fn, reps, gate_s, True, f"{reps} repetitions")

    def _gated(self, fn: Callable[[], None], reps: int, gate_s: float, evict: bool, what: str) -> list[float]:
        """`reps` calls of `fn` queued behind a gate and timed (CUPTI or events); the gate grows
        until the host could enqueue them all inside it."""
        if self.cupti:  # the profiler slows the host's dispatch; each retry costs a profiler session
            gate_s *= 2
        before = None
        for _ in range(4):
            self.torch.cuda.synchronize()
            held, out = (self._cupti_or_events(fn, reps, gate_s, evict) if self.cupti
                         else self._event_reps(fn, reps, gate_s, evict))
            if held:
                break
            # enqueueing lasted the gate and grew with it: the host waited on the GPU (its launch
            # queue holds about a thousand launches, or an op synchronised), which a longer gate only
            # prolongs; a slow host takes as long whatever the gate, and a longer one does hold it
            if before is not None and self.last_enqueue_s >= max(0.9 * gate_s, 2 * before):
                print(f"ligersim: enqueueing {what} waited on the GPU (a full launch queue or a synchronising "
                      "op); these timings include host dispatch", file=sys.stderr)
                break
            before = self.last_enqueue_s
            gate_s *= 4
        else:
            print(f"ligersim: the host could not enqueue {what} inside a {gate_s / 4:.4f} s gate; "
                  "these timings include host dispatch", file=sys.stderr)
        return out

    def each(self, fns: list[Callable[[], None]], passes: int) -> list[list[float]]:
        """Seconds of each of `fns` run in order, `passes` times over (per pass, per fn): one
        sequence queued behind a gate, so the GPU runs it back to back as it would from a fed
        queue, each call timed as `times` times a repetition (CUPTI: its device work; events: a
        pair around it). Nothing is flushed: each call finds the cache the calls before it left,
        as in a run. One untimed pass first warms it up."""
        t0 = time.perf_counter()
        for fn in fns:
            fn()
        pass_s = time.perf_counter() - t0
        if not self.cuda:
            out = []
            for _ in range(passes):
                row = []
                for fn in fns:
                    t0 = time.perf_counter()
                    fn()
                    row.append(time.perf_counter() - t0)
                out.append(row)
            return out
        flat = [fn for _ in range(passes) for fn in fns]
        at = [0]

        def call() -> None:  # each attempt makes exactly len(flat) calls: the cycle stays aligned
            flat[at[0] % len(flat)]()
            at[0] += 1

        gate_s = passes * (pass_s + len(fns) * HOST_PER_REP_S) + 200e-6
        ts = self._gated(call, len(flat), gate_s, False, f"a {len(fns)}-kernel sequence {passes} times")
        return [ts[i * len(fns):(i + 1) * len(fns)] for i in range(passes)]

    def _gate(self, gate_s: float):
        """Hold the GPU for `gate_s` with a sleeping kernel; the returned event says whether it
        still sleeps."""
        self.torch.cuda._sleep(int(gate_s * GATE_HZ))
        opened = self.torch.cuda.Event()
        opened.record()
        return opened

    def _event_reps(self, fn: Callable[[], None], reps: int, gate_s: float,
                    evict: bool = True) -> tuple[bool, list[float]]:
        torch = self.torch
        opened = self._gate(gate_s)
        t0 = time.perf_counter()
        pairs = []
        for _ in range(reps):
            if evict:
                self._evict()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            pairs.append((a, b))
        self.last_enqueue_s = time.perf_counter() - t0
        held = not opened.query()  # still sleeping once everything was enqueued
        torch.cuda.synchronize()
        return held, [a.elapsed_time(b) / 1e3 for a, b in pairs]

    def _cupti_or_events(self, fn: Callable[[], None], reps: int, gate_s: float,
                         evict: bool = True) -> tuple[bool, list[float]]:
        """CUPTI's times, or, where CUPTI saw no device work behind a repetition, events' (with a
        warning: a measurement of nothing would enter the profile as a zero)."""
        try:
            return self._cupti_reps(fn, reps, gate_s, evict)
        except ValueError as e:
            print(f"ligersim: {e}; timing this shape with CUDA events", file=sys.stderr)
            self.torch.cuda.synchronize()
            return self._event_reps(fn, reps, gate_s, evict)

    def _cupti_reps(self, fn: Callable[[], None], reps: int, gate_s: float,
                    evict: bool = True) -> tuple[bool, list[float]]:
        """The repetitions under torch.profiler, each in a `ligersim#i` range (`hw.cupti`)."""
        import tempfile

        from torch.profiler import ProfilerActivity, profile, record_function

        from hw.cupti import TAG, load_trace, rep_times

        torch = self.torch
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            opened = self._gate(gate_s)
            t0 = time.perf_counter()
            for i in range(reps):
                if evict:
                    self._evict()
                with record_function(f"{TAG}{i}"):
                    fn()
            self.last_enqueue_s = time.perf_counter() - t0
            held = not opened.query()
            torch.cuda.synchronize()
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "trace.json"
            prof.export_chrome_trace(str(path))
            out, self.last_gaps = rep_times(load_trace(path), reps)
            return held, out


def stats(ts: list[float]) -> dict:
    a = np.asarray(ts, dtype=float)
    return {"median_s": float(np.median(a)), "p10_s": float(np.percentile(a, 10)),
            "p90_s": float(np.percentile(a, 90)), "reps": int(a.size)}


# ---------------------------------------------------------------------- the run
class Calibration:
    """Measures into `profile`, saving it every few seconds so an interrupted run resumes."""

    def __init__(self, out: Path, settings: Settings, command: str, fresh: bool = False, progress: bool = True):
        self.torch = check_device(settings.device)
        if settings.device == "cpu":  # one thread: no thread-pool wake-ups in tiny kernels' timings
            self.torch.set_num_threads(1)
        self.out, self.s, self.progress = out, settings, progress
        self.timer = Timer(self.torch, settings)
        # contention compares a kernel alone with it beside another, both timed with events
        self.events_timer = Timer(self.torch, dataclasses.replace(settings, timer="events"))
        self.profile = self._start(command, fresh)
        self.done = {entry_key_of(kind, m) for kind, ms in self.profile.kernels.items() for m in ms}
        self._saved = time.monotonic()
        self._op_samples: dict[str, list[float]] = {}

    def _start(self, command: str, fresh: bool) -> Profile:
        device = device_info(self.torch, self.s.device)
        if self.out.exists() and not fresh:
            old = load_profile(self.out)
            if old.device.get("name") != device["name"]:
                raise LigerSimError(f"holds a profile of {old.device.get('name')}, not of this {device['name']}; "
                                    "pass --fresh to overwrite it or choose another -o", file=str(self.out))
            timer = "cupti" if self.s.timer == "cupti" and self.s.device == "cuda" else None
            if timer and old.settings.get("timer") != timer or not timer and old.settings.get("timer") == "cupti":
                raise LigerSimError(f"holds kernels timed with {old.settings.get('timer')}, not {self.s.timer}; "
                                    "pass --fresh to start over or choose another -o", file=str(self.out))
            self._same_rule(old, "evict_weights", self.s.evict_weights, "--warm-weights",
                            ("GEMMs timed with evicted weights", "GEMMs timed without evicted weights"))
            self._same_rule(old, "cold_ops", self.s.cold_ops, "--warm-ops",
                            ("ops timed cold (settings.cold_ops)", "ops timed warm (settings.cold_ops)"))
            if bool(old.settings.get("in_context")) != self.s.in_context and old.kernels:
                was = "inside each job's sequence" if old.settings.get("in_context") else "alone"
                raise LigerSimError(f"holds kernels timed {was} (settings.in_context); pass --fresh to start over, "
                                    f"or {'add' if old.settings.get('in_context') else 'drop'} --in-context to match "
                                    "it", file=str(self.out))
            if self.s.in_context and old.kernels and old.settings.get("entries") != "by_op":
                raise LigerSimError("holds kernels timed in context with one entry per shape (before entries were "
                                    "kept per op: settings.entries); pass --fresh to start over", file=str(self.out))
            old.status, old.command = "partial", command
            old.settings["code"] = code_version()
            return old
        return Profile(device=device, date=time.strftime("%Y-%m-%d"), command=command, status="partial",
                       settings={"warmup": self.s.warmup, "reps": self.s.reps, "flush_l2": self.s.flush_l2,
                                 "quick": self.s.quick, "fractions_of_8": list(self.s.fractions),
                                 "scenarios": [_rel(p) for p in self.s.scenarios] or ["<builtin tiny>"],
                                 "timer": ("cupti" if self.s.timer == "cupti" else "cuda events")
                                 if self.s.device == "cuda" else "perf_counter",
                                 "evict_weights": self.s.evict_weights and self.s.device == "cuda",
                                 "cold_ops": self.s.cold_ops and self.s.device == "cuda",
                                 "in_context": self.s.in_context,
                                 **({"entries": "by_op"} if self.s.in_context else {}),
                                 "l2_bytes": self.timer.l2_bytes,
                                 "profile_version": PROFILE_VERSION, "code": code_version()})

    def _same_rule(self, old: Profile, key: str, on: bool, flag: str, said: tuple[str, str]) -> None:
        """Refuse to resume kernels timed by another L2 rule (`key` in the profile's settings; off
        on the CPU, where there is no L2 to flush)."""
        now = on and self.s.device == "cuda"
        was = bool(old.settings.get(key))
        if was != now and old.kernels:
            hint = f", or drop {flag} to match it" if was else f", or {flag} to match it"
            raise LigerSimError(f"holds {said[0] if was else said[1]}; pass --fresh to start over"
                                f"{hint if not was or self.s.device == 'cuda' else ''}", file=str(self.out))

    def save(self, force: bool = False) -> None:
        if force or time.monotonic() - self._saved > SAVE_EVERY_S:
            save_profile(self.profile, self.out)
            self._saved = time.monotonic()

    def run(self) -> Profile:
        try:
            self.kernels()
            self.host()
            if self.s.device == "cuda":
                self.emulated_collective()
                self.contention()
                self.host_in_situ()
            self.links()
        except KeyboardInterrupt:
            self.save(force=True)
            raise
        self.profile.status = "complete"
        self.save(force=True)
        return self.profile

    def _bar(self, total: int, desc: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="shape", disable=not self.progress, leave=False)

    # ------------------------------------------------------------------ kernels
    def kernels(self) -> None:
        from hw.collectives import NoCollectives
        from hw.kernels import KernelLibrary
        from hw.weights import Shard

        plan: dict[tuple, list[tuple[Target, list[KernelSpec]]]] = {}
        todo = 0
        seen = set(self.done)
        for t in targets(self.s):
            new = []
            for spec in specs_of(t, self.s.fractions):
                k = self._key(spec)
                if k not in seen:
                    seen.add(k)
                    new.append(spec)
            if new:
                plan.setdefault((t.model, t.tp), []).append((t, new))
                todo += len(new)
        gen_plan: dict[tuple, list[tuple[IterShape, list[KernelSpec]]]] = {}
        for sh in gen_targets(self.s):
            new = [spec for spec in sh.specs(self.s.fractions) if self._key(spec) not in seen]
            seen.update(self._key(spec) for spec in new)
            gen_plan.setdefault((sh.model, sh.tp, sh.block), []).append((sh, new))
            todo += len(new)
        dtype_bytes = {m.dtype_bytes for m, _ in plan} | {m.dtype_bytes for m, _, _ in gen_plan}
        with self._bar(todo, "kernels") as bar:
            for (model, tp, _), items in gen_plan.items():
                if any(new for _, new in items):
                    self._iterations(model, tp, items, bar)
            for (model, tp), items in plan.items():
                lib = KernelLibrary(model, Shard(tp, 0), self._dev(), torch_dtype(self.s.device, model.dtype_bytes),
                                    NoCollectives(), shape_of=None, inputs="shared", keep=True)
                if self.s.in_context:  # as `hw run` holds them: the rest of the model passes before a weight returns
                    lib.own_weights(list(range(model.layers)))
                for rid, (t, specs) in enumerate(items):
                    lib.store.shape_of = {rid: (t.batch, t.seq)}.get
                    self._fill(lib, t, rid)
                    st = lib.store.states[rid]
                    self._host_ops([(s.name, partial(lib.ops[s.name], lib, st, Kernel(s, 0, rid, 0)))
                                    for s in prologue_kernels(t.model, t.tp, t.batch, t.seq)
                                    + layer_kernels(t.model, t.tp, t.batch, t.seq)
                                    + epilogue_kernels(t.model, t.tp, t.batch, t.seq)
                                    if s.name in lib.ops and not s.is_collective])
                    if self.s.in_context:
                        specs = self._in_context(lib, t, rid, specs, bar)
                    for spec in specs:
                        k = Kernel(spec, 0, rid, 0)
                        op = lib.ops.get(spec.name)
                        fn = (lambda k=k, lib=lib: lib.generic.run(k)) if spec.kind == "gemm" or op is None else (
                            partial(named_op, op, lib, st, k))
                        self._record(spec, self.timer.times(fn, cold=self._cold(model, tp, spec)))
                        bar.update()
                    lib.store.keep = False
                    lib.store.release(rid, None)
                    lib.store.keep = True
                    lib.generic._scratch.clear()
        self.profile.settings["dtype_bytes"] = sorted(dtype_bytes) or self.profile.settings.get("dtype_bytes", [])
        self._merge_host_ops()

    def _in_context(self, lib, t: Target, rid: int, specs: list[KernelSpec], bar) -> list[KernelSpec]:
        """Time the target's kernels where a run has them: one job's whole sequence (prologue,
        every layer over its own weights, epilogue; collectives left out), run through the
        library's ops in order, so each reads what the ops before it wrote and finds the cache
        they left (`Timer.each`, `context_passes` passes). Returns the specs still to time alone
        (split GEMM pieces, which only a splitting policy launches).

        Why: in the 12 H100 validation runs (CUPTI), the kernels of one shape in one run, other
        layers of the same job, differed from their median by 0.2-1.3% (median per run), and two
        runs of the same shapes in different processes and policies by 1.0-1.1%, while the profile,
        each kernel timed alone under rules of what L2 holds, was off by 3-10%: the runs' kernels
        are reproducible, the isolated protocol is what misses. Each op has its own entries
        (`entry_key(by_op=True)`): an encoder's Q, K and V projections share a shape, not a time."""
        m = t.model
        seq = ([(s, -1) for s in prologue_kernels(m, t.tp, t.batch, t.seq)]
               + [(s, layer) for layer in range(m.layers) for s in layer_kernels(m, t.tp, t.batch, t.seq)]
               + [(s, m.layers - 1) for s in epilogue_kernels(m, t.tp, t.batch, t.seq)])
        seq = [(s, layer) for s, layer in seq if not s.is_collective]
        return self._time_in_context(seq, [partial(lib.run, Kernel(s, 0, rid, layer)) for s, layer in seq],
                                     specs, bar)

    def _iteration_in_context(self, lib, sh: IterShape, index: int, st, specs: list[KernelSpec],
                              bar) -> list[KernelSpec]:
        """`_in_context` for a synthetic generative iteration: its whole sequence over every layer's
        weights and KV pool, each op called as `ligersim hw run` calls it (the residual add the
        down projection leaves pending is folded by the next layer's norm, as in a run), without
        the release at the iteration's end, so the passes can repeat it."""
        m, n_seqs = sh.model, len(sh.prefills) + len(sh.decodes)
        seq = ([(s, -1) for s in prologue_kernels(m, sh.tp, 1, sh.tokens)]
               + [(s, layer) for layer in range(m.layers)
                  for s in iteration_layer(m, sh.tp, list(sh.prefills), list(sh.decodes))]
               + [(s, m.layers - 1) for s in epilogue_kernels(m, sh.tp, n_seqs, 1)])
        seq = [(s, layer) for s, layer in seq if not s.is_collective]
        fns = [partial(run_iteration_kernel, lib, st, Kernel(s, 0, index, layer), fold_each=False) for s, layer in seq]
        return self._time_in_context(seq, fns, specs, bar)

    def _time_in_context(self, seq: list[tuple[KernelSpec, int]], fns: list[Callable[[], None]],
                         specs: list[KernelSpec], bar) -> list[KernelSpec]:
        """Time `fns` (the kernels of `seq`, in order) with `Timer.each` and record the entries of
        `specs` among them, each the median over its kernels, passes and layers; returns the rest."""
        from collections import defaultdict

        want = {self._key(s) for s in specs}
        keys = [self._key(s) for s, _ in seq]
        if not want.intersection(keys):
            return specs
        samples: dict[tuple, list[float]] = defaultdict(list)
        for row in self.timer.each(fns, self.s.context_passes):
            for key, ts in zip(keys, row):
                if key in want:
                    samples[key].append(ts)
        for (s, _), key in zip(seq, keys):
            if key in samples:
                self._record(s, samples.pop(key))
                bar.update()
        return [s for s in specs if self._key(s) not in self.done]

    def _iterations(self, model: ModelShape, tp: int, items: list[tuple[IterShape, list[KernelSpec]]], bar) -> None:
        """Time the new kernels of synthetic generative iterations: each iteration's state (paged
        KV blocks, index tensors) is built as `ligersim hw run` builds it, its layer run once so
        every buffer exists, then each kernel repeated; named ops run through the library, GEMMs
        as plain GEMMs of their shape."""
        from hw.collectives import NoCollectives
        from hw.kernels import KernelLibrary
        from hw.weights import Shard

        comp = SyntheticComposition([sh for sh, _ in items])
        lib = KernelLibrary(model, Shard(tp, 0), self._dev(), torch_dtype(self.s.device, model.dtype_bytes),
                            NoCollectives(), generative=comp)  # type: ignore[arg-type]
        if self.s.in_context:
            lib.own_weights(list(range(model.layers)))
        for i, (sh, new) in enumerate(items):
            if not new:
                continue
            st = lib._gen_state(i)
            layers = {s.name: -1 for s in prologue_kernels(model, tp, 1, sh.tokens)}
            layers.update({s.name: model.layers - 1 for s in epilogue_kernels(model, tp, 1, 1)})
            for spec in sh.specs():
                run_iteration_kernel(lib, st, Kernel(spec, 0, i, layers.get(spec.name, 0)))
            self._host_ops([(spec.name, partial(run_iteration_kernel, lib, st,
                                                Kernel(spec, 0, i, layers.get(spec.name, 0))))
                            for spec in sh.specs() if spec.name in lib.ops])
            if self.s.in_context:
                new = self._iteration_in_context(lib, sh, i, st, new, bar)
            for spec in new:
                k = Kernel(spec, 0, i, layers.get(spec.name, 0))
                fn = partial(lib.generic.run, k) if spec.kind == "gemm" else partial(run_iteration_kernel, lib, st, k)
                self._record(spec, self.timer.times(fn, cold=self._cold(model, tp, spec)))
                bar.update()
            lib._gen_release(st)
        lib.generic._scratch.clear()

    def _host_times(self, calls: list[tuple[str, Callable[[], None]]], reps: int) -> dict[str, list[float]]:
        """Host time of each call (its dispatch: CUDA launches return at once), `reps` passes
        over the calls in order; the GPU work is drained afterwards."""
        out: dict[str, list[float]] = {}
        for _ in range(reps):
            for name, fn in calls:
                t0 = time.perf_counter()
                fn()
                out.setdefault(name, []).append(time.perf_counter() - t0)
        if self.s.device == "cuda":
            self.torch.cuda.synchronize()
        return out

    def _host_ops(self, calls: list[tuple[str, Callable[[], None]]]) -> None:
        """Samples of each named op's host dispatch, a few passes over a layer that has run once."""
        if not self.s.host_ops or not calls:
            return
        for name, ts in self._host_times(calls, self.s.host_op_reps).items():
            self._op_samples.setdefault(name, []).extend(ts)

    def _merge_host_ops(self) -> None:
        """Median host time per op into the profile (names already there are kept: a resumed run)."""
        for name, ts in self._op_samples.items():
            self.profile.host_ops.setdefault(name, float(np.median(ts)))
        self._op_samples.clear()
        self.save(force=True)

    def _cold(self, model: ModelShape, tp: int, spec: KernelSpec) -> bool:
        """Flush L2 before each repetition: everything with `--cold-l2`, else every op but a GEMM
        (`cold_op`) unless `cold_ops` is off, and GEMMs whose weight a run reads from HBM
        (`weight_evicted`) unless `evict_weights` is off."""
        return (self.s.flush_l2 or (self.s.cold_ops and cold_op(spec))
                or (self.s.evict_weights and weight_evicted(model, tp, spec, self.timer.l2_bytes)))

    def _fill(self, lib, t: Target, rid: int) -> None:
        """Run the job's first layer once so every buffer a named op reads exists."""
        m = t.model
        specs = prologue_kernels(m, t.tp, t.batch, t.seq) + layer_kernels(m, t.tp, t.batch, t.seq)
        for spec in specs:
            lib.run(Kernel(spec, 0, rid, 0))
        st = lib.store.states[rid]
        for spec in epilogue_kernels(m, t.tp, t.batch, t.seq):  # direct: lib.run would release the state
            lib.ops[spec.name](lib, st, Kernel(spec, 0, rid, m.layers - 1))

    def _key(self, spec: KernelSpec) -> tuple:
        return entry_key(spec, self.s.in_context)

    def _record(self, spec: KernelSpec, ts: list[float]) -> None:
        key = self._key(spec)
        dims = {k: v for k, v in spec.dims.items() if k not in ("n0", "n_full")}
        self.profile.kernels.setdefault(spec.kind, []).append(
            Measurement(dims, name=key[1], flops=spec.flops, bytes=spec.bytes, **stats(ts)))
        self.done.add(key)
        self.save()

    def _dev(self) -> str:
        return "cpu" if self.s.device == "cpu" else f"cuda:{self.torch.cuda.current_device()}"

    # ------------------------------------------------------------------ host
    def host(self) -> None:
        cuda = self.s.device == "cuda"
        if {"launch_s", "sync_wakeup_s"} <= set(self.profile.host):  # resumed: what a profile from before lacks
            added = {**({"event_pair_gpu_s": self._event_pair()} if cuda and "event_pair_gpu_s" not in self.profile.host
                        else {}),
                     **({"sync_call_s": self._sync_call()} if "sync_call_s" not in self.profile.host else {})}
            if added:
                self.profile.host.update(added)
                self.save(force=True)
            return
        from hw.collectives import NoCollectives
        from hw.kernels import GenericKernels
        from hw.runtime import TorchRuntime
        from sim.kernels import pointwise

        gen = GenericKernels(self._dev(), torch_dtype(self.s.device, 2), NoCollectives())
        k = Kernel(pointwise("elementwise", "tiny", 1024, 1, 1, 0.0), 0)
        kernel_s = float(np.median(self.timer.times(lambda: gen.run(k), reps=50)))
        gaps = self.timer.last_gaps if self.timer.cupti else []  # back-to-back tiny kernels
        generic_host = self._host_times([("tiny", lambda: gen.run(k))], 50)["tiny"]
        n = 200
        per_launch, per_record = [], []
        for _ in range(5):
            rt = TorchRuntime(0, 1, lambda _k: 0.0, gen, "cpu" if self.s.device == "cpu" else "cuda")
            sid = rt.new_stream(0)
            t0 = time.perf_counter()
            for _ in range(n):
                rt.launch(Kernel(k.spec, 0), sid)
            t1 = time.perf_counter()
            for e in range(n):
                rt.record(e, sid)
            per_launch.append((t1 - t0) / n)
            per_record.append((time.perf_counter() - t1) / n)
            rt.finish()
        launch = float(np.median(per_launch))
        if self.s.device == "cpu":  # the kernel ran on the host inside each launch
            launch = max(0.0, launch - kernel_s)
        generic_op = float(np.median(generic_host)) if self.s.device == "cuda" else 0.0
        self.profile.host = {"launch_s": launch, "record_s": float(np.median(per_record)),
                             "sync_wakeup_s": self._wakeup(), "sync_call_s": self._sync_call(),
                             "tiny_kernel_s": kernel_s,
                             **({"kernel_gap_s": float(np.median(gaps))} if gaps else {}),
                             **({"event_pair_gpu_s": self._event_pair()} if cuda else {}),
                             # the runtime's own work per launch, beside the op's dispatch (host_ops)
                             "generic_op_s": generic_op, "runtime_s": max(0.0, launch - generic_op)}
        self.save(force=True)

    def _event_pair(self, n: int = 200, passes: int = 5) -> float:
        """GPU seconds that a pair of timing events adds to each queued op in a run timed with CUDA
        events (`TorchRuntime` records one before and one after each op): `n` tiny kernels queued
        behind a gate, timed end to end with and without a pair around each; the difference per
        kernel, median of `passes`. In the H100 validation runs, queued ops lasted 3.1-4.5 us longer
        (median) in the events-timed run than the same ops in the CUPTI-timed one."""
        torch = self.torch
        x = torch.zeros(1024, device="cuda", dtype=torch.float16)

        def per_kernel(pairs: bool) -> float:
            gate_s = 0.02
            for _ in range(4):
                torch.cuda.synchronize()
                opened = self.timer._gate(gate_s)
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                for _ in range(n):
                    if pairs:
                        torch.cuda.Event(enable_timing=True).record()
                    x.add_(1.0)
                    if pairs:
                        torch.cuda.Event(enable_timing=True).record()
                b.record()
                held = not opened.query()
                torch.cuda.synchronize()
                if held:
                    break
                gate_s *= 4
            return a.elapsed_time(b) / 1e3 / n

        return max(0.0, float(np.median([per_kernel(True) - per_kernel(False) for _ in range(passes)])))

    def _sync_call(self, n: int = 200, passes: int = 5) -> float:
        """Host seconds of a sync on an event the GPU has already passed, as a run's IR stamps it
        (issue to return, through the policy driver): the simulator charges it to such syncs, and
        `sync_wakeup_s` to those that wait. In the H100 runs of an interleaved policy, 95% of the
        syncs returned in 6-10 us; the simulator had charged them nothing. Median of `passes`."""
        from hw.collectives import NoCollectives
        from hw.kernels import GenericKernels
        from hw.runtime import TorchRuntime, drive

        gen = GenericKernels(self._dev(), torch_dtype(self.s.device, 2), NoCollectives())
        per = []
        for _ in range(passes):
            ops: list = []
            rt = TorchRuntime(0, 1, lambda _k: 0.0, gen, "cpu" if self.s.device == "cpu" else "cuda", ops=ops)
            sid = rt.new_stream(0)
            for e in range(n):
                rt.record(e, sid)
            if self.s.device == "cuda":
                self.torch.cuda.synchronize()

            def syncs(rt=rt):
                for e in range(n):
                    yield rt.sync(e)

            drive(syncs(), rt)
            per.append(float(np.median([op.done - op.t for op in ops if op.op == "sync"])))
        return max(0.0, float(np.median(per)))

    def _wakeup(self) -> float:
        """Host resume time minus the event's completion, both on the hw runtime's clock
        (host time of an origin event + GPU time since it)."""
        if self.s.device == "cpu":
            return 0.0
        torch = self.torch
        out = []
        for _ in range(20):
            torch.cuda.synchronize()
            origin, ev = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            h0 = time.perf_counter()
            origin.record()
            torch.cuda._sleep(2_000_000)  # ~1 ms of GPU cycles
            ev.record()
            ev.synchronize()
            h1 = time.perf_counter()
            out.append(h1 - (h0 + origin.elapsed_time(ev) / 1e3))
        return max(0.0, float(np.median(out)))

    def host_in_situ(self) -> None:
        """Host time per operation inside short `hw run`s of each scenario's policy
        (`hw.host_in_situ`): each scenario's own entry (those already in the profile are kept: a
        resumed run), then each policy's, pooled from its scenarios' entries (`pool`)."""
        import yaml

        from hw.host_in_situ import measure, own_key, pool
        from sim.profile import host_key_of

        docs = {p: yaml.safe_load(Path(p).read_text()) or {} for p in self.s.scenarios}
        todo = [p for p in self.s.scenarios if own_key(docs[p], p) not in self.profile.host_in_situ]
        if todo:
            print(f"host in situ: {len(todo)} short runs", file=sys.stderr)
            with self._bar(len(todo), "host in situ") as bar:
                def keep(k: str, entry: dict) -> None:  # each run's own entry survives a time limit
                    self.profile.host_in_situ[k] = entry
                    self.save(force=True)
                    bar.update()

                measure(todo, self.s.device, jobs=self.s.in_situ_jobs, on_run=keep)
        by_policy: dict[str, list[dict]] = {}
        for p, d in docs.items():
            entry = self.profile.host_in_situ.get(own_key(d, p))
            if entry is not None:
                by_policy.setdefault(host_key_of(d), []).append(entry)
        for pol, entries in by_policy.items():
            self.profile.host_in_situ[pol] = pool(entries)
        self.save(force=True)

    # ------------------------------------------------------------------ emulated collective
    def emulated_collective(self) -> None:
        from hw import spin
        from hw.collectives import EmulatedCollectives
        from sim.links import build_topology
        from sim.scenario import load_scenario

        if not spin.HAVE_TRITON:
            print("ligersim: Triton missing; skipping the emulated collective", file=sys.stderr)
            return
        done = {(e["interconnect"], e["n"], e["nbytes"]) for e in self.profile.emulated_collective}
        todo = []
        for path in self.s.scenarios:
            scn, _ = load_scenario(path)
            if scn.tp() < 2:
                continue
            ic = scn.hardware.interconnect
            grid = {t.batch * t.seq * t.model.hidden * t.model.dtype_bytes for t in targets(
                Settings(**{**self.s.__dict__, "scenarios": [path]}))}
            for nbytes in sorted(grid):
                key = (ic.name, scn.tp(), nbytes)
                if key not in done:
                    done.add(key)
                    todo.append((key, build_topology(ic.model_dump(), scn.hardware.count)))
        torch = self.torch
        with self._bar(len(todo), "emulated collective") as bar:
            for (ic, n, nbytes), topo in todo:
                comm = EmulatedCollectives(0, topo, device=self._dev())
                buf = torch.zeros(nbytes // 2, dtype=torch.float16, device=self._dev())
                group = tuple(range(n))
                ts = self.timer.times(lambda: comm.all_reduce(buf, group))  # noqa: B023
                self._host_ops([("all_reduce", lambda: comm.all_reduce(buf, group))])  # noqa: B023
                ctas, copy, target = comm.launched[-1]
                self.profile.emulated_collective.append({"interconnect": ic, "n": n, "nbytes": nbytes,
                                                         "target_s": target, "ctas": ctas, **stats(ts)})
                bar.update()
                self.save()
        self._merge_host_ops()

    # ------------------------------------------------------------------ contention
    def contention(self) -> None:
        classes = contention_kernels(self.torch, self._dev(), self.s.quick)
        sizes = ["small"] if self.s.quick else ["small", "large"]
        rels = ("higher", "lower") if self.s.quick else ("higher", "lower", "equal")
        meas = self.profile.contention.setdefault("measurements", [])
        done = {(m["victim"], m["other"], m["priority"], m["first"], m["size"]) for m in meas}
        todo = [(v, o, p, f, z) for z in sizes for v in classes for o in classes for p in rels
                for f in ("victim", "other") if (v, o, p, f, z) not in done]
        solo: dict[tuple[str, str], float] = {}
        with self._bar(len(todo), "contention") as bar:
            for v, o, p, first, size in todo:
                for c in (v, o):
                    if (c, size) not in solo:
                        solo[(c, size)] = float(np.median(self.events_timer.times(classes[c][size], reps=10)))
                together = self._together(classes[v][size], classes[o][size], solo[(v, size)], solo[(o, size)], p,
                                          first)
                meas.append({"victim": v, "other": o, "priority": p, "first": first, "size": size,
                             "solo_s": solo[(v, size)], "together_s": together,
                             "slowdown": together / solo[(v, size)]})
                bar.update()
                self.save()
        self.profile.contention["table"] = contention_table(meas)

    def _together(self, victim, other, t_v: float, t_o: float, prio: str, first: str) -> float:
        """Median time of `victim` while `other` runs on a second stream, repeated to cover it."""
        torch = self.torch
        pv, po = {"higher": (HIGH, LOW), "lower": (LOW, HIGH), "equal": (LOW, LOW)}[prio]
        sv, so = torch.cuda.Stream(priority=pv), torch.cuda.Stream(priority=po)
        repeat = max(1, min(1000, math.ceil(1.5 * t_v / max(t_o, 1e-7)) + 1))
        out = []
        for _ in range(5 if self.s.quick else 9):
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

            def run_victim(a=a, b=b):
                with torch.cuda.stream(sv):
                    a.record(sv)
                    victim()
                    b.record(sv)

            def run_other():
                with torch.cuda.stream(so):
                    for _ in range(repeat):
                        other()

            if first == "victim":
                run_victim()
                run_other()
            else:
                run_other()
                run_victim()
            torch.cuda.synchronize()
            out.append(a.elapsed_time(b) / 1e3)
        return float(np.median(out))

    # ------------------------------------------------------------------ links
    def links(self) -> None:
        nccl = REPO / "profiles" / "nccl"
        if nccl.is_dir():
            self.profile.links = links_section(nccl)
            self.profile.links["source"] = "profiles/nccl"


def entry_key_of(kind: str, m: Measurement) -> tuple:
    return (kind, m.name, *shape_key(kind, m.dims, m.name))


def contention_kernels(torch, device: str, quick: bool) -> dict[str, dict[str, Callable[[], None]]]:
    """One representative kernel per contention class, at a small (~0.1 ms) and a large
    (~1 ms on an H100) size."""
    import torch.nn.functional as F

    from hw import spin

    h = torch.float16
    out: dict[str, dict[str, Callable[[], None]]] = {}

    def mm(m, n, k):
        a, b, c = (torch.randn(m, k, device=device, dtype=h), torch.randn(k, n, device=device, dtype=h),
                   torch.empty(m, n, device=device, dtype=h))
        return lambda: torch.mm(a, b, out=c)

    def add(elems):
        x, y = torch.randn(elems, device=device, dtype=h), torch.empty(elems, device=device, dtype=h)
        return lambda: torch.add(x, 1.0, out=y)

    def attn(b):
        q = torch.randn(b, 32, 1024, 128, device=device, dtype=h)
        return lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True)

    def coll(nbytes, duration):
        src = torch.zeros(nbytes // 4, dtype=torch.int32, device=device)
        dst = torch.empty_like(src)
        return lambda: spin.launch(src, dst, 16, duration)

    def d2h(nbytes):
        x = torch.empty(nbytes, dtype=torch.uint8, device=device)
        y = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        return lambda: y.copy_(x, non_blocking=True)

    out["gemm"] = {"small": mm(4096, 4096, 2048), "large": mm(8192, 8192, 4096)}
    out["memory"] = {"small": add(32 << 20), "large": add(256 << 20)}
    out["attention"] = {"small": attn(1), "large": attn(8)}
    if spin.HAVE_TRITON:
        out["collective"] = {"small": coll(8 << 20, 100e-6), "large": coll(64 << 20, 1e-3)}
    out["copy"] = {"small": d2h(8 << 20), "large": d2h(64 << 20)}
    if quick:
        out = {c: {"small": v["small"]} for c, v in out.items()}
    return out


def device_info(torch, device: str) -> dict:
    import platform

    if device == "cpu":
        return {"name": f"cpu ({platform.processor() or platform.machine()})", "backend": "cpu", "sms": None,
                "threads": torch.get_num_threads(), "torch": str(torch.__version__), "driver": None, "cuda": None}
    from hw.launch import _driver_version

    p = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {"name": p.name, "backend": "cuda", "sms": p.multi_processor_count, "memory": p.total_memory,
            "capability": f"{p.major}.{p.minor}", "driver": _driver_version(), "cuda": str(torch.version.cuda),
            "torch": str(torch.__version__)}


def _rel(p: str) -> str:
    try:
        return str(Path(p).resolve().relative_to(REPO))
    except ValueError:
        return str(p)


def calibrate(out: str | Path, device: str = "cuda", quick: bool = False, scenarios: list[str] | None = None,
              fresh: bool = False, command: str | None = None, progress: bool = True,
              cold_l2: bool = False, timer: str = "events", evict_weights: bool = True,
              in_situ_jobs: int | None = None, cold_ops: bool = True, in_context: bool = False) -> Profile:
    """Measure and write `out`; returns the profile. Re-running resumes an interrupted run.

    GEMMs are timed warm, as in `ligersim hw run` a GEMM reads the activation the op before it just
    wrote, unless their weight is evicted in a run (`evict_weights`, the default: `weight_evicted`);
    every other op is timed with L2 flushed before each repetition (`cold_ops`, the default:
    `cold_op` says why). `cold_l2` flushes L2 before every repetition of everything. (With CUDA
    events and everything flushed, an earlier H100 profile gave the small-kernel scenarios 26-64%
    median kernel error, everything warm 6-22%; with CUPTI timing, the split is better than either.)

    `timer` "cupti" times kernels as validation's CUPTI runs do (`Timer` says why it matters for
    kernels of a few microseconds); "events" (the default) needs no profiler. `evict_weights` (the
    default) times a GEMM cold when a run reads its weight from HBM (`weight_evicted`).
    `in_situ_jobs`: jobs per scenario in the in-situ host runs (more: less noise, longer).
    `in_context`: encoder, prefill and generative-iteration kernels are timed inside one job's (or
    iteration's) whole sequence instead (`Calibration._in_context`); split GEMM pieces keep the
    rules above."""
    if timer not in ("events", "cupti"):
        raise LigerSimError(f"--timer {timer!r}: expected events or cupti")
    if in_situ_jobs is not None and in_situ_jobs < 1:
        raise LigerSimError(f"must be at least 1 (got {in_situ_jobs})", field="--in-situ-jobs")
    settings = Settings.make(device, quick, scenarios)
    settings.timer, settings.evict_weights, settings.cold_ops = timer, evict_weights, cold_ops
    settings.in_context = in_context
    if in_situ_jobs is not None:
        settings.in_situ_jobs = in_situ_jobs
    if cold_l2 is False:
        settings.flush_l2 = False
    cmd = command or "ligersim " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return Calibration(Path(out), settings, cmd, fresh, progress).run()
