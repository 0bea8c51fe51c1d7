"""Disaggregated serving (`policy.prefill_replicas`): prefill replicas push each request's KV
cache to decode replicas. Tokens, timing against one replica alone, backpressure, replay,
folding, routing and clear errors."""

from __future__ import annotations

import copy

import pandas as pd
import pytest

from sim import ir
from sim.errors import LigerSimError
from sim.jobs import Job
from sim.metrics import generative_requests_frame
from sim.outputs import describe, run_tables
from sim.scenario import parse_scenario
from sim.serving import kv_bytes_per_token, kv_capacity_tokens
from sim.simulate import load_jobs, replay, simulate

ZERO_HOST = {"preset": "default", "launch_s": 0.0, "sync_wakeup_s": 0.0}


def scenario(count: int = 4, dp: int = 2, prefill: int = 1, jobs: int = 16, rate: float = 200.0, **serving) -> dict:
    return copy.deepcopy({
        "name": "disagg", "seed": 5,
        "hardware": {"gpu": "A100-SXM", "count": count, "interconnect": "nvswitch-a100", "host": dict(ZERO_HOST)},
        "model": {"preset": "llama2-7b", "layers": 4},
        "workload": {"kind": "generate", "jobs": jobs, "arrival": {"process": "poisson", "rate": rate}, "batch": 1,
                     "prompt_tokens": {"dist": "uniform", "low": 16, "high": 400},
                     "output_tokens": {"dist": "uniform", "low": 1, "high": 24}},
        "policy": {"name": "intra_op", "dp": dp, "prefill_replicas": prefill},
        "serving": {"mode": "generative", **serving},
    })


def requests(run) -> pd.DataFrame:
    return generative_requests_frame(run.events, run.result.meta["iterations"], run.jobs).set_index("request_id")


def token_times(run, rid: int) -> list[float]:
    it = pd.DataFrame(run.result.meta["iterations"], columns=["iteration", "group", "request_id", "tokens", "emits"])
    ends = run.events[run.events["request_id"] >= 0].groupby("request_id")["end_s"].max()
    mine = it[(it["request_id"] == rid) & (it["emits"] == 1)]
    return sorted(ends.loc[mine["iteration"]].tolist())


def test_every_request_gets_its_tokens_first_from_prefill_then_from_decode():
    scn = parse_scenario(scenario(jobs=24))
    jobs = load_jobs(scn, None)
    run = simulate(scn, jobs)
    req = requests(run)
    assert (req["tokens"] == req["output_tokens"]).all()
    it = pd.DataFrame(run.result.meta["iterations"], columns=["iteration", "group", "request_id", "tokens", "emits"])
    ranks = run.events[run.events["request_id"] >= 0].groupby("request_id")["rank"].min()
    it["replica"] = ranks.reindex(it["iteration"]).to_numpy() // 2
    for rid, rows in it[it["emits"] == 1].sort_values("iteration").groupby("request_id"):
        assert rows["replica"].iloc[0] == 0  # the first token: the prefill replica
        assert (rows["replica"].iloc[1:] == 1).all()  # the others: the decode replica
        assert not (it[(it["request_id"] == rid) & (it["replica"] == 1)]["tokens"] > 1).any()  # no prompt there
    pushes = run.events[run.events["kind"] == "kv_push"]
    assert len(pushes) == 2 * (req["output_tokens"] > 1).sum()  # one per TP rank of each handed-on request
    assert set(pushes["rank"]) == {0, 1}
    assert run.result.meta["replica_requests"] == [24, int((req["output_tokens"] > 1).sum())]
    _, summary = run_tables(run.events, jobs, run.result.meta, "intra_op", None)
    assert summary["prefill_replicas"] == 1 and summary["handoffs"] == len(pushes) // 2
    assert summary["kv_transfer_mean_s"] >= (pushes["end_s"] - pushes["start_s"]).min() > 0
    assert "1 prefill, then 1 decode" in describe(summary)


def test_a_lone_request_is_one_replica_alone_plus_its_kv_push():
    """Without host costs, a lone request's first token comes when it would on one replica alone;
    each later token comes exactly one KV push later, the push taking the link model's send time
    for its prompt's KV shard."""
    job = Job(0, 0.0, 1, 0, 300, 12)
    d = scenario()
    disagg = simulate(parse_scenario(d), [job])
    alone_d = copy.deepcopy(d)
    alone_d["hardware"]["count"], alone_d["policy"] = 2, {"name": "intra_op"}
    alone = simulate(parse_scenario(alone_d), [job])
    push = disagg.events[disagg.events["kind"] == "kv_push"].iloc[0]
    nbytes = 300 * kv_bytes_per_token(parse_scenario(d).model.shape(), 2, 1)
    send = parse_scenario(d)
    from sim.links import build_topology

    topo = build_topology(send.hardware.interconnect.model_dump(), 4)
    assert push["end_s"] - push["start_s"] == pytest.approx(topo.collective_time("send", (0, 2), nbytes), rel=1e-9)
    t_dis, t_alone = token_times(disagg, 0), token_times(alone, 0)
    assert len(t_dis) == len(t_alone) == 12
    assert t_dis[0] == pytest.approx(t_alone[0], rel=1e-12)
    assert push["start_s"] == pytest.approx(t_dis[0], abs=1e-12)
    shift = push["end_s"] - push["start_s"]
    for a, b in zip(t_dis[1:], t_alone[1:]):
        assert a - b == pytest.approx(shift, rel=1e-9)


@pytest.mark.parametrize("transfer", ["after_prefill", "layerwise"])
def test_a_request_of_one_token_never_leaves_its_prefill_replica(transfer):
    d = scenario()
    d["policy"]["kv_transfer"] = transfer
    run = simulate(parse_scenario(d), [Job(0, 0.0, 1, 0, 100, 1), Job(1, 0.001, 1, 0, 50, 3)])
    req = requests(run)
    assert req["tokens"].tolist() == [1, 3]
    pushes = run.events[run.events["kind"] == "kv_push"]
    assert len(pushes) == (2 if transfer == "after_prefill" else 2 * 4)  # request 1's: two ranks (x 4 layers)


def held_pushes(run) -> int:
    """Pushes not launched as their prefill iteration ended (without host costs, a push waits
    for nothing else but room on a decode replica)."""
    ev = run.events
    ends = ev[(ev["rank"] == 0) & (ev["request_id"] >= 0)].groupby("request_id")["end_s"].max().to_numpy()
    starts = ev[(ev["kind"] == "kv_push") & (ev["rank"] == 0)]["launch_s"].to_numpy()
    return int(sum(abs(ends - t).min() > 1e-12 for t in starts))


def test_a_full_decode_cache_holds_prompts_on_the_prefill_side():
    """Decode replicas reserve prompt + output; with a burst of long outputs they fill first and
    the prefilled prompts wait, holding their blocks, until decodes finish: every request is still
    served in full, and pushes wait for room, which they do not with a cache that holds the burst."""
    d = scenario(jobs=40, rate=1e5, memory_utilization=0.15)
    d["hardware"]["gpu"] = {"preset": "A100-SXM", "memory": 16e9}  # ~1 GB of weights per GPU at TP 2
    d["workload"]["prompt_tokens"] = {"dist": "uniform", "low": 1500, "high": 2000}
    d["workload"]["output_tokens"] = {"dist": "uniform", "low": 300, "high": 400}
    scn = parse_scenario(d)
    run = simulate(scn, load_jobs(scn, None))
    req = requests(run)
    assert (req["tokens"] == req["output_tokens"]).all()
    cap = run.result.meta["kv_capacity_tokens"]
    assert cap < 40 * 1800  # the burst does not fit the decode replica
    assert max(level for _, level in run.result.meta["kv_log"]) <= 2 * cap  # the two replicas' caches together
    assert held_pushes(run) > 5
    d["serving"]["memory_utilization"] = 0.9
    roomy = simulate(parse_scenario(d), load_jobs(scn, None))
    assert roomy.result.meta["kv_capacity_tokens"] > 40 * 2400
    assert held_pushes(roomy) == 0


@pytest.mark.parametrize("interconnect", ["nvswitch-a100", "pcie4"])
def test_folded_and_replayed_runs_give_the_same_events(interconnect, tmp_path):
    """Folding simulates each replica's first rank: exact even where the TP ranks' pushes share a
    link (PCIe's host bridge), since a push carries every rank's flow. A replay of the IR file,
    waits for notices included, gives the same events (to rounding: a wait's end is recomputed
    from the replaying host's clock)."""
    d = scenario(count=8, dp=4, prefill=2, jobs=20, rate=400.0)
    d["hardware"]["interconnect"] = interconnect
    scn = parse_scenario(d)
    jobs = load_jobs(scn, None)
    run = simulate(scn, jobs)
    folded = simulate(scn, jobs, fold_ranks=True)
    cols = ["request_id", "kind", "name", "start_s", "end_s"]
    full0 = run.events[run.events["rank"].isin([0, 2, 4, 6])][["rank", *cols]].reset_index(drop=True)
    pd.testing.assert_frame_equal(full0, folded.events[["rank", *cols]].reset_index(drop=True), rtol=1e-12)
    ir.save(run.result.schedule, tmp_path / "ir.jsonl")
    again = replay(ir.load(tmp_path / "ir.jsonl"))
    order = ["rank", "kernel_id"]
    pd.testing.assert_frame_equal(run.events.sort_values(order)[["rank", *cols]].reset_index(drop=True),
                                  again.events.sort_values(order)[["rank", *cols]].reset_index(drop=True), rtol=1e-12)


def test_idle_decode_replicas_end_with_the_run(tmp_path):
    """Three requests over one prefill and two decode replicas: a decode replica left idle ends
    with the others (its IR holds no unanswered wait), and the IR file replays."""
    scn = parse_scenario(scenario(count=6, dp=3, prefill=1, jobs=3, rate=10.0))
    jobs = load_jobs(scn, None)
    run = simulate(scn, jobs)
    assert "wait_notify" not in {op.op for op in run.result.schedule.ops}
    ir.save(run.result.schedule, tmp_path / "ir.jsonl")
    assert len(replay(ir.load(tmp_path / "ir.jsonl")).events) == len(run.events)


def test_preempted_decodes_come_back_before_new_handoffs():
    """With `on_kv_full: preempt`, a decode replica readmits its own preempted request before it
    takes another prefilled one (vLLM's order): every request is served, as on one replica."""
    d = scenario(on_kv_full="preempt")
    base = parse_scenario(d)
    m = base.model.shape()
    per_token = 2 * m.layers * (m.kv_heads // 2) * m.head_dim * m.dtype_bytes
    full = kv_capacity_tokens(m, 2, 1, 16e9, base.serving, "x")
    d["hardware"]["gpu"] = {"preset": "A100-SXM", "memory": 16e9 - (full - 1008) * per_token / 0.9}
    scn = parse_scenario(d)
    assert kv_capacity_tokens(m, 2, 1, scn.hardware.gpu.memory, scn.serving, "x") == 1008
    jobs = [Job(0, 0.0, 1, 0, 300, 600), Job(1, 0.0, 1, 0, 300, 600), Job(2, 0.0, 1, 0, 500, 10)]
    run = simulate(scn, jobs)
    assert requests(run)["tokens"].tolist() == [600, 600, 10]
    assert any(n for _, n in run.result.meta["preemptions"])


def test_a_decode_replica_takes_no_more_requests_than_it_batches():
    d = scenario(jobs=30, rate=1e5, max_batch_seqs=4)
    scn = parse_scenario(d)
    run = simulate(scn, load_jobs(scn, None))
    req = requests(run)
    assert (req["tokens"] == req["output_tokens"]).all()
    placed = pd.DataFrame(run.result.meta["handoffs"], columns=["request_id", "prefilled", "placed", "arrived"])
    placed["end"] = req["end_s"].reindex(placed["request_id"]).to_numpy()
    held = [((placed["placed"] <= t) & (t < placed["end"])).sum() for t in placed["placed"]]
    assert max(held) == 4  # placed on the decode replica and not yet finished: never more than it batches
    assert (placed["placed"] > placed["prefilled"]).any()  # so some waited for a place


def test_least_loaded_spreads_arrivals_over_prefill_replicas_only():
    d = scenario(count=6, dp=3, prefill=2, jobs=30, rate=2000.0)
    d["policy"]["router"] = "least_loaded"
    scn = parse_scenario(d)
    run = simulate(scn, load_jobs(scn, None))
    req = requests(run)
    assert (req["tokens"] == req["output_tokens"]).all()
    served = run.result.meta["replica_requests"]
    assert served[0] + served[1] == 30 and min(served[:2]) > 0
    assert served[2] == int((req["output_tokens"] > 1).sum())


@pytest.mark.parametrize("change,field,words", [
    ({"policy": {"name": "intra_op", "dp": 2, "prefill_replicas": 2}}, "policy.prefill_replicas", "none of the dp=2"),
    ({"policy": {"name": "intra_op", "dp": 2, "kv_transfer": "layerwise"}}, "policy.kv_transfer",
     "policy.prefill_replicas"),
    ({"policy": {"name": "interleaved", "dp": 2, "prefill_replicas": 1}}, "policy.name", "intra_op"),
    ({"serving": {"mode": "encoder"}}, "policy.prefill_replicas", "generative"),
])
def test_bad_disaggregation_names_the_field(change, field, words):
    d = scenario()
    d.update(change)
    if d["serving"]["mode"] == "encoder":
        d["workload"]["seq_len"] = 128
    with pytest.raises(LigerSimError) as err:
        parse_scenario(d, "s.yaml")
    assert err.value.field == field and words in str(err.value) and "s.yaml" in str(err.value)


def test_kv_flows_reshard_between_tp_degrees():
    """Each decode rank gets each KV head it holds from the first prefill rank holding it."""
    from dataclasses import replace as dc_replace

    from sim.disaggregation import kv_flows

    m = parse_scenario(scenario()).model.shape()  # 32 KV heads, 4 layers, head_dim 128, fp16
    head = 2 * m.layers * m.head_dim * m.dtype_bytes
    assert kv_flows(m, 2, 2) == ([(0, 0), (1, 1)], 16 * head)
    assert kv_flows(m, 2, 1) == ([(0, 0), (1, 0)], 16 * head)  # the decode GPU gathers both halves
    assert kv_flows(m, 1, 4) == ([(0, 0), (0, 1), (0, 2), (0, 3)], 8 * head)  # one GPU scatters
    gqa = dc_replace(m, kv_heads=2)  # 4 ranks hold copies: 0, 1 head 0; 2, 3 head 1
    assert kv_flows(gqa, 4, 1) == ([(0, 0), (2, 0)], head)
    assert kv_flows(gqa, 1, 4) == ([(0, 0), (0, 1), (0, 2), (0, 3)], head)
    assert kv_flows(gqa, 4, 4) == ([(0, 0), (1, 1), (2, 2), (3, 3)], head)  # copy c from copy c: every sender works
    assert kv_flows(gqa, 4, 2) == ([(0, 0), (2, 1)], head)
    assert kv_flows(gqa, 2, 4) == ([(0, 0), (0, 1), (1, 2), (1, 3)], head)


def phase_tp(**serving) -> dict:
    """One TP-2 prefill replica (GPUs 0, 1) and two one-GPU decode replicas (GPUs 2, 3)."""
    d = scenario(dp=3, prefill=1, **serving)
    d["policy"].update(prefill_tp=2, tp=1)
    return d


def test_prefill_replicas_of_their_own_tp_degree():
    scn = parse_scenario(phase_tp())
    assert scn.replicas() == [(0, 2), (2, 1), (3, 1)]
    jobs = load_jobs(scn, None)
    run = simulate(scn, jobs)
    req = requests(run)
    assert (req["tokens"] == req["output_tokens"]).all()
    pushes = run.events[run.events["kind"] == "kv_push"]
    assert set(pushes["group"]) == {"0,2,1,2", "0,3,1,3"}  # both prefill GPUs to one decode GPU
    served = run.result.meta["replica_requests"]
    assert served[0] == len(jobs) and served[1] + served[2] == int((req["output_tokens"] > 1).sum())
    _, summary = run_tables(run.events, jobs, run.result.meta, "intra_op", None)
    assert 0 < summary["kv_occupancy_max"] <= 1
    assert f"KV cache {run.result.meta['kv_capacity_total_tokens']:,} tokens over all replicas" in describe(summary)
    assert run.result.meta["kv_capacity_total_tokens"] > 3 * run.result.meta["kv_capacity_tokens"] / 2
    folded = simulate(scn, jobs, fold_ranks=True)
    cols = ["rank", "request_id", "kind", "start_s", "end_s"]
    pd.testing.assert_frame_equal(run.events[run.events["rank"].isin([0, 2, 3])][cols].reset_index(drop=True),
                                  folded.events[cols].reset_index(drop=True), rtol=1e-12)


def test_a_lone_request_prefills_at_one_tp_and_decodes_at_another():
    """Without host costs: the first token as on a TP-2 replica alone; then each decode step as on
    one GPU alone, all one push later, the push gathering both halves into one GPU's link."""
    from sim.links import build_topology

    job = Job(0, 0.0, 1, 0, 300, 12)
    d = phase_tp()
    disagg = simulate(parse_scenario(d), [job])

    def alone(gpus: int) -> list[float]:
        a = copy.deepcopy(d)
        a["hardware"]["count"], a["policy"] = gpus, {"name": "intra_op"}
        return token_times(simulate(parse_scenario(a), [job]), 0)

    t, tp2, tp1 = token_times(disagg, 0), alone(2), alone(1)
    assert t[0] == pytest.approx(tp2[0], rel=1e-12)
    push = disagg.events[disagg.events["kind"] == "kv_push"].iloc[0]
    m = parse_scenario(d).model.shape()
    half = 300 * kv_bytes_per_token(m, 2, 1)
    topo = build_topology(parse_scenario(d).hardware.interconnect.model_dump(), 4)
    assert push["end_s"] - push["start_s"] == pytest.approx(topo.collective_time("kv_push", (0, 2, 1, 2), half),
                                                            rel=1e-9)
    assert topo.collective_time("kv_push", (0, 2, 1, 2), half) > topo.collective_time("send", (0, 2), half)
    assert t[1] - t[0] == pytest.approx(push["end_s"] - push["start_s"] + tp1[1] - tp1[0], rel=1e-9)
    for k in range(2, 12):
        assert t[k] - t[1] == pytest.approx(tp1[k] - tp1[1], rel=1e-9)


@pytest.mark.parametrize("policy,field,words", [
    ({"dp": 2, "prefill_tp": 2}, "policy.prefill_tp", "policy.prefill_replicas"),
    ({"dp": 3, "prefill_replicas": 1, "prefill_tp": 2}, "policy.tp", "decode replicas' TP"),
    ({"dp": 3, "prefill_replicas": 1, "prefill_tp": 2, "tp": 2}, "policy.prefill_tp", "not hardware.count = 4"),
    ({"dp": 2, "prefill_replicas": 1, "prefill_tp": 3, "tp": 1}, "policy.prefill_tp", "does not divide"),
    ({"dp": 3, "prefill_replicas": 1, "prefill_tp": 2, "tp": 1, "pp": 2}, "policy.pp", "leave policy.pp unset"),
    ({"name": "interleaved", "dp": 3, "prefill_replicas": 1, "prefill_tp": 2, "tp": 1}, "policy.name", "intra_op"),
    ({"dp": 2, "prefill_replicas": 1, "prefill_tp": 3, "tp": 2, "count": 5}, "policy.prefill_tp",
     "must divide one another"),
])
def test_bad_prefill_tp_names_the_field(policy, field, words):
    d = scenario()
    policy = dict(policy)
    if "count" in policy:  # 24 heads: TP 3 and TP 2 each divide them, but not one another
        d["hardware"]["count"] = policy.pop("count")
        d["model"].update(heads=24, kv_heads=24, hidden=3072, ffn=8256)
    d["policy"] = {"name": "intra_op", **policy}
    with pytest.raises(LigerSimError) as err:
        parse_scenario(d, "s.yaml")
    assert err.value.field == field and words in str(err.value)


def test_a_sweep_names_and_keeps_the_scenarios_tp_per_phase():
    from sim.curve import scenario_variants

    d = phase_tp()
    scn = parse_scenario(d)
    lines = scenario_variants(["intra_op", "intra_op+1p1d", "intra_op+1p1d:2/2"], [], scn, d, load_jobs(scn, None),
                              "s.yaml")
    assert list(lines) == ["intra_op+1p2d:2/1", "intra_op+1p1d", "intra_op+1p1d:2/2"]
    assert parse_scenario(lines["intra_op+1p2d:2/1"]).replicas() == [(0, 2), (2, 1), (3, 1)]
    assert parse_scenario(lines["intra_op+1p1d"]).replicas() == [(0, 2), (2, 2)]


def test_layerwise_pushes_each_layer_as_it_is_computed():
    """`policy.kv_transfer: layerwise`: a request placed when its prefill starts has each layer's
    KV pushed after that layer, so over a PCIe bridge its second token comes much sooner than
    when the whole cache moves after the prefill; every token is still served, and folding and
    replay give the same events."""
    job = Job(0, 0.0, 1, 0, 2000, 6)
    d = scenario(count=4, dp=2, prefill=1)
    d["hardware"]["interconnect"] = "pcie4"
    after_prefill = simulate(parse_scenario(d), [job])
    d["policy"]["kv_transfer"] = "layerwise"
    scn = parse_scenario(d)
    layerwise = simulate(scn, [job])
    pushes = layerwise.events[layerwise.events["kind"] == "kv_push"]
    assert sorted(set(pushes["layer"])) == list(range(4))  # one push per layer (per rank)
    t_after, t_layer = token_times(after_prefill, 0), token_times(layerwise, 0)
    assert len(t_layer) == 6
    whole = after_prefill.events[after_prefill.events["kind"] == "kv_push"]
    push_s = float((whole["end_s"] - whole["start_s"]).iloc[0])
    assert push_s > 0.003  # 2,000 tokens of four layers' KV over the bridge: milliseconds
    assert t_layer[1] - t_layer[0] < (t_after[1] - t_after[0]) - 0.5 * push_s  # most of the push hidden
    jobs = load_jobs(parse_scenario(scenario(count=4, dp=2, prefill=1, jobs=24)), None)
    run = simulate(scn, jobs)
    req = requests(run)
    assert (req["tokens"] == req["output_tokens"]).all()
    folded = simulate(scn, jobs, fold_ranks=True)
    cols = ["rank", "request_id", "kind", "layer", "start_s", "end_s"]
    pd.testing.assert_frame_equal(run.events[run.events["rank"].isin([0, 2])][cols].reset_index(drop=True),
                                  folded.events[cols].reset_index(drop=True), rtol=1e-12)
    again = replay(run.result.schedule, jobs)
    order = ["rank", "kernel_id"]
    pd.testing.assert_frame_equal(run.events.sort_values(order)[cols].reset_index(drop=True),
                                  again.events.sort_values(order)[cols].reset_index(drop=True), rtol=1e-12)


def test_layerwise_falls_back_when_no_decode_replica_has_room_at_the_start():
    """With a decode cache too small for the burst, prompts that find no room when their prefill
    starts are pushed whole once room appears; all are served in full."""
    d = scenario(jobs=40, rate=1e5, memory_utilization=0.15)
    d["hardware"]["gpu"] = {"preset": "A100-SXM", "memory": 16e9}
    d["workload"]["prompt_tokens"] = {"dist": "uniform", "low": 1500, "high": 2000}
    d["workload"]["output_tokens"] = {"dist": "uniform", "low": 300, "high": 400}
    d["policy"]["kv_transfer"] = "layerwise"
    scn = parse_scenario(d)
    run = simulate(scn, load_jobs(scn, None))
    req = requests(run)
    assert (req["tokens"] == req["output_tokens"]).all()
    pushes = run.events[(run.events["kind"] == "kv_push") & (run.events["rank"] == 0)]
    assert (pushes["layer"] >= 0).any() and (pushes["layer"] == -1).any()  # both kinds of push
    _, summary = run_tables(run.events, run.jobs, run.result.meta, "intra_op", None)
    assert summary["decode_wait_mean_s"] > 0 and summary["handoffs"] == 40


def test_layerwise_with_kv_head_copies_folds_exactly():
    """With more prefill ranks than KV heads some ranks send nothing and finish first; a request
    still goes on to decode only after every sending rank's iteration (the folded run, which
    simulates a sender, agrees with the full one)."""
    d = scenario(count=8, dp=3, prefill=1, jobs=20, rate=400.0)
    d["model"]["kv_heads"] = 2
    d["policy"].update(prefill_tp=4, tp=2, kv_transfer="layerwise")
    scn = parse_scenario(d)
    jobs = load_jobs(scn, None)
    run = simulate(scn, jobs)
    assert (requests(run)["tokens"] == requests(run)["output_tokens"]).all()
    folded = simulate(scn, jobs, fold_ranks=True)
    cols = ["rank", "request_id", "kind", "layer", "start_s", "end_s"]
    pd.testing.assert_frame_equal(run.events[run.events["rank"].isin([0, 4, 6])][cols].reset_index(drop=True),
                                  folded.events[cols].reset_index(drop=True), rtol=1e-12)
    ev = run.events[run.events["request_id"] >= 0]
    span = ev.groupby("request_id").agg(t0=("start_s", "min"), t1=("end_s", "max"), rank=("rank", "min"))
    it = pd.DataFrame(run.result.meta["iterations"], columns=["iteration", "group", "request_id", "tokens", "emits"])
    prefill_end = span[span["rank"] < 4]["t1"]
    decode_start = span[span["rank"] >= 4]["t0"]
    for _, rows in it.groupby("request_id"):
        pre = [i for i in rows["iteration"] if i in prefill_end.index]
        dec = [i for i in rows["iteration"] if i in decode_start.index]
        if dec:
            assert min(decode_start[dec]) >= max(prefill_end[pre]) - 1e-12
