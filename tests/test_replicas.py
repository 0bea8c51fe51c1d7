"""Data-parallel replicas (`policy.dp`): routing, independence where nothing is shared, link
contention where something is, generative iteration ids, and clear errors."""

from __future__ import annotations

import copy
import warnings

import pandas as pd
import pytest

from sim.errors import LigerSimError
from sim.jobs import Job
from sim.outputs import run_tables
from sim.scenario import parse_scenario
from sim.simulate import load_jobs, simulate

ZERO_HOST = {"preset": "default", "launch_s": 0.0, "sync_wakeup_s": 0.0}


def scenario(policy: str = "intra_op", count: int = 4, dp: int = 2, interconnect: str = "nvswitch-a100",
             generative: bool = False, jobs: int = 12, **pol) -> dict:
    d = {
        "name": "replicas", "seed": 3,
        "hardware": {"gpu": "A100-SXM", "count": count, "interconnect": interconnect, "host": dict(ZERO_HOST)},
        "model": {"preset": "llama2-7b", "layers": 4},
        "workload": {"kind": "generate", "jobs": jobs, "arrival": {"process": "poisson", "rate": 300.0},
                     "batch": 2, "seq_len": {"dist": "uniform", "low": 64, "high": 512}},
        "policy": {"name": policy, "dp": dp, **pol},
    }
    if generative:
        d["workload"].update(batch=1, prompt_tokens={"dist": "uniform", "low": 16, "high": 300},
                             output_tokens={"dist": "uniform", "low": 1, "high": 20})
        d["workload"].pop("seq_len")
        d["serving"] = {"mode": "generative"}
    return copy.deepcopy(d)


def one_replica(d: dict, jobs: list[Job]) -> pd.DataFrame:
    """The events of the same model on one replica's GPUs alone, serving `jobs`."""
    d = copy.deepcopy(d)
    d["hardware"]["count"] //= d["policy"]["dp"]
    d["policy"]["dp"] = 1
    return simulate(parse_scenario(d), jobs).events


def request_times(events: pd.DataFrame) -> pd.DataFrame:
    return events.groupby("request_id").agg(start=("start_s", "min"), end=("end_s", "max"))


@pytest.mark.parametrize("policy,pol", [("intra_op", {}), ("interleaved", {}), ("hybrid", {"tp": 2, "pp": 2})])
def test_replicas_sharing_no_link_run_as_if_alone(policy, pol):
    """On NVSwitch a replica's GPUs share no link with another's: each replica serves its
    round-robin share exactly as the same GPUs would alone."""
    d = scenario(policy, count=8 if policy == "hybrid" else 4, **pol)
    scn = parse_scenario(d)
    jobs = load_jobs(scn, None)
    both = request_times(simulate(scn, jobs).events)
    for r in range(2):
        alone = request_times(one_replica(d, jobs[r::2]))
        pd.testing.assert_frame_equal(both.loc[alone.index], alone)


def test_replicas_sharing_a_pcie_bridge_slow_each_other():
    """On PCIe every transfer crosses one host bridge: two TP-2 replicas' all-reduces contend,
    so requests take longer than on the same GPUs alone."""
    d = scenario("intra_op", interconnect="pcie4", jobs=16)
    d["workload"]["arrival"]["rate"] = 2000.0  # both replicas busy at once
    scn = parse_scenario(d)
    jobs = load_jobs(scn, None)
    both = request_times(simulate(scn, jobs).events)
    alone = pd.concat([request_times(one_replica(d, jobs[r::2])) for r in range(2)])
    slower = (both["end"] - both["start"]) / (alone["end"] - alone["start"]).reindex(both.index)
    assert slower.min() >= 1 - 1e-12
    assert slower.max() > 1.05


def test_replicas_use_their_own_gpus():
    d = scenario("intra_op")
    scn = parse_scenario(d)
    jobs = load_jobs(scn, None)
    ev = simulate(scn, jobs).events
    ranks = ev.groupby("request_id")["rank"].agg(set)
    for i, j in enumerate(jobs):
        assert ranks[j.request_id] == ({0, 1} if i % 2 == 0 else {2, 3})


@pytest.mark.parametrize("policy", ["intra_op", "interleaved"])
def test_folding_simulates_one_rank_per_replica_exactly(policy):
    d = scenario(policy, interconnect="pcie4")
    scn = parse_scenario(d)
    jobs = load_jobs(scn, None)
    full = simulate(scn, jobs).events
    folded = simulate(scn, jobs, fold_ranks=True).events
    assert set(folded["rank"]) == {0, 2}
    leaders = full[full["rank"].isin([0, 2])].reset_index(drop=True)
    cols = ["rank", "request_id", "name", "start_s", "end_s"]
    pd.testing.assert_frame_equal(folded[cols], leaders[cols])


@pytest.mark.parametrize("policy,pol", [("intra_op", {}), ("interleaved", {}), ("hybrid", {"tp": 2})])
@pytest.mark.parametrize("router", ["round_robin", "least_loaded"])
def test_generative_replicas_serve_every_token_once(policy, pol, router):
    d = scenario(policy, count=8 if policy == "hybrid" else 4, generative=True, jobs=30, router=router, **pol)
    scn = parse_scenario(d)
    jobs = load_jobs(scn, None)
    r = simulate(scn, jobs)
    meta = r.result.meta
    req, summary = run_tables(r.events, jobs, meta, policy, None)
    assert (req["tokens"] == req["output_tokens"]).all()
    its = pd.DataFrame(meta["iterations"], columns=["iteration", "group", "request", "tokens", "emits"])
    # an iteration id names one replica's iteration: its kernels run on that replica's GPUs only
    per = 8 // 2 if policy == "hybrid" else 2
    replica_of = r.events.groupby("request_id")["rank"].agg(lambda x: {rk // per for rk in x})
    assert (replica_of.map(len) == 1).all()
    served = its.groupby("request")["iteration"].agg(lambda x: set().union(*(replica_of[i] for i in x)))
    assert (served.map(len) == 1).all()  # a request stays on its replica
    counts = served.map(lambda s: next(iter(s))).value_counts().sort_index().tolist()
    assert counts == meta["replica_requests"] == summary["replica_requests"]
    if router == "round_robin":
        assert counts == [15, 15]
    assert 0 < summary["kv_occupancy_max"] <= 1


def test_least_loaded_sends_a_request_to_the_idle_replica():
    """A long request holds replica 0; a short one (replica 1) finishes; a third arrives later:
    round-robin gives it to busy replica 0, least-loaded to idle replica 1, which serves it sooner."""
    d = scenario("intra_op", generative=True)
    d["workload"] = {"kind": "trace", "path": "t.csv"}
    jobs = [Job(0, 0.0, 1, 200, 200, 400), Job(1, 0.0, 1, 50, 50, 2), Job(2, 0.05, 1, 50, 50, 2)]
    out = {}
    for router in ("round_robin", "least_loaded"):
        d["policy"]["router"] = router
        scn = parse_scenario(d)
        r = simulate(scn, jobs)
        req, summary = run_tables(r.events, jobs, r.result.meta, "intra_op", None)
        out[router] = (summary["replica_requests"], req.set_index("request_id").loc[2, "ttft_s"])
    assert out["round_robin"][0] == [2, 1] and out["least_loaded"][0] == [1, 2]
    assert out["least_loaded"][1] < out["round_robin"][1]


@pytest.mark.parametrize("change,field,words", [
    ({"dp": 3}, "policy.dp", "divides 4"),
    ({"dp": 2, "tp": 4}, "policy.tp", "all 2 GPUs of each of the 2 replicas"),
    ({"name": "hybrid", "dp": 2, "tp": 2, "pp": 2}, "policy.pp", "tp x pp x dp = 2 x 2 x 2"),
    ({"dp": 2, "router": "least_loaded"}, "policy.router", "generative"),
    ({"dp": 2, "router": "fastest"}, "policy.router", "round_robin"),
    ({"dp": 0}, "policy.dp", "greater than or equal to 1"),
])
def test_bad_replica_settings_name_the_field(change, field, words):
    d = scenario("intra_op")
    d["policy"] = {"name": "intra_op", **change}
    with pytest.raises(LigerSimError) as e:
        parse_scenario(d, "s.yaml")
    msg = str(e.value)
    assert field in msg and words in msg and "s.yaml" in msg


def test_the_cuda_backend_refuses_replicas(tmp_path):
    import yaml

    from hw.run import Source, build_plan

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario("intra_op")))
    with pytest.raises(LigerSimError) as e:
        build_plan(Source("scenario", str(path)))
    assert "policy.dp" in str(e.value) and "one model replica" in str(e.value)


def test_least_loaded_weighs_waiting_requests_four_times_as_vllm_does():
    """Replica 0 has one request waiting, replica 1 three running: vLLM's balancer scores them
    4 x 1 = 4 and 3, so the next request goes to replica 1 (the fewest requests would pick 0)."""
    from sim.serving import BatchScheduler, Router, ServingSpec

    spec = ServingSpec(mode="generative")
    replicas = [BatchScheduler([], spec, 100_000, 1) for _ in range(2)]
    jobs = [Job(i, 0.0, 1, 32, 32, 8) for i in range(4)] + [Job(4, 1.0, 1, 32, 32, 8), Job(5, 2.0, 1, 32, 32, 8)]
    router = Router(jobs, replicas)
    router.next = 4  # the first four placed by hand
    replicas[0].add(jobs[0])
    for j in jobs[1:4]:
        replicas[1].add(j)
    assert replicas[1].plan(0.0, 0) is not None  # replica 1 admits its three; replica 0 is still to batch
    assert [r.load() for r in replicas] == [4, 3]
    assert replicas[0].next_arrival() == 0.0
    replicas[0].group_has_work(0, 1.0)  # any scheduler call routes what has arrived by its time
    assert 4 in replicas[1].seqs and router.next == 5
    assert not replicas[0].done() and replicas[0].next_arrival() == 0.0
    replicas[0].plan(1.5, 0)
    assert replicas[0].next_arrival() == 2.0 and not replicas[1].done()  # request 5 may still come to either


@pytest.mark.parametrize("policy", ["intra_op", "interleaved", "inter_op"])
def test_least_loaded_routes_with_the_state_at_the_arrival(policy):
    """A host runs ahead of the simulated clock by the launches it has just issued: a pipeline
    leader that batched on its own clock routed a request that arrived just after replica 1 went
    idle to busy replica 0 (a review's case). Every arrival after replica 1's host has learnt
    that its request finished (the GPU's end, then the host's wake-up) goes there."""
    d = scenario(policy, generative=True, router="least_loaded")
    d["hardware"]["host"] = {"preset": "default"}  # hosts that take time to launch
    d["workload"] = {"kind": "trace", "path": "t.csv"}
    base = [Job(0, 0.0, 1, 64, 64, 400), Job(1, 0.0, 1, 64, 64, 2)]
    r = simulate(parse_scenario(d), base)
    idle_from = request_times(r.events).loc[[i for i, *_ in r.result.meta["iterations"] if _[1] == 1], "end"].max()
    for dt in (30e-6, 60e-6, 90e-6, 120e-6, 200e-6):
        jobs = [*base, Job(2, idle_from + dt, 1, 64, 64, 2)]
        r = simulate(parse_scenario(d), jobs)
        assert r.result.meta["replica_requests"] == [1, 2], dt


@pytest.mark.parametrize("fold", [False, True])
def test_idle_replicas_count_in_gpu_busy(fold):
    """One request on four one-GPU replicas: three GPUs idle the whole run."""
    d = scenario("intra_op", count=4, dp=4, generative=True)
    d["workload"] = {"kind": "trace", "path": "t.csv"}
    jobs = [Job(0, 0.0, 1, 64, 64, 5)]
    r = simulate(parse_scenario(d), jobs, fold_ranks=fold)
    _, four = run_tables(r.events, jobs, r.result.meta, "intra_op", None)
    d["hardware"]["count"], d["policy"]["dp"] = 1, 1
    r = simulate(parse_scenario(d), jobs)
    _, one = run_tables(r.events, jobs, r.result.meta, "intra_op", None)
    assert four["replica_requests"] == [1, 0, 0, 0]
    assert four["gpu_busy_frac"] == pytest.approx(one["gpu_busy_frac"] / 4)


def test_the_router_refuses_jobs_out_of_arrival_order():
    d = scenario("intra_op", generative=True, router="least_loaded")
    jobs = [Job(0, 1.0, 1, 32, 32, 2), Job(1, 0.5, 1, 32, 32, 2)]
    with pytest.raises(LigerSimError, match="arrival order"):
        simulate(parse_scenario(d), jobs)


def test_catch_up_waits_for_the_clock_and_costs_nothing():
    """`catch_up` blocks a host until the simulated clock reaches its time, charges none of the
    costs after a blocking op (a sleep's were charged: 145 us per iteration of a profiled hybrid
    run, a review found) and is not an operation of the IR."""
    from dataclasses import replace as dc_replace

    from sim.kernels import Kernel, KernelSpec
    from tests.programs import make_engine

    eng = make_engine(1)
    eng.host = dc_replace(eng.host, after_block={"sleep_until": 1e-3, "sync": 1e-3})
    seen = []

    def run(rt):
        s = rt.new_stream(0)
        for i in range(50):  # 50 us of launches: the host runs ahead of the clock
            rt.launch(Kernel(KernelSpec("gemm", f"k{i}", {"elems": 1}, 0.0, 1.0), 0, 0, i), s)
        before = rt.now()
        yield rt.catch_up()
        seen.append((before, rt.now(), eng.env.now))

    result = eng.run([run])
    (before, after, clock), = seen
    assert before == after == pytest.approx(50e-6) and clock == pytest.approx(before)
    assert {op.op for op in result.schedule.ops} == {"stream", "launch"}


@pytest.mark.parametrize("policy", ["intra_op", "interleaved"])
def test_waiting_for_the_clock_leaves_a_profiled_run_alone(policy):
    """With routing that picks the same replicas, both routers give the same run under the H100
    profile's host costs (a pipeline's followers learn a decision when its leader's host makes
    it, so there the runs differ by design)."""
    from pathlib import Path

    d = scenario(policy, generative=True)
    d["hardware"] = {"gpu": "H100-SXM", "count": 4, "interconnect": "nvswitch-h100",
                     "profile": str(Path(__file__).parent.parent / "profiles" / "h100-sxm.yaml")}
    d["workload"] = {"kind": "trace", "path": "t.csv"}
    jobs = [Job(0, 0.0, 1, 64, 64, 6)]
    runs = {}
    for router in ("round_robin", "least_loaded"):
        d["policy"]["router"] = router
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # shapes outside the profile's range, if any
            runs[router] = simulate(parse_scenario(d), jobs, record_ir=False).events
    pd.testing.assert_frame_equal(runs["round_robin"], runs["least_loaded"])


def test_validation_refuses_replicas_before_measuring(tmp_path):
    import yaml

    from hw.validate import validate

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario("intra_op")))
    with pytest.raises(LigerSimError) as e:
        validate(path, tmp_path / "missing-profile.yaml", tmp_path / "out", device="cpu", measured=tmp_path)
    assert "policy.dp" in str(e.value) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("policy,pol", [("intra_op", {}), ("hybrid", {"tp": 1})])
def test_a_routed_run_replays_to_the_same_events(policy, pol):
    """Waiting for the clock is not in the IR: the replay's hosts issue the same operations at the
    same host times, so it gives the run's events."""
    from sim.simulate import replay

    d = scenario(policy, generative=True, router="least_loaded", jobs=16, **pol)
    d["hardware"]["host"] = {"preset": "default"}
    scn = parse_scenario(d)
    jobs = load_jobs(scn, None)
    run = simulate(scn, jobs)
    cols = ["rank", "kernel_id", "start_s", "end_s", "launch_s"]
    pd.testing.assert_frame_equal(replay(run.result.schedule, jobs).events[cols], run.events[cols])


GRID = [(policy, dp, router, admission)
        for policy in ("intra_op", "interleaved", "inter_op", "hybrid")
        for dp in (2, 4)
        for router in ("round_robin", "least_loaded")
        for admission in (("next_group", "least_loaded") if policy in ("inter_op", "hybrid") else ("next_group",))
        if not (policy == "hybrid" and dp == 4)]


@pytest.mark.parametrize("policy,dp,router,admission", GRID)
def test_every_layout_serves_every_token_once(policy, dp, router, admission):
    """Replicas under every policy, router and pipeline admission, including replicas that get
    few or no requests (6 requests, a burst then a lull): each request gets its tokens, on one
    replica, and every replica's GPUs are its own."""
    d = scenario(policy, count=8, dp=dp, generative=True, jobs=6, router=router,
                 **({"tp": 2} if policy == "hybrid" else {}))
    d["serving"]["pipeline_admission"] = admission
    d["hardware"]["host"] = {"preset": "default"}
    d["workload"]["arrival"] = {"process": "onoff", "rate": 400.0, "on_s": 0.01, "off_s": 0.2}
    scn = parse_scenario(d)
    jobs = load_jobs(scn, None)
    r = simulate(scn, jobs, record_ir=False)
    req, summary = run_tables(r.events, jobs, r.result.meta, policy, None)
    assert (req["tokens"] == req["output_tokens"]).all()
    assert sum(summary["replica_requests"]) == len(jobs)
    per = 8 // dp
    replica_of = r.events.groupby("request_id")["rank"].agg(lambda x: {rk // per for rk in x})
    assert (replica_of.map(len) == 1).all()
