"""What every policy needs: the jobs, the model's kernel lists and the profiled costs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain, repeat

from sim.jobs import Job
from sim.kernels import Kernel, KernelSpec
from sim.layers import ModelShape, epilogue_kernels, layer_kernels, prologue_kernels
from sim.runtime import PolicyGen, Runtime

RankPolicy = Callable[[Runtime], PolicyGen]


@dataclass(frozen=True, slots=True)
class Step:
    """One kernel of a job before it is launched: what runs and which layer it belongs to
    (-1 for the embedding prologue, `layers` for the LM-head epilogue)."""

    spec: KernelSpec
    layer: int


@dataclass
class PolicyContext:
    model: ModelShape
    jobs: list[Job]
    world: int
    policy: object  # the scenario's PolicySpec
    solo: Callable[[Kernel], float]
    spec_solo: Callable[..., float]
    contention: object = None  # ContentionTable, for policies that budget with it
    serving: object = None  # the scenario's ServingSpec
    scheduler: object = None  # generative: the shared BatchScheduler (sim.serving)
    # ranks this process simulates (1 when rank-folded); None: unknown, so state shared by all
    # ranks (the interleaved planner's rounds) is never dropped
    active_ranks: int | None = None
    base: int = 0  # the first global rank of this context's replica (data parallelism); `world` ranks from it
    typical_jobs: list[Job] | None = None  # the whole workload, for choices every replica makes alike
    handoff: object = None  # disaggregated serving's shared state (sim.disaggregation.Handoff)
    _layers: dict = field(default_factory=dict)
    _steps: dict = field(default_factory=dict)

    @property
    def ranks(self) -> tuple[int, ...]:
        """The global ranks this context schedules (one replica's)."""
        return tuple(range(self.base, self.base + self.world))

    def layer(self, tp: int, batch: int, seq: int) -> list[KernelSpec]:
        """One layer's kernel specs, built once per shape and shared (costs are cached by spec)."""
        key = (tp, batch, seq)
        specs = self._layers.get(key)
        if specs is None:
            specs = self._layers[key] = layer_kernels(self.model, tp, batch, seq)
        return specs

    def steps(self, tp: int, batch: int, seq: int, layers: range | None = None,
              first: bool = True, last: bool = True) -> list[Step]:
        """The kernels of a job (or of the `layers` one pipeline stage holds), in order."""
        m = self.model
        layers = range(m.layers) if layers is None else layers
        key = (tp, batch, seq, layers.start, layers.stop, first, last)
        cached = self._steps.get(key)
        if cached is not None:
            return cached
        out = [Step(s, -1) for s in prologue_kernels(m, tp, batch, seq)] if first else []
        specs = self.layer(tp, batch, seq)
        for i in layers:
            out.extend(Step(s, i) for s in specs)
        if last:
            out.extend(Step(s, m.layers) for s in epilogue_kernels(m, tp, batch, seq))
        self._steps[key] = out
        return out


@dataclass(frozen=True, slots=True)
class LayeredKernels:
    """A job's kernels as their parts: the prologue (layer -1), one layer's list run for each of
    `layers`, the epilogue (layer `last_layer`). An iteration of an 80-layer model has ~1,000
    kernels and is launched once, so it is not spelled out as one `Step` per kernel."""

    prologue: list[KernelSpec]
    layer: list[KernelSpec]
    layers: range
    epilogue: list[KernelSpec]
    last_layer: int

    def parts(self) -> list[tuple[int, list[KernelSpec]]]:
        """(layer, its kernels) in launch order."""
        return [(-1, self.prologue), *((i, self.layer) for i in self.layers), (self.last_layer, self.epilogue)]

    def flat(self) -> tuple[list[KernelSpec], list[int]]:
        """Every kernel's spec and layer, in launch order (for the interleaved planner, which
        takes kernels one by one), built by list repetition rather than per kernel."""
        per = len(self.layer)
        specs = [*self.prologue, *(self.layer * len(self.layers)), *self.epilogue]
        layers = [-1] * len(self.prologue)
        layers.extend(chain.from_iterable(repeat(i, per) for i in self.layers))
        layers.extend([self.last_layer] * len(self.epilogue))
        return specs, layers


def routed_on_arrival(ctx: PolicyContext) -> bool:
    """Whether a router shares requests among replicas as they arrive (`sim.serving.Router`): then
    a host first waits for the simulated clock to reach its own before it calls the scheduler, so
    that every replica's calls, which route, come in time order. (A host runs ahead of the clock
    by the launches it has just issued.)"""
    return ctx.scheduler is not None and ctx.scheduler.router is not None


def launch_layered(rt: Runtime, ks: LayeredKernels, stream: int, request_id: int,
                   group: tuple[int, ...]) -> None:
    """`launch_steps` over a `LayeredKernels`, without building a step per kernel."""
    rank, launch = rt.rank, rt.launch
    for layer, specs in ks.parts():
        for spec in specs:
            launch(Kernel(spec, rank, request_id, layer, group if spec.is_collective else None), stream)


def launch_steps(rt: Runtime, steps: list[Step], stream: int, request_id: int,
                 group: tuple[int, ...]) -> None:
    """Launch kernels in order on one stream (collectives over `group`)."""
    rank = rt.rank
    for st in steps:
        spec = st.spec
        rt.launch(Kernel(spec, rank, request_id, st.layer, group if spec.is_collective else None), stream)


def after(rt: Runtime, before: int, then: int) -> None:
    """Stream `then` waits for everything launched so far on stream `before` (one event,
    released once waited on): a send after the compute it carries, compute after its receive."""
    ev = rt.new_event()
    rt.record(ev, before)
    rt.wait(then, ev)
    rt.release(ev)
