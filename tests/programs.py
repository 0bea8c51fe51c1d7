"""Random host programs for property tests of the engine: kernels on random streams,
events recorded and waited on, host syncs and sleeps, and collectives over all ranks.

Every rank runs the same sequence of operations (as tensor-parallel ranks do) but its
kernels last different times, so collectives see ranks arrive at different moments.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from sim.contention import ContentionTable
from sim.engine import Engine, HostParams
from sim.kernels import Kernel, KernelSpec, collective
from sim.links import build_topology
from sim.presets import CONTENTION, INTERCONNECTS
from sim.runtime import PolicyGen, Runtime

CLASS_KIND = {"compute": "gemm", "memory": "elementwise", "copy": "copy"}


@dataclass(frozen=True)
class Prog:
    world: int
    priorities: tuple[int, ...]
    ops: tuple[tuple, ...]


@st.composite
def programs(draw, max_ops: int = 30) -> Prog:
    world = draw(st.integers(1, 3))
    nstreams = draw(st.integers(1, 3))
    priorities = tuple(draw(st.lists(st.sampled_from([0, -1]), min_size=nstreams, max_size=nstreams)))
    ops = []
    recorded: list[int] = []
    n = draw(st.integers(1, max_ops))
    for _ in range(n):
        choice = draw(st.sampled_from(["k", "k", "k", "c", "rec", "wait", "sync", "sleep"]))
        s = draw(st.integers(0, nstreams - 1))
        if choice == "k":
            durs = tuple(draw(st.lists(st.integers(1, 50), min_size=world, max_size=world)))
            ops.append(("k", s, durs, draw(st.sampled_from(sorted(CLASS_KIND)))))
        elif choice == "c" and world > 1:
            ops.append(("c", s, draw(st.integers(1, 50))))
        elif choice == "rec":
            ev = len(recorded)
            recorded.append(ev)
            ops.append(("rec", s, ev))
        elif choice == "wait" and recorded:
            ops.append(("wait", s, draw(st.sampled_from(recorded))))
        elif choice == "sync" and recorded:
            ops.append(("sync", draw(st.sampled_from(recorded))))
        elif choice == "sleep":
            ops.append(("sleep", draw(st.integers(0, 100))))
    return Prog(world, priorities, tuple(ops))


def solo_ns(kernel: Kernel) -> float:
    """Test kernels carry their solo duration in `bytes` (as nanoseconds x 1000 = us)."""
    return kernel.spec.bytes * 1e-6


def program_policy(prog: Prog):
    def make(rank: int):
        def run(rt: Runtime) -> PolicyGen:
            streams = [rt.new_stream(p) for p in prog.priorities]
            events: dict[int, int] = {}
            for i, op in enumerate(prog.ops):
                if op[0] == "k":
                    _, s, durs, cls = op
                    spec = KernelSpec(CLASS_KIND[cls], f"k{i}", {"elems": 1}, 0.0, float(durs[rank]))
                    rt.launch(Kernel(spec, rank, request_id=i % 3, layer=i), streams[s])
                elif op[0] == "c":
                    spec = collective("all_reduce", f"c{i}", op[2])
                    spec.bytes = float(op[2])
                    rt.launch(Kernel(spec, rank, request_id=i % 3, layer=i, group=tuple(range(prog.world))),
                              streams[op[1]])
                elif op[0] == "rec":
                    events[op[2]] = rt.new_event()
                    rt.record(events[op[2]], streams[op[1]])
                elif op[0] == "wait":
                    rt.wait(streams[op[1]], events[op[2]])
                elif op[0] == "sync":
                    yield rt.sync(events[op[1]])
                elif op[0] == "sleep":
                    yield rt.sleep_until(rt.now() + op[1] * 1e-6)
        return run
    return [make(r) for r in range(prog.world)]


def make_engine(world: int, contention: str = "default", record_ir: bool = True) -> Engine:
    topo = build_topology(INTERCONNECTS["nvswitch-h100"], max(world, 2))
    table = ContentionTable((p["victim"], p["other"], p.get("priority", "any"), p["slowdown"])
                            for p in CONTENTION[contention]["pairs"])
    return Engine(world, solo_ns, table, topo, HostParams(launch_s=1e-6, sync_wakeup_s=2e-6), record_ir=record_ir)
