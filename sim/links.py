"""Interconnect topology and the α–β cost of collectives over it.

A topology is a set of directed links with bandwidths; every GPU pair has a route (a list
of links). A ring collective sends one flow from each rank to the next; a link carrying
several of the ring's flows splits its bandwidth among them, and the slowest flow sets the
ring's bus bandwidth B. Then (Thakur et al. 2005; NCCL's ring model):

    all-reduce of S bytes over n ranks: T = base + 2(n-1)·step + 2(n-1)/n · S / B
    send/recv of S bytes:              T = base + step + S / B
    KV push, k flows of S bytes each:  T = base + step + S / B, B the slowest of the k flows

Across nodes (the `multinode` kind) a step over the network costs `net_step_latency_s`, and
as in NCCL's cost model (src/graph/tuning.cc, ncclTopoTuneModel) only the ring's network steps
do: an all-reduce over k > 1 nodes takes 2k of its 2(n-1) steps at the network latency and the
rest at the NVLink one (ring steps are pipelined chunk transfers, so a chunk's latency is the sum
of its hops', not n times the slowest), and a send between nodes one network step. NCCL runs one
ring per NIC, each entering and leaving a node at a different GPU (`node_rings`), so the rings
share out the data and together use every NIC of the group. Where GPUs share a NIC
(`nics_per_node` < `gpus_per_node`), the rings leaving through it split its bandwidth, so a
group's bandwidth across nodes is that of the NICs it reaches, not of its GPUs.
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
    node_of: tuple[int, ...] = ()  # each GPU's node; empty: every GPU in one node
    net_step_latency_s: float = 0.0  # a ring step between nodes (multinode)
    _node_rings: dict[tuple[int, ...], list[tuple[int, ...]]] = field(default_factory=dict)

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
            # Over 8 ranks: rank order, as good as any on a crossbar (switch; a multinode kind's
            # group inside one node). A group across nodes is not ringed here but by `node_rings`,
            # whose rings cross each node boundary once (rank order would too: k crossings over k
            # nodes, 2 for two) and spread those crossings over all the group's NICs.
            orders = itertools.permutations(rest) if len(rest) <= 7 else [rest]
            for perm in orders:
                ring = (first, *perm)
                bw = self.bottleneck_bw(self.link_loads(self.flows(ring)))
                if best is None or bw > best[1] * (1 + 1e-12):
                    best = (ring, bw)
            assert best is not None
            self._rings[key] = best
        return self._rings[key]

    def spans_nodes(self, ranks: tuple[int, ...]) -> bool:
        return bool(self.node_of) and len({self.node_of[r] for r in ranks}) > 1

    def node_rings(self, group: tuple[int, ...]) -> list[tuple[int, ...]]:
        """NCCL's rings over a group that spans nodes: one per GPU of the group in its fullest node
        (one per NIC when every GPU has its own), each visiting the nodes in order and each node's ranks from a different one,
        so each GPU leaves its node in one ring and enters it in one: the rings' network hops
        spread over all the group's NICs. Each ring carries 1/len(rings) of the data; GPUs that
        share a NIC put their rings' hops on it together (a group spread unevenly over shared NICs
        is then bound by its busiest NIC)."""
        key = tuple(sorted(group))
        rings = self._node_rings.get(key)
        if rings is None:
            by_node: dict[int, list[int]] = {}
            for r in key:
                by_node.setdefault(self.node_of[r], []).append(r)
            width = max(len(ranks) for ranks in by_node.values())
            rings = self._node_rings[key] = [
                tuple(x for ranks in by_node.values() for x in ranks[i % len(ranks):] + ranks[:i % len(ranks)])
                for i in range(width)]
        return rings

    def _ring_flows(self, rings: list[tuple[int, ...]]) -> list[tuple[int, int]]:
        return [f for ring in rings for f in self.flows(ring)]

    def collective_time(self, kind: str, group: tuple[int, ...], nbytes: float) -> float:
        n = len(group)
        if n < 2:
            return 0.0
        if kind == "all_reduce":
            if not self.spans_nodes(group):
                _, bw = self.best_ring(group)
                return self.base_latency_s + 2 * (n - 1) * self.step_latency_s + 2 * (n - 1) / n * nbytes / bw
            rings = self.node_rings(group)
            bw = len(rings) * self.bottleneck_bw(self.link_loads(self._ring_flows(rings)))
            crossings = sum(self.node_of[s] != self.node_of[d] for s, d in self.flows(rings[0]))
            steps = 2 * (n - 1)
            net = min(steps, 2 * crossings)  # NCCL: 2 x nodes network steps (all of them for 2 ranks)
            return (self.base_latency_s + (steps - net) * self.step_latency_s + net * self.net_step_latency_s
                    + 2 * (n - 1) / n * nbytes / bw)
        if kind == "kv_push":  # every flow (sender, receiver, ... pairs) at once, each of nbytes
            pairs = list(zip(group[::2], group[1::2]))
            bw = self.bottleneck_bw(self.link_loads(pairs))
            step = self.net_step_latency_s if any(self.spans_nodes(p) for p in pairs) else self.step_latency_s
            return self.base_latency_s + step + nbytes / bw
        # send / recv: one flow from the lower rank of the pair to the other
        src, dst = group[0], group[1]
        bw = self.bottleneck_bw(self.link_loads([(src, dst)]))
        step = self.net_step_latency_s if self.spans_nodes((src, dst)) else self.step_latency_s
        return self.base_latency_s + step + nbytes / bw

    def collective_loads(self, kind: str, group: tuple[int, ...]) -> dict[int, int]:
        """Flows a collective puts on each link (for sharing links between collectives); for a
        group across nodes, every ring's: each ring is a flow of its own (an NCCL channel) and a
        link is shared equally among the flows on it, so a collective with R rings on a link
        claims R shares. A flow held back by another link (a NIC) still claims its full share of
        this one: no max-min fairness (README, Limitations)."""
        if len(group) < 2:
            return {}
        if kind == "all_reduce":
            if self.spans_nodes(group):
                return self.link_loads(self._ring_flows(self.node_rings(group)))
            ring, _ = self.best_ring(group)
            return self.link_loads(self.flows(ring))
        if kind == "kv_push":
            return self.link_loads(list(zip(group[::2], group[1::2])))
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
    elif kind == "multinode":
        # NVSwitch inside a node (as `switch`); between nodes a NIC, a send link and a receive link
        # of nic_bw, over a non-blocking (rail-optimised fat-tree) network. nics_per_node NICs per
        # node (default one per GPU), each shared by a contiguous block of the node's GPUs.
        per = int(spec["gpus_per_node"])
        share = per // int(spec.get("nics_per_node") or per)  # GPUs per NIC
        nic = float(spec["nic_bw"])
        node = tuple(i // per for i in range(gpus))
        nic_of = [node[i] * (per // share) + i % per // share for i in range(gpus)]
        up = [add(bw) for _ in range(gpus)]
        down = [add(bw) for _ in range(gpus)]
        tx = [add(nic) for _ in range(max(nic_of, default=-1) + 1)]
        rx = [add(nic) for _ in range(len(tx))]
        routes = {(s, d): (up[s], down[d]) if node[s] == node[d] else (tx[nic_of[s]], rx[nic_of[d]])
                  for s, d in pairs}
        return Topology(link_bw, routes, float(spec["step_latency_s"]), float(spec["base_latency_s"]),
                        node_of=node, net_step_latency_s=float(spec["net_step_latency_s"]))
    elif kind == "mesh":
        mesh = spec["mesh"]
        fallback = float(spec.get("fallback_bw", bw))
        routes = {(s, d): (add(mesh[s][d] * bw if mesh[s][d] else fallback),) for s, d in pairs}
    else:  # the schema only lets the kinds above through
        raise ValueError(f"unknown interconnect kind {kind!r}")
    return Topology(link_bw, routes, float(spec["step_latency_s"]), float(spec["base_latency_s"]))
