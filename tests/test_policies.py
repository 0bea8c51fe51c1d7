"""Behaviour of the scheduling policies on a small comm-heavy scenario."""

from __future__ import annotations

import pandas as pd
import pytest

from sim.metrics import requests_frame, summarise
from sim.policies.pipeline import partition, stages
from sim.scenario import parse_scenario
from sim.simulate import load_jobs, simulate
from tests.conftest import tiny

POLICIES = ["intra_op", "inter_op", "interleaved", "hybrid"]


def run(d: dict, jobs: int | None = None):
    scn = parse_scenario(d)
    js = load_jobs(scn, None, jobs)
    r = simulate(scn, js)
    return r, requests_frame(r.events, js)


def knobs(policy):
    return {"tp": 2} if policy == "hybrid" else {}


def solo_service(d: dict) -> dict[int, float]:
    """Each job's service time with the GPUs to itself: its kernels' solo sum on one rank."""
    r, _ = run(d)
    ev = r.events
    return ev[ev["rank"] == 0].groupby("request_id")["solo_s"].sum().to_dict()


@pytest.mark.parametrize("policy", POLICIES)
def test_every_job_completes_once_and_no_faster_than_alone(policy):
    d = tiny(policy, **knobs(policy))
    r, req = run(d)
    assert len(req) == 30 and req["end_s"].notna().all() and req["request_id"].is_unique
    # every kernel of every job ran exactly once on each rank
    assert not r.events.duplicated(["rank", "kernel_id"]).any()
    if policy in ("intra_op", "interleaved"):
        alone = solo_service(tiny("intra_op"))
        for rid, jct in zip(req["request_id"], req["jct_s"]):
            assert jct >= alone[rid] * (1 - 1e-9)


def test_lone_job_under_intra_op_takes_its_solo_sum_plus_collectives():
    d = tiny("intra_op")
    d["workload"]["jobs"] = 1
    d["hardware"]["host"] = {"preset": "default", "launch_s": 0.0}
    r, req = run(d)
    ev = r.events[r.events["rank"] == 0]
    assert (ev["cls"] == "collective").sum() == 8  # two all-reduces per layer, four layers
    assert req["jct_s"].iloc[0] == pytest.approx(ev["solo_s"].sum(), rel=1e-9)
    # with a launch cost the host may fall behind these short kernels: never faster
    d["hardware"]["host"] = {"preset": "default"}
    _, req2 = run(d)
    assert req2["jct_s"].iloc[0] >= ev["solo_s"].sum() + parse_scenario(d).hardware.host.launch_s


def test_interleaved_with_depth_one_equals_intra_op():
    zero_host = {"preset": "default", "launch_s": 0.0, "sync_wakeup_s": 0.0}
    a, b = tiny("intra_op"), tiny("interleaved", depth=1)
    a["hardware"]["host"] = b["hardware"]["host"] = zero_host
    ra, qa = run(a)
    rb, qb = run(b)
    pd.testing.assert_series_equal(qa["jct_s"], qb["jct_s"])
    cols = ["rank", "kernel_id", "name", "start_s", "end_s"]
    pd.testing.assert_frame_equal(ra.events[cols], rb.events[cols])
    # with the default host costs, the per-segment host syncs can only delay it
    _, qc = run(tiny("interleaved", depth=1))
    _, qd = run(tiny("intra_op"))
    assert (qc["jct_s"] >= qd["jct_s"] * (1 - 1e-9)).all()


def test_inter_op_throughput_is_bounded_by_its_slowest_stage():
    d = tiny("inter_op")
    d["workload"]["arrival"]["rate"] = 5000.0  # saturate
    d["workload"]["seq_len"] = 64
    r, req = run(d)
    ev = r.events
    per_stage = ev[ev["cls"] != "collective"].groupby(["rank", "request_id"])["solo_s"].sum()
    slowest = per_stage.groupby("rank").mean().max()
    s = summarise(ev, req, "inter_op", None)
    assert s["throughput_jobs_s"] <= 1 / slowest * (1 + 1e-6)
    assert s["throughput_jobs_s"] >= 0.5 / slowest  # and the pipeline does keep that stage busy


def test_stages_balance_by_cost():
    assert partition([1, 1, 1, 1], 2) == [range(0, 2), range(2, 4)]
    assert partition([5, 1, 1, 1, 1, 1], 2) == [range(0, 1), range(1, 6)]
    d = tiny("inter_op")
    d["model"] = {"preset": "llama2-7b", "layers": 8}
    d["hardware"] = {"gpu": "A100-SXM", "count": 4, "interconnect": "nvswitch-a100"}
    scn = parse_scenario(d)
    from sim.policies import PolicyContext
    from sim.simulate import make_engine

    _, cost = make_engine(scn)
    ctx = PolicyContext(scn.model.shape(), load_jobs(scn, None), 4, scn.policy, cost.solo, cost.spec_solo)
    st = stages(ctx, 1, 4)
    assert [len(s.layers) for s in st] == [2, 2, 2, 2] or sum(len(s.layers) for s in st) == 8
    assert st[0].layers.start == 0 and st[-1].layers.stop == 8


def test_each_stage_is_costed_on_its_own_gpus():
    """On the V100 cube mesh GPUs 0-1 share one NVLink brick and 2-3 two: a hybrid 2 x 2 stage on
    2-3 all-reduces faster, so it is given more layers (before, every stage was costed on 0-1)."""
    assert partition([[2, 2, 2, 2], [1, 1, 1, 1]], 2) == [range(0, 1), range(1, 4)]
    d = tiny("hybrid")
    d["policy"].update(tp=2, pp=2)
    d["hardware"] = {"gpu": "V100-SXM2", "count": 4, "interconnect": "nvlink-v100-cube-mesh"}
    d["model"]["layers"] = 32
    scn = parse_scenario(d)
    from sim.kernels import collective
    from sim.policies import PolicyContext
    from sim.simulate import make_engine

    _, cost = make_engine(scn)
    ar = collective("all_reduce", "ar", 2 * 64 * 2048 * 2)
    assert cost.spec_solo(ar, (2, 3)) < 0.8 * cost.spec_solo(ar, (0, 1))
    ctx = PolicyContext(scn.model.shape(), load_jobs(scn, None), 4, scn.policy, cost.solo, cost.spec_solo)
    st = stages(ctx, 2, 2)
    assert [s.ranks for s in st] == [(0, 1), (2, 3)] and len(st[1].layers) > len(st[0].layers)


def fast_links(d: dict) -> dict:
    """The paper-sized layer over NVSwitch: all-reduces shorter than most GEMMs, so fills
    must split GEMMs to fit."""
    d["hardware"] = {"gpu": "A100-SXM", "count": 4, "interconnect": "nvswitch-a100"}
    d["model"] = {"preset": "liger-encoder", "layers": 2}
    d["workload"]["arrival"]["rate"] = 3000.0
    return d


def test_decomposed_pieces_add_up_to_the_gemm():
    r, _ = run(fast_links(tiny("interleaved")))
    ops = [o for o in r.result.schedule.ops if o.op == "launch" and o.kernel.spec.fraction < 1]
    assert len(ops) > 100, "short all-reduces should make the planner split GEMMs to fill budgets"
    pieces: dict[tuple, list] = {}
    for o in ops:
        pieces.setdefault((o.rank, o.kernel.request_id, o.kernel.parent), []).append(o.kernel.spec)
    for specs in pieces.values():
        n_full, m, k = specs[0].dims["n_full"], specs[0].dims["m"], specs[0].dims["k"]
        assert sum(s.dims["n"] for s in specs) == n_full
        assert sum(s.flops for s in specs) == 2.0 * m * n_full * k
        cols = sorted((s.dims["n0"], s.dims["n"]) for s in specs)
        assert all(a[0] + a[1] == b[0] for a, b in zip(cols, cols[1:]))


@pytest.mark.parametrize("split_collectives", [False, True])
def test_every_launched_piece_is_one_the_hw_warm_up_runs(split_collectives):
    """`possible_pieces` (what the hw executor launches once before its clock) holds every piece
    the planner cut in a run, dims and offsets included, and nothing it cannot cut."""
    from sim.layers import layer_kernels
    from sim.policies.interleaved import possible_pieces

    d = tiny("interleaved", split_collectives=split_collectives)
    if split_collectives:  # comm-bound PCIe: all-reduces are split too
        d["model"] = {"preset": "liger-encoder", "layers": 2}
        d["workload"]["arrival"]["rate"] = 3000.0
    else:
        d = fast_links(d)
    scn = parse_scenario(d)
    js = load_jobs(scn, None, None)
    r = simulate(scn, js)
    shapes = {j.request_id: (j.batch, j.seq_len) for j in js}
    m = scn.model.shape()
    launched = [o.kernel for o in r.result.schedule.ops if o.op == "launch" and o.kernel.spec.fraction < 1]
    assert {k.spec.kind for k in launched} == ({"gemm", "all_reduce"} if split_collectives else {"gemm"})
    warm: dict[tuple, set] = {}
    for k in launched:
        key = (shapes[k.request_id], k.spec.name)
        if key not in warm:
            whole = next(s for s in layer_kernels(m, scn.tp(), *shapes[k.request_id]) if s.name == k.spec.name)
            warm[key] = {tuple(sorted(p.dims.items())) for p in possible_pieces(whole, 8, split_collectives)}
            assert len(warm[key]) == 35  # spans [a/8, b/8) but the whole
        assert tuple(sorted(k.spec.dims.items())) in warm[key]


def test_split_one_disables_decomposition():
    r, _ = run(fast_links(tiny("interleaved", split=1)))
    assert (r.events["fraction"] == 1.0).all()


def test_interleaving_overlaps_and_raises_capacity_over_intra_op():
    """On the paper-sized layer (ms-long kernels, so host launches do not dominate)."""
    a, b = tiny("intra_op"), tiny("interleaved")
    for d in (a, b):
        d["model"] = {"preset": "liger-encoder", "layers": 2}
        d["workload"]["arrival"]["rate"] = 3000.0
    ra, qa = run(a)
    rb, qb = run(b)
    sa, sb = summarise(ra.events, qa, "a", None), summarise(rb.events, qb, "b", None)
    assert sa["overlap_frac"] < 1e-9
    assert sb["overlap_frac"] > 0.05
    assert sb["throughput_jobs_s"] > sa["throughput_jobs_s"] * 1.05
    # the sub stream ran kernels of other jobs than the main stream at the same time
    ev = rb.events[rb.events["rank"] == 0]
    assert set(ev["stream"]) == {0, 1}


def test_scalar_and_table_contention_both_work_and_differ():
    r1, q1 = run(fast_links(tiny("interleaved", contention=0.8)))
    r2, q2 = run(fast_links(tiny("interleaved", contention="table")))
    assert q1["end_s"].notna().all() and q2["end_s"].notna().all()
    assert len(r1.events) != len(r2.events) or not q1["jct_s"].equals(q2["jct_s"])


@pytest.mark.parametrize("policy", POLICIES)
def test_same_seed_same_result(policy):
    _, a = run(tiny(policy, **knobs(policy)))
    _, b = run(tiny(policy, **knobs(policy)))
    pd.testing.assert_frame_equal(a, b)


def test_split_collectives_cover_the_whole_payload_and_overlap_more():
    d = tiny("interleaved", split_collectives=True)
    d["model"] = {"preset": "liger-encoder", "layers": 2}
    d["workload"]["arrival"]["rate"] = 3000.0
    r, q = run(d)
    ops = [o for o in r.result.schedule.ops if o.op == "launch" and o.kernel.spec.kind == "all_reduce"
           and o.kernel.spec.fraction < 1]
    assert ops, "comm-bound PCIe: all-reduces should be split to fill compute segments"
    pieces: dict[tuple, list] = {}
    for o in ops:
        pieces.setdefault((o.rank, o.kernel.request_id, o.kernel.parent), []).append(o.kernel.spec)
    for specs in pieces.values():
        assert sum(s.dims["nbytes"] for s in specs) == specs[0].dims["nbytes_full"]
    base = tiny("interleaved")
    base["model"], base["workload"] = d["model"], d["workload"]
    r0, q0 = run(base)
    s1, s0 = summarise(r.events, q, "x", None), summarise(r0.events, q0, "y", None)
    assert s1["overlap_frac"] > s0["overlap_frac"]
    assert s1["throughput_jobs_s"] > s0["throughput_jobs_s"]


@pytest.mark.parametrize("generative", [False, True])
def test_folding_ranks_is_exact_for_tensor_parallel_policies(generative):
    from sim.errors import LigerSimError
    from sim.simulate import replay

    d = tiny("interleaved")
    if generative:
        d["model"] = {"preset": "llama2-7b", "layers": 2}
        d["workload"].update(batch=1, prompt_tokens={"dist": "uniform", "low": 16, "high": 200}, output_tokens=5)
        d["serving"] = {"mode": "generative"}
    scn = parse_scenario(d)
    jobs = load_jobs(scn, None)
    full = simulate(scn, jobs)
    folded = simulate(scn, jobs, fold_ranks=True)
    cols = ["kernel_id", "request_id", "name", "start_s", "end_s"]
    rank0 = full.events[full.events["rank"] == 0][cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(folded.events[cols].reset_index(drop=True), rank0)
    assert set(folded.events["rank"]) == {0}
    # a folded IR replays folded
    rep = replay(folded.result.schedule)
    pd.testing.assert_frame_equal(rep.events, folded.events)
    with pytest.raises(LigerSimError, match="fold-ranks"):
        simulate(parse_scenario(tiny("inter_op")), jobs, fold_ranks=True)


def test_stream_occupancy_averages_over_every_rank():
    """A pipeline's first stage receives nothing: its inbox counts 0 in the mean over ranks."""
    from sim.metrics import utilisation

    ev = pd.DataFrame({"rank": [0, 0, 1, 1], "stream": [0, 0, 0, 1], "cls": "compute",
                       "start_s": [0.0, 0.5, 0.0, 0.2], "end_s": [0.25, 0.75, 1.0, 0.6]})
    u = utilisation(ev, 1.0)
    assert u["stream_occupancy"] == {"0": pytest.approx((0.5 + 1.0) / 2), "1": pytest.approx(0.4 / 2)}
    assert u["gpu_busy_frac"] == pytest.approx((0.5 + 1.0) / 2)
