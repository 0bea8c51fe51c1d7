"""Interconnect topology and the α–β cost of collectives over it.

A topology is a set of directed links with bandwidths; every GPU pair has a route (a list
of links). A ring collective sends one flow from each rank to the next; a link carrying
several of the ring's flows splits its bandwidth among them, and the slowest flow sets the
ring's bus bandwidth B. Then (Thakur et al. 2005; NCCL's ring model):

    all-reduce of S bytes over n ranks: T = base + 2(n-1)·step + 2(n-1)/n · S / B
    send/recv of S bytes:              T = base + step + S / B
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field


@dataclass(slots=True)
class Topology:
    link_bw: list[float]  # bytes/s per link
    routes: dict[tuple[int, int], tuple[int, ...]]
    step_latency_s: float
    base_latency_s: float
    _rings: dict[tuple[int, ...], tuple[tuple[int, ...], float]] = field(default_factory=dict)

    def route(self, src: int, dst: int) -> tuple[int, ...]:
        return self.routes[(src, dst)]

    def flows(self, ring: tuple[int, ...]) -> list[tuple[int, int]]:
        n = len(ring)
        return [(ring[i], ring[(i + 1) % n]) for i in range(n)] if n > 2 else [(ring[0], ring[1]), (ring[1], ring[0])]

    def link_loads(self, pairs: list[tuple[int, int]]) -> dict[int, int]:
        loads: dict[int, int] = {}
        for s, d in pairs:
            for link in self.routes[(s, d)]:
                loads[link] = loads.get(link, 0) + 1
        return loads

    def bottleneck_bw(self, loads: dict[int, int]) -> float:
        return min(self.link_bw[link] / c for link, c in loads.items())

    def best_ring(self, group: tuple[int, ...]) -> tuple[tuple[int, ...], float]:
        """The ring order of `group` with the highest bus bandwidth (NCCL searches too)."""
        key = tuple(sorted(group))
        if key not in self._rings:
            first, rest = key[0], key[1:]
            best: tuple[tuple[int, ...], float] | None = None
            orders = itertools.permutations(rest) if len(rest) <= 7 else [rest]
            for perm in orders:
                ring = (first, *perm)
                bw = self.bottleneck_bw(self.link_loads(self.flows(ring)))
                if best is None or bw > best[1] * (1 + 1e-12):
                    best = (ring, bw)
            assert best is not None
            self._rings[key] = best
        return self._rings[key]

    def collective_time(self, kind: str, group: tuple[int, ...], nbytes: float) -> float:
        n = len(group)
        if n < 2:
            return 0.0
        if kind == "all_reduce":
            _, bw = self.best_ring(group)
            return self.base_latency_s + 2 * (n - 1) * self.step_latency_s + 2 * (n - 1) / n * nbytes / bw
        # send / recv: one flow from the lower rank of the pair to the other
        src, dst = group[0], group[1]
        bw = self.bottleneck_bw(self.link_loads([(src, dst)]))
        return self.base_latency_s + self.step_latency_s + nbytes / bw

    def collective_loads(self, kind: str, group: tuple[int, ...]) -> dict[int, int]:
        """Flows a collective puts on each link (for sharing links between collectives)."""
        if len(group) < 2:
            return {}
        if kind == "all_reduce":
            ring, _ = self.best_ring(group)
            return self.link_loads(self.flows(ring))
        return self.link_loads([(group[0], group[1])])


def build_topology(spec: dict, gpus: int) -> Topology:
    """Links and routes for `gpus` GPUs joined by the interconnect `spec` (a preset dict)."""
    kind, bw = spec["kind"], float(spec["link_bw"])
    link_bw: list[float] = []
    routes: dict[tuple[int, int], tuple[int, ...]] = {}

    def add(b: float) -> int:
        link_bw.append(b)
        return len(link_bw) - 1

    pairs = [(s, d) for s in range(gpus) for d in range(gpus) if s != d]
    if kind == "switch":
        up = [add(bw) for _ in range(gpus)]
        down = [add(bw) for _ in range(gpus)]
        routes = {(s, d): (up[s], down[d]) for s, d in pairs}
    elif kind == "pcie":
        up = [add(bw) for _ in range(gpus)]
        down = [add(bw) for _ in range(gpus)]
        bridge = add(float(spec["bridge_bw"]))
        routes = {(s, d): (up[s], bridge, down[d]) for s, d in pairs}
    elif kind == "pairwise":
        routes = {(s, d): (add(bw),) for s, d in pairs}
    elif kind == "mesh":
        mesh = spec["mesh"]
        fallback = float(spec.get("fallback_bw", bw))
        routes = {(s, d): (add(mesh[s][d] * bw if mesh[s][d] else fallback),) for s, d in pairs}
    else:  # the schema only lets the kinds above through
        raise ValueError(f"unknown interconnect kind {kind!r}")
    return Topology(link_bw, routes, float(spec["step_latency_s"]), float(spec["base_latency_s"]))
