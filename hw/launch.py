"""Processes and ranks: one rank in this process, several spawned, or torchrun's.

Modes, chosen from the plan's rank count and the device:
- single: one rank, no torch.distributed;
- spawn: one process per rank (gloo on CPU, NCCL when there are enough GPUs), started
  with torch.multiprocessing and a file:// rendezvous;
- torchrun: this process is one rank of a job started by torchrun (RANK/WORLD_SIZE set);
- emulate: one GPU runs rank 0 of a symmetric tensor-parallel group, collectives
  emulated (`hw.collectives.EmulatedCollectives`).
All ranks share one wall-clock origin; rank 0 gathers rows and IR and writes the outputs.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hw.collectives import Collectives, DistCollectives, EmulatedCollectives, NoCollectives
from hw.kernels import KernelLibrary
from hw.memory import host_available_bytes, host_bytes_needed, host_oom_message, oom_message
from hw.run import Options, Plan, RankResult, Source, build_plan, write_outputs
from hw.runtime import TorchRuntime, drive
from hw.torchenv import torch_dtype
from hw.warm import warm_ops, warm_up
from hw.weights import Shard
from sim.errors import LigerSimError
from sim.ir import Schedule
from sim.provenance import code_version


def choose_mode(world: int, opts: Options) -> str:
    if opts.device == "cpu":
        if opts.emulate:
            raise LigerSimError("the emulated collective needs a CUDA GPU; drop --emulate or use --device cuda")
        return "single" if world == 1 else "spawn"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "torchrun"
    if world == 1:
        return "single"
    if opts.emulate or (opts.emulate is None and torch.cuda.device_count() < world):
        return "emulate"
    return "spawn"


def execute(plan: Plan, src: Source, out: Path, opts: Options) -> dict:
    mode = choose_mode(plan.world, opts)
    if (mode in ("spawn", "torchrun") and plan.generative and plan.schedule is None
            and plan.policy_name in ("inter_op", "hybrid")):
        raise LigerSimError(
            f"`hw run` of a generative {plan.policy_name} scenario needs one process: its later pipeline stages "
            "follow the first stage's batching decisions through memory the simulator's policy shares inside one "
            "process (sim.policies.generative); record the schedule with `ligersim run` and execute it with "
            "`ligersim hw replay`, or run rank 0 alone with --emulate on a GPU")
    if mode == "torchrun":
        world = int(os.environ["WORLD_SIZE"])
        if world != plan.world:
            raise LigerSimError(f"torchrun started {world} processes but the scenario has {plan.world} ranks")
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        if local != world:  # rank 0's time.perf_counter() (CLOCK_MONOTONIC) is every rank's zero: one host's
            raise LigerSimError(f"torchrun started {world} processes over several hosts ({local} on this one); "
                                "`hw run` times every rank against one host's clock, so its ranks must share a "
                                "host (simulate multi-node scenarios with `ligersim run`)")
        summary = _rank_main(int(os.environ["RANK"]), world, src, out, opts, "env://", None)
        return summary or {}
    if opts.device == "cpu":
        _check_host_memory(plan, mode)
    if opts.host_probe_jobs and mode in ("spawn", "torchrun"):  # each rank is a process of its own
        print(f"ligersim: no host probe: a {mode} run has one process per rank (run rank 0 alone with --emulate "
              "on a GPU to probe it)", file=sys.stderr)
    if mode == "spawn":
        return _spawn(plan.world, src, out, opts, plan if opts.device == "cpu" else None)
    comm: Collectives = NoCollectives()
    if mode == "emulate":
        comm = EmulatedCollectives(0, plan.topology, opts.channels)
    with _oom_guard(plan, opts):
        lib = _setup(plan, 0, opts, comm)
        probe = host_probe(src, opts, lib)
        if isinstance(comm, EmulatedCollectives):
            comm.launched.clear()  # the probe's
        result = _run(plan, 0, opts, lib, time.perf_counter())
    info = _info(plan, opts, mode)
    if probe is not None:
        info["host_in_process"] = probe
    if isinstance(comm, EmulatedCollectives):
        info["emulated_collectives"] = {"channels": opts.channels, "launches": len(comm.launched),
                                        "ctas_max": max((c for c, _, _ in comm.launched), default=0)}
    return write_outputs(plan, [result], out, opts, info)


# ---------------------------------------------------------------------- one rank
def rank_layers(plan: Plan, rank: int) -> list[int]:
    """The layers whose kernels `rank` runs: a recorded schedule's, else its pipeline stage's."""
    if plan.schedule is not None:
        return sorted({op.kernel.layer for op in plan.schedule.by_rank()[rank]
                       if op.kernel is not None and op.kernel.layer >= 0})
    return plan.kv_layers(rank)


def _setup(plan: Plan, rank: int, opts: Options, comm: Collectives) -> KernelLibrary:
    m = plan.scenario.model.shape()
    device = opts.device if opts.device == "cpu" else f"cuda:{torch.cuda.current_device()}"
    lib = KernelLibrary(m, Shard(plan.tp, rank % plan.tp), device, torch_dtype(opts.device, m.dtype_bytes), comm,
                        seed=plan.scenario.seed, shape_of=plan.shapes.get,
                        inputs="per_request" if opts.device == "cpu" else "shared",
                        generative=plan.composition, collect_logits=opts.logits)
    lib.own_weights(rank_layers(plan, rank))
    if plan.generative:
        lib.kv.reserve(plan.kv_layers(rank))
    if opts.device != "cpu":
        warm_up(plan, rank, lib)
        warm_ops(plan, rank, lib)
        # PyTorch creates a device's pools of streams (32 per priority) at its first pool stream; in
        # the H100 runs the policy's first stream was declared 3.2-5.1 ms after the clock started
        # (the second 40 us later), a delay of the first job the simulator does not have
        torch.cuda.Stream(priority=0)
    _freeze_heap()
    return lib


def _freeze_heap() -> None:
    """Before the clock: a full collection in a fresh process with torch loaded takes tens of ms,
    and `quiet_gc` keeps what exists now out of later ones."""
    gc.collect()
    gc.freeze()


def host_probe(src: Source, opts: Options, lib: KernelLibrary) -> dict | None:
    """Host cost per op of this process, measured before the clock on the scenario's first
    `opts.host_probe_jobs` jobs (at their arrival times), as `hw.host_in_situ` summarises a run;
    None when not asked for, or when kernels are timed with CUPTI (whose profiler slows the host).

    Why in this process: the executor is host-bound, and on the H100 the same scenario's host
    time per op differed by up to 1.7x between processes minutes apart (calibration's in-situ
    runs against the validation runs: 0.87-1.38x, steady through most runs), more than the
    floors validation checks. The probe's jobs are the run's own first jobs, so their shapes are
    warm; the measured run starts afresh after it (its own policy, clock and IR)."""
    if not opts.host_probe_jobs or src.kind != "scenario" or (opts.device != "cpu" and opts.timing == "cupti"):
        return None
    from hw.host_in_situ import summarise
    from sim.host_gaps import blocking_costs, op_costs, op_costs_by

    n = opts.host_probe_jobs if src.jobs is None else min(opts.host_probe_jobs, src.jobs)
    probe = build_plan(Source("scenario", src.path, n))  # jobs the run has: their shapes are its own
    saved = lib.gen
    if probe.generative:
        lib.gen = probe.composition  # its iterations, numbered from 0 as the run's will be again
    try:
        result = _run(probe, 0, opts, lib, time.perf_counter())
    finally:
        lib.gen = saved
    if result.info.get("interrupted"):
        raise KeyboardInterrupt
    schedule = Schedule(probe.world, result.ops, {})
    n = len(probe.jobs or [])  # the workload may have fewer
    entry = {**summarise(op_costs(schedule), [f"this process, its first {n} jobs before the clock"],
                         op_costs_by(schedule), blocking_costs(schedule)), "jobs": n}
    _freeze_heap()  # `_run` unfroze it; as `_setup` left it
    return entry


def _run(plan: Plan, rank: int, opts: Options, lib: KernelLibrary, t0: float, agree=None) -> RankResult:
    ops: list = []
    rt = TorchRuntime(rank, plan.world, plan.solo, lib, "cpu" if opts.device == "cpu" else "cuda", t0, ops, agree,
                      timing=opts.timing)
    wall = time.perf_counter()
    with quiet_gc():
        completed = drive(plan.policies[rank](rt), rt)
    rows = rt.rows()
    info = {"rank": rank, "wall_s": time.perf_counter() - wall, "activation_bytes": lib.pool.allocated_bytes}
    if not completed:
        info["interrupted"] = True
    logits = None
    if plan.generative:
        kv = lib.kv
        info["kv_cache"] = {"block_tokens": kv.block, "blocks": kv.blocks, "layers": sorted(kv.pools),
                            "bytes": kv.bytes_per_layer * len(kv.pools), "grown": kv.grown,
                            "blocks_in_use_at_end": kv.used_blocks()}
        if opts.logits:
            logits = lib.collected_logits()
    if opts.device != "cpu":
        info["max_memory_allocated"] = torch.cuda.max_memory_allocated()
    return RankResult(rank, rows, ops, info, logits, rt.cupti_kernels())


@contextmanager
def quiet_gc():
    """No cyclic garbage collection while the clock runs. A collection of the older generations
    walks every live object (the growing IR, the rows), a pause of milliseconds at moments the
    simulator cannot know; benchmark harnesses and serving engines freeze the heap built at
    start-up for the same reason (`_setup` collects and freezes before the clock starts).
    Reference counting still frees nearly everything."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
        gc.unfreeze()


class _oom_guard:
    """Turns a CUDA out-of-memory error into a LigerSimError saying what the scenario needs."""

    def __init__(self, plan: Plan, opts: Options):
        self.plan, self.opts = plan, opts

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ, exc, tb) -> bool:
        if typ is not None and issubclass(typ, torch.cuda.OutOfMemoryError):
            try:
                free, total = torch.cuda.mem_get_info()
                name = torch.cuda.get_device_name()
            except (RuntimeError, AssertionError):  # the error came from elsewhere: no device to ask
                free, total, name = 0.0, 0.0, "the GPU"
            b, s = self.plan.max_shape
            m = self.plan.scenario.model.shape()
            kv = max(_kv_bytes(self.plan, r, m.dtype_bytes) for r in range(self.plan.world))
            held = max(len(rank_layers(self.plan, r)) for r in range(self.plan.world))  # layers' weights
            raise LigerSimError(oom_message(m, self.plan.tp, b, s, name, total, free, kv, held)) from None
        return False


def _kv_bytes(plan: Plan, rank: int, dtype_bytes: int) -> float:
    """A generative rank's KV pools: its layers', at the simulator's capacity (0 otherwise)."""
    if not plan.generative:
        return 0.0
    m = plan.scenario.model.shape()
    return (plan.composition.capacity_tokens * len(plan.kv_layers(rank)) * 2 * max(1, m.kv_heads // plan.tp)
            * m.head_dim * dtype_bytes)


def _host_need(plan: Plan, mode: str) -> float:
    """Host memory of a CPU run: one process per rank when spawned, else rank 0 alone."""
    ranks = range(plan.world) if mode == "spawn" else range(1)
    b, s = plan.max_shape
    return sum(host_bytes_needed(plan.scenario.model.shape(), plan.tp, b, s, len(rank_layers(plan, r)),
                                 _kv_bytes(plan, r, 4)) for r in ranks)


def _check_host_memory(plan: Plan, mode: str) -> None:
    """Refuse a CPU run that cannot fit in this machine's memory before starting it: otherwise the
    OS kills a rank part-way (on the 23 GB development machine, the 4-rank encoder validation
    scenario needed ~58 GB) and the run dies with a signal instead of a reason."""
    available = host_available_bytes()
    need = _host_need(plan, mode)
    if available is not None and need > available:
        raise LigerSimError(host_oom_message(plan.scenario.model.shape(), plan.tp,
                                             plan.world if mode == "spawn" else 1, need, available))


def killed_rank_message(e: mp.ProcessExitedException, plan: Plan | None) -> str:
    """Why a spawned rank vanished, in words: a SIGKILL is most often the OS's out-of-memory killer.
    `plan` is given for a CPU run, whose ranks hold their weights in this machine's memory."""
    how = f"was killed by {e.signal_name}" if e.signal_name else f"exited with code {e.exit_code}"
    msg = f"rank {e.error_index} (pid {e.error_pid}) {how} before the run finished"
    if e.signal_name == "SIGKILL":
        msg += ", most likely by the operating system for lack of memory"
        if plan is not None:
            avail = host_available_bytes()
            msg += (f" (this CPU run needs about {_host_need(plan, 'spawn') / 1e9:.1f} GB"
                    + (f"; {avail / 1e9:.1f} GB is available now" if avail is not None else "") + "); run it on "
                    "a GPU (rank 0 alone with --emulate), or with fewer layers or a smaller model")
    return msg


def _info(plan: Plan, opts: Options, mode: str) -> dict:
    info = {"backend": "hw", "mode": mode, "device": opts.device, "torch": torch.__version__,
            "world": plan.world, "tp": plan.tp, "executed_ranks": 1 if mode in ("single", "emulate") else plan.world,
            "timing": opts.timing if opts.device != "cpu" else "host", "code": code_version(),
            "weights": "per layer"}  # runs before this key shared one layer's weights (`own_weights`)
    if opts.device != "cpu":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info.update(gpu=props.name, gpu_memory=props.total_memory, sms=props.multi_processor_count,
                    cuda=torch.version.cuda, driver=_driver_version())
    return info


def _driver_version() -> str | None:
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


# ---------------------------------------------------------------------- several processes
def _agree(group):
    """now() for clock-decided policies: every rank takes rank 0's reading (a gloo broadcast)."""
    buf = torch.zeros(1, dtype=torch.float64)

    def agree(t: float) -> float:
        buf[0] = t
        dist.broadcast(buf, src=0, group=group)
        return float(buf[0])

    return agree


def _spawn(world: int, src: Source, out: Path, opts: Options, plan: Plan | None = None) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    with tempfile.TemporaryDirectory(prefix="ligersim-rdzv-") as tmp:
        init = f"file://{tmp}/rendezvous"
        try:
            ranks = mp.spawn(_spawned, args=(world, src, out, opts, init, queue), nprocs=world, join=False)
            try:
                while not ranks.join():
                    pass
            except KeyboardInterrupt:
                _stop(ranks.processes)
                print("ligersim: interrupted; a run of several processes writes nothing: its ranks would have to "
                      "agree on a point to stop (a one-process run keeps the jobs it completed)", file=sys.stderr)
                raise
        except mp.ProcessRaisedException as e:
            for kind, msg in _drain(queue):
                if kind == "error":
                    raise LigerSimError(msg) from None
            raise RuntimeError(f"a rank failed:\n{e}") from None
        except mp.ProcessExitedException as e:
            raise LigerSimError(killed_rank_message(e, plan)) from None
    for kind, msg in _drain(queue):
        if kind == "error":
            raise LigerSimError(msg)
        if kind == "summary":
            return msg  # type: ignore[return-value]
    raise RuntimeError("rank 0 finished without a summary")


def _stop(processes, grace_s: float = 5.0) -> None:
    """End the ranks of an interrupted run: each may be blocked in a collective that a rank which
    stopped elsewhere will never join, so they cannot finish by themselves."""
    for p in processes:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def _drain(queue) -> list[tuple[str, object]]:
    items = []
    while not queue.empty():
        items.append(queue.get())
    return items


def _spawned(rank: int, world: int, src: Source, out: Path, opts: Options, init: str, queue) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (`_spawn`)
    if opts.device == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    _rank_main(rank, world, src, out, opts, init, queue)


def _rank_main(rank: int, world: int, src: Source, out: Path, opts: Options, init: str, queue) -> dict | None:
    """One rank of a multi-process run: set up, start together, run, gather on rank 0."""
    backend = "gloo" if opts.device == "cpu" else "nccl"
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend, init_method=init, rank=rank, world_size=world,
                            timeout=timedelta(seconds=opts.timeout_s))
    try:
        objects = dist.new_group(backend="gloo") if backend == "nccl" else None
        plan = build_plan(src)
        with _oom_guard(plan, opts):
            lib = _setup(plan, rank, opts, DistCollectives(rank, world))
            dist.barrier()
            t0 = [time.perf_counter()]  # CLOCK_MONOTONIC: one clock for all processes of a host
            dist.broadcast_object_list(t0, src=0, group=objects)
            agree = _agree(objects) if plan.schedule is None and plan.clock_decided else None
            result = _run(plan, rank, opts, lib, t0[0], agree)
        if result.info.get("interrupted"):  # torchrun's Ctrl-C: the other ranks stopped elsewhere, so no
            raise KeyboardInterrupt  # gather would complete; exiting lets torchrun end the job
        gathered: list | None = [None] * world if rank == 0 else None
        dist.gather_object(result, gathered, dst=0, group=objects)
        summary = None
        if rank == 0:
            assert gathered is not None
            summary = write_outputs(plan, gathered, out, opts, _info(plan, opts, "spawn" if queue else "torchrun"))
            if queue is not None:
                queue.put(("summary", summary))
        dist.barrier(group=objects)
        return summary
    except LigerSimError as e:
        if queue is not None:
            queue.put(("error", str(e)))
        raise
    except Exception:
        if queue is not None:
            queue.put(("crash", traceback.format_exc()))
        raise
    finally:
        dist.destroy_process_group()
