"""Multi-node clusters (`multinode` interconnects: NVSwitch nodes joined by one NIC per GPU) and
the Llama 3 presets that need them."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from sim.errors import LigerSimError
from sim.links import build_topology
from sim.metrics import generative_requests_frame
from sim.presets import INTERCONNECTS, MODELS
from sim.scenario import load_scenario, parse_scenario
from sim.simulate import load_jobs, prepare, simulate

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "llama3-405b-2x8-h100.yaml"
DGX = INTERCONNECTS["dgx-h100-ndr"]
NVL, NET, BASE, NIC = DGX["step_latency_s"], DGX["net_step_latency_s"], DGX["base_latency_s"], DGX["nic_bw"]
SIZES = (2048.0, 1 << 20, 64 << 20)


def label(ranks) -> str:
    """A collective's group as the events table writes it."""
    return ",".join(map(str, ranks))


def committed() -> dict:
    return yaml.safe_load(SCENARIO.read_text())


def small(policy: dict, count: int = 16, layers: int = 2) -> dict:
    """The committed scenario's hardware and serving with a 2-layer Llama-3-8B-shaped model: quick."""
    d = copy.deepcopy(committed())
    d["hardware"]["count"] = count
    d["model"] = {"preset": "llama3-8b", "layers": layers}
    d["workload"] = {"kind": "generate", "jobs": 4, "arrival": {"process": "poisson", "rate": 50.0},
                     "prompt_tokens": {"dist": "uniform", "low": 32, "high": 128}, "output_tokens": 4}
    d["policy"] = policy
    return d


def test_routes_inside_a_node_are_the_switchs_and_across_nodes_cross_two_nics():
    topo = build_topology(DGX, 16)
    assert topo.node_of == (0,) * 8 + (1,) * 8
    inside, across = topo.route(1, 5), topo.route(1, 9)
    assert [topo.link_bw[x] for x in inside] == [450e9, 450e9] and [topo.link_bw[x] for x in across] == [NIC, NIC]
    # as `switch`: GPU 1's up-link carries all it sends inside the node, GPU 5's down-link all it receives
    assert {topo.route(1, d)[0] for d in range(8) if d != 1} == {inside[0]}
    assert {topo.route(s, 5)[1] for s in range(8) if s != 5} == {inside[1]}
    # across: the sender's NIC (tx) for every GPU of the other node, the receiver's NIC (rx) from every one
    assert {topo.route(1, d)[0] for d in range(8, 16)} == {across[0]} and across[0] not in inside
    assert {topo.route(s, 9)[1] for s in range(8)} == {across[1]}
    assert topo.route(9, 1) != tuple(reversed(across))  # each direction its own link


@pytest.mark.parametrize("nbytes", SIZES)
def test_a_16_gpu_all_reduce_is_bound_by_the_nics(nbytes):
    """Two nodes: NCCL's 8 rings (one per NIC) each carry 1/8 of the data; every GPU's NIC carries
    one ring's hop out and one's in, NVSwitch links 7 rings' hops at 450/7 > 50 GB/s, so the bus
    bandwidth is 8 x nic_bw; 4 of the 30 ring steps cross the network (NCCL: 2 x nodes)."""
    topo = build_topology(DGX, 16)
    group = tuple(range(16))
    expected = BASE + 26 * NVL + 4 * NET + 2 * 15 / 16 * nbytes / (8 * NIC)
    assert topo.collective_time("all_reduce", group, nbytes) == pytest.approx(expected, rel=1e-12)
    faster_nvlink = build_topology({**DGX, "link_bw": 2 * DGX["link_bw"]}, 16)
    assert faster_nvlink.collective_time("all_reduce", group, nbytes) == pytest.approx(expected, rel=1e-12)
    loads = topo.collective_loads("all_reduce", group)
    assert sorted(loads.values()) == [1] * 32 + [7] * 32  # 16 tx + 16 rx NIC links, 32 NVSwitch links


def test_rings_across_nodes_cross_each_boundary_once_and_leave_from_every_gpu():
    topo = build_topology(DGX, 32)
    rings = topo.node_rings(tuple(range(32)))
    assert len(rings) == 8
    exits = []
    for ring in rings:
        hops = [(a, b) for a, b in topo.flows(ring) if topo.node_of[a] != topo.node_of[b]]
        assert len(hops) == 4  # 4 nodes: one crossing each
        exits += [a for a, _ in hops]
    assert sorted(exits) == list(range(32))


@pytest.mark.parametrize("nbytes", SIZES)
def test_tp8_inside_a_node_costs_what_nvswitch_h100_gives(nbytes):
    multi, switch = build_topology(DGX, 16), build_topology(INTERCONNECTS["nvswitch-h100"], 8)
    for group in (tuple(range(8)), tuple(range(8, 16))):
        assert multi.collective_time("all_reduce", group, nbytes) == switch.collective_time(
            "all_reduce", tuple(range(8)), nbytes)
    assert multi.collective_time("all_reduce", (9, 12), nbytes) == switch.collective_time("all_reduce", (1, 4), nbytes)
    assert multi.collective_time("send", (8, 9), nbytes) == switch.collective_time("send", (0, 1), nbytes)


@pytest.mark.parametrize("nbytes", SIZES)
def test_a_send_between_nodes_uses_the_nic(nbytes):
    topo = build_topology(DGX, 16)
    assert topo.collective_time("send", (3, 11), nbytes) == pytest.approx(BASE + NET + nbytes / NIC, rel=1e-12)
    # a 2-GPU all-reduce across nodes: both ring steps over the network, one NIC each way
    assert topo.collective_time("all_reduce", (0, 8), nbytes) == pytest.approx(
        BASE + 2 * NET + nbytes / NIC, rel=1e-12)


def _durations(pairs: list[tuple[int, int]], gpus: int = 16, interconnect: dict = DGX):
    """Each send of `pairs` (one stream each, all at t=0) simulated on `interconnect`: (durations, solo)."""
    from sim.contention import ContentionTable
    from sim.costs import RooflineCost
    from sim.engine import Engine, HostParams
    from sim.kernels import Kernel, collective
    from sim.simulate import events_frame

    topo = build_topology(interconnect, gpus)
    cost = RooflineCost(1e15, 1e12, 100, 0.0, topo)
    eng = Engine(gpus, cost.solo, ContentionTable([]), topo, HostParams(0.0, 0.0))

    def policy(rt):
        for a, b in pairs:
            if rt.rank in (a, b):
                kind = "send" if rt.rank == a else "recv"
                rt.launch(Kernel(collective(kind, kind, 64 * 2**20), rt.rank, 0, 0, (a, b)), rt.new_stream(0))
        yield rt.sleep_until(0.0)

    ev = events_frame(eng.run([policy] * gpus).events)
    ev = ev[ev["rank"] == ev["group"].map(lambda g: int(g.split(",")[0]))]  # the sender's row of each transfer
    return (ev["end_s"] - ev["start_s"]).to_numpy(), ev["solo_s"].to_numpy()


def test_concurrent_transfers_share_a_nic_and_only_a_nic():
    alone, solo = _durations([(0, 8)])
    assert alone == pytest.approx(solo)
    same_tx, solo = _durations([(0, 8), (0, 9)])  # both leave through GPU 0's NIC
    assert same_tx == pytest.approx(2 * solo)
    same_rx, solo = _durations([(0, 8), (1, 8)])  # both arrive through GPU 8's NIC
    assert same_rx == pytest.approx(2 * solo)
    rails, solo = _durations([(0, 8), (1, 9)])  # own NICs, non-blocking network: no sharing
    assert rails == pytest.approx(solo)
    nvlink_and_nic, solo = _durations([(0, 8), (0, 1)])  # NVLink and the NIC are separate links
    assert nvlink_and_nic == pytest.approx(solo)


def test_two_cross_node_all_reduces_on_the_same_nics_share_them():
    """Through the engine: two all-reduces over the same 16 GPUs at once, on two streams, each take
    twice as long as alone (every NIC carries both); collective_loads gives the engine the rings."""
    from sim.contention import ContentionTable
    from sim.costs import RooflineCost
    from sim.engine import Engine, HostParams
    from sim.kernels import Kernel, collective
    from sim.simulate import events_frame

    topo = build_topology(DGX, 16)
    cost = RooflineCost(1e15, 1e12, 100, 0.0, topo)

    def run(n: int):
        eng = Engine(16, cost.solo, ContentionTable([]), topo, HostParams(0.0, 0.0))

        def policy(rt):
            for i in range(n):
                rt.launch(Kernel(collective("all_reduce", "ar", 256 * 2**20), rt.rank, i, 0, tuple(range(16))),
                          rt.new_stream(0))
            yield rt.sleep_until(0.0)

        ev = events_frame(eng.run([policy] * 16).events)
        return (ev["end_s"] - ev["start_s"]).to_numpy(), ev["solo_s"].to_numpy()

    alone, solo = run(1)
    assert alone == pytest.approx(solo)
    both, solo = run(2)
    assert both == pytest.approx(2 * solo)


def test_a_partly_filled_last_node_works_with_its_own_nics():
    """12 GPUs on dgx-h100-ndr: 8 in node 0, 4 in node 1, whose 4 NICs (200 GB/s) bound a 12-GPU ring."""
    scn = parse_scenario(small({"name": "hybrid", "tp": 4, "pp": 3}, count=12, layers=3))
    topo = build_topology(scn.hardware.interconnect.model_dump(), 12)
    assert topo.node_of == (0,) * 8 + (1,) * 4
    nbytes = 64 << 20
    assert topo.collective_time("all_reduce", tuple(range(12)), nbytes) == pytest.approx(
        BASE + 18 * NVL + 4 * NET + 2 * 11 / 12 * nbytes / (4 * NIC), rel=1e-12)
    run = simulate(scn, load_jobs(scn, None, 2), record_ir=False)
    assert set(run.events["rank"]) == set(range(12))


@pytest.mark.parametrize("change,field,words", [
    ({"count": 257}, "hardware", "max_gpus=256"),
    ({"interconnect": {"preset": "dgx-h100-ndr", "gpus_per_node": 0}}, "hardware.interconnect.gpus_per_node",
     "greater than or equal to 1"),
    ({"interconnect": {"preset": "dgx-h100-ndr", "gpus_per_node": 4.5}}, "hardware.interconnect.gpus_per_node",
     "integer"),
    ({"interconnect": {"preset": "dgx-h100-ndr", "nic_bw": 0}}, "hardware.interconnect.nic_bw", "greater than 0"),
    ({"interconnect": {"preset": "dgx-h100-ndr", "nic_bw": -50e9}}, "hardware.interconnect.nic_bw", "greater than 0"),
    ({"interconnect": {"preset": "dgx-h100-ndr", "net_step_latency_s": -1}},
     "hardware.interconnect.net_step_latency_s", "greater than or equal to 0"),
    ({"interconnect": {"preset": "nvswitch-h100", "kind": "multinode", "max_gpus": 16}}, "hardware.interconnect",
     "needs gpus_per_node, nic_bw, net_step_latency_s"),
])
def test_bad_multinode_input_names_the_field(tmp_path, change, field, words):
    d = committed()
    d["hardware"].update(change)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(LigerSimError) as e:
        load_scenario(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: {field}: ") and words in msg, msg


def test_an_unused_multinode_field_stays_out_of_other_kinds_records():
    """A scenario of another kind dumps as before the multinode fields existed (IR headers, summaries)."""
    d = small({"name": "intra_op"}, count=8)
    d["hardware"]["interconnect"] = "nvswitch-h100"
    dumped = parse_scenario(d).model_dump(mode="json")["hardware"]["interconnect"]
    assert "nic_bw" not in dumped and "gpus_per_node" not in dumped and "net_step_latency_s" not in dumped
    scn = parse_scenario(small({"name": "intra_op"}))
    dumped = scn.model_dump(mode="json")
    assert dumped["hardware"]["interconnect"]["nic_bw"] == NIC
    assert parse_scenario(dumped).hardware.interconnect == scn.hardware.interconnect  # as `replay` reads an IR


@pytest.mark.parametrize("name,layers,hidden,heads,ffn,context", [
    ("llama3-8b", 32, 4096, 32, 14336, 8192),
    ("llama3-70b", 80, 8192, 64, 28672, 8192),
    ("llama3.1-405b", 126, 16384, 128, 53248, 131072),
])
def test_llama3_presets_load(name, layers, hidden, heads, ffn, context):
    d = small({"name": "intra_op"})
    d["model"] = name
    m = parse_scenario(d).model
    assert (m.layers, m.hidden, m.heads, m.kv_heads, m.head_dim, m.ffn, m.vocab, m.context) == (
        layers, hidden, heads, 8, 128, ffn, 128256, context)
    assert m.gated and m.rope and m.norm == "rmsnorm" and m.arch == "decoder" and name in MODELS


def _prepared(policy: dict, count: int, mode: str = "generative"):
    d = committed()
    d["hardware"]["count"] = count
    d["policy"] = policy
    if mode == "encoder":
        d["serving"] = {"mode": "encoder"}
        d["workload"] = {"kind": "generate", "jobs": 2, "arrival": {"process": "poisson", "rate": 1.0},
                         "seq_len": 512}
    scn = parse_scenario(d)
    return prepare(scn, load_jobs(scn, None, 2), record_ir=False)


@pytest.mark.parametrize("mode,words", [("generative", "no room for a KV cache"), ("encoder", "GB per GPU")])
def test_405b_does_not_fit_one_node_of_h100s(mode, words):
    with pytest.raises(LigerSimError) as e:
        _prepared({"name": "intra_op"}, 8, mode)
    assert words in str(e.value) and "101.5 GB" in str(e.value)


@pytest.mark.parametrize("policy", [{"name": "intra_op"}, {"name": "hybrid", "tp": 8, "pp": 2},
                                    {"name": "hybrid", "tp": 4, "pp": 4}, {"name": "inter_op"},
                                    {"name": "interleaved"}])
@pytest.mark.parametrize("mode", ["generative", "encoder"])
def test_405b_fits_two_nodes(policy, mode):
    engine, _, rank_policies, _ = _prepared(policy, 16, mode)
    assert engine.world == 16 and len(rank_policies) == 16


def test_hybrid_8x2_on_the_405b_scenario_keeps_tp_groups_inside_nodes():
    """The committed scenario (its first 2 requests, 8 output tokens each): every all-reduce runs
    inside a node, every activation send crosses from a GPU of node 0 to the same local GPU of
    node 1 (over its own NIC)."""
    d = committed()
    d["workload"]["output_tokens"] = 8
    scn = parse_scenario(d, str(SCENARIO))
    assert (scn.policy.name, scn.tp(), scn.pp()) == ("hybrid", 8, 2)
    jobs = load_jobs(scn, None, 2)
    run = simulate(scn, jobs, record_ir=False, file=str(SCENARIO))
    reqs = generative_requests_frame(run.events, run.result.meta["iterations"], jobs)
    assert list(reqs["tokens"]) == [8, 8]  # both requests complete
    ev = run.events
    assert set(ev["rank"]) == set(range(16)) and ev["end_s"].max() > 0
    groups = set(ev.loc[ev["kind"] == "all_reduce", "group"])
    assert groups == {label(range(8)), label(range(8, 16))}
    sends = set(ev.loc[ev["name"] == "send_activations", "group"])
    assert sends == {label((r, r + 8)) for r in range(8)}


def test_fold_ranks_is_exact_for_tensor_parallel_across_nodes():
    scn = parse_scenario(small({"name": "intra_op"}))
    jobs = load_jobs(scn, None)
    full = simulate(scn, jobs, record_ir=False)
    folded = simulate(scn, jobs, record_ir=False, fold_ranks=True)
    rank0 = full.events[full.events["rank"] == 0].reset_index(drop=True)
    assert rank0[["start_s", "end_s"]].equals(folded.events[["start_s", "end_s"]].reset_index(drop=True))
    assert set(rank0.loc[rank0["kind"] == "all_reduce", "group"]) == {label(range(16))}


def test_emulated_collectives_on_a_multinode_topology_on_cpu(monkeypatch):
    """hw's single-GPU emulation (its spin kernel recorded, on CPU) lasts the link model's time for a
    16-GPU all-reduce across nodes and a send between nodes."""
    torch = pytest.importorskip("torch")
    from types import SimpleNamespace

    from hw import collectives, spin

    launched = []
    monkeypatch.setattr(spin, "HAVE_TRITON", True)
    monkeypatch.setattr(spin, "launch", lambda src, dst, ctas, dur: launched.append(dur))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(multi_processor_count=132))
    topo = build_topology(DGX, 16)
    comm = collectives.EmulatedCollectives(0, topo, device="cpu")
    t = torch.zeros(1 << 20, dtype=torch.float16)
    comm.all_reduce(t, tuple(range(16)))
    comm.send(t, (0, 8))
    assert launched == [pytest.approx(topo.collective_time("all_reduce", tuple(range(16)), 2 << 20)),
                        pytest.approx(BASE + NET + (2 << 20) / NIC)]
    assert comm.launched[0][1] == collectives.ring_bytes(2 << 20, 16)


def test_hw_run_over_several_hosts_is_a_clear_error(tmp_path, monkeypatch):
    """torchrun across two nodes: `hw run` times every rank against rank 0's host clock, so it refuses
    (before touching a GPU) instead of writing wrong times."""
    pytest.importorskip("torch")
    from hw.launch import execute
    from hw.run import Options, Source, build_plan

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small({"name": "intra_op"})))
    plan = build_plan(Source("scenario", str(path)))
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    with pytest.raises(LigerSimError, match="several hosts"):
        execute(plan, Source("scenario", str(path)), tmp_path / "out", Options(device="cuda"))


def test_one_nic_per_gpu_is_the_default_and_changes_nothing():
    for gpus in (16, 12):
        default, explicit = build_topology(DGX, gpus), build_topology({**DGX, "nics_per_node": 8}, gpus)
        assert (default.link_bw, default.routes) == (explicit.link_bw, explicit.routes)


def test_gpus_share_nics_in_contiguous_blocks():
    """4 NICs per node of 8 GPUs: local GPUs 0-1 use NIC 0, 2-3 NIC 1, ...; a group's rings that
    leave through one NIC split it, so a group's bandwidth across nodes is its NICs', not its GPUs'."""
    topo = build_topology({**DGX, "nics_per_node": 4}, 16)
    assert len(topo.link_bw) == 32 + 16  # NVSwitch up and down per GPU, tx and rx per NIC
    assert topo.route(0, 8) == topo.route(1, 9) and topo.route(0, 8) != topo.route(2, 10)
    assert topo.route(0, 9)[0] == topo.route(1, 8)[0] and topo.route(7, 8)[0] == topo.route(6, 9)[0]
    nbytes = 64 << 20
    for k, nics in ((1, 1), (2, 1), (4, 2), (8, 4)):
        group = (*range(k), *range(8, 8 + k))
        steps = 2 * (2 * k - 1)
        net = min(steps, 4)
        assert topo.collective_time("all_reduce", group, nbytes) == pytest.approx(
            BASE + (steps - net) * NVL + net * NET + 2 * (2 * k - 1) / (2 * k) * nbytes / (nics * NIC), rel=1e-12)
    loads = topo.collective_loads("all_reduce", tuple(range(16)))
    assert sorted(loads.values()) == [2] * 16 + [7] * 32  # each NIC's tx and rx: two rings' hops


def test_concurrent_sends_share_a_shared_nic():
    shared = {**DGX, "nics_per_node": 4}
    same_nic, solo = _durations([(0, 8), (1, 9)], interconnect=shared)  # GPUs 0 and 1 leave through NIC 0
    assert same_nic == pytest.approx(2 * solo)
    own_nics, solo = _durations([(0, 8), (2, 10)], interconnect=shared)
    assert own_nics == pytest.approx(solo)


@pytest.mark.parametrize("nics,words", [(3, "must divide gpus_per_node"), (0, "greater than or equal to 1"),
                                        (2.5, "integer")])
def test_bad_nics_per_node_names_the_field(tmp_path, nics, words):
    d = committed()
    d["hardware"]["interconnect"] = {"preset": "dgx-h100-ndr", "nics_per_node": nics}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(LigerSimError) as e:
        load_scenario(path)
    assert "hardware.interconnect" in str(e.value) and words in str(e.value), str(e.value)


def test_nics_per_node_is_recorded_only_where_given():
    scn = parse_scenario(small({"name": "intra_op"}))
    assert "nics_per_node" not in scn.model_dump(mode="json")["hardware"]["interconnect"]
    d = small({"name": "intra_op"})
    d["hardware"]["interconnect"] = {"preset": "dgx-h100-ndr", "nics_per_node": 2}
    dumped = parse_scenario(d).model_dump(mode="json")
    assert dumped["hardware"]["interconnect"]["nics_per_node"] == 2
    assert parse_scenario(dumped).hardware.interconnect.nics_per_node == 2


@pytest.mark.parametrize("field,value", [("gpus_per_node", 4), ("nic_bw", 1e9), ("nics_per_node", 2),
                                         ("net_step_latency_s", 1e-5)])
def test_multinode_fields_on_another_kind_are_an_error(field, value):
    """Set on a switch they changed nothing and were recorded: a user could think they had built
    a cluster of nodes."""
    d = {"name": "x", "hardware": {"gpu": "H100-SXM", "count": 8,
                                   "interconnect": {"preset": "nvswitch-h100", field: value}},
         "model": "llama2-7b", "workload": {"kind": "generate", "jobs": 2, "seq_len": 64}, "policy": {"name": "intra_op"}}
    with pytest.raises(LigerSimError, match=f"{field} only apply to kind 'multinode'"):
        parse_scenario(d)
