"""What every policy needs: the jobs, the model's kernel lists and the profiled costs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sim.jobs import Job
from sim.kernels import Kernel, KernelSpec
from sim.layers import ModelShape, layer_kernels
from sim.runtime import PolicyGen, Runtime

RankPolicy = Callable[[Runtime], PolicyGen]


@dataclass
class PolicyContext:
    model: ModelShape
    jobs: list[Job]
    world: int
    policy: object  # the scenario's PolicySpec
    solo: Callable[[Kernel], float]
    _layers: dict = field(default_factory=dict)

    def layer(self, tp: int, batch: int, seq: int) -> list[KernelSpec]:
        """One layer's kernel specs, built once per shape and shared (costs are cached by spec)."""
        key = (tp, batch, seq)
        specs = self._layers.get(key)
        if specs is None:
            specs = self._layers[key] = layer_kernels(self.model, tp, batch, seq)
        return specs


def launch_layer(rt: Runtime, specs: list[KernelSpec], stream: int, request_id: int, layer: int,
                 group: tuple[int, ...]) -> None:
    """Launch one layer's kernels in order on one stream (collectives over `group`)."""
    rank = rt.rank
    for spec in specs:
        rt.launch(Kernel(spec, rank, request_id, layer, group if spec.is_collective else None), stream)
