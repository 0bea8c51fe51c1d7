"""A sweep's policies: hybrid degrees by name, `all` as every way to parallelise the GPUs that the
model allows, each checked before any point runs."""

from __future__ import annotations

import warnings

import pytest

from sim.curve import expand_policies, policy_degrees, policy_variant, sweep
from sim.errors import LigerSimError, ScenarioWarning
from sim.outputs import run_tables
from sim.scenario import parse_scenario
from sim.simulate import load_jobs, simulate
from tests.conftest import tiny


def twelve_heads_on_8() -> dict:
    scn = tiny("inter_op")
    scn["hardware"]["count"] = 8
    scn["model"].update(hidden=1536, heads=12, kv_heads=12, head_dim=128, ffn=6144, layers=8)
    scn["workload"]["jobs"] = 6
    return scn


def test_hybrid_degrees_by_name():
    assert policy_degrees("hybrid:2x4") == ("hybrid", (2, 4))
    assert policy_degrees("interleaved") == ("interleaved", None)
    for bad in ("hybrid:2by4", "hybrid:x4", "hybrid:0x8", "intra_op:2x2", "hybrid:"):
        with pytest.raises(LigerSimError, match="hybrid:TPxPP"):
            policy_degrees(bad)
    d = twelve_heads_on_8()
    assert policy_variant(d, "hybrid:4x2")["policy"] == {"name": "hybrid", "tp": 4, "pp": 2}
    d["policy"] = {"name": "hybrid", "tp": 2, "pp": 4}
    assert policy_variant(d, "hybrid")["policy"] == {"name": "hybrid", "tp": 2, "pp": 4}
    assert policy_variant(d, "intra_op")["policy"] == {"name": "intra_op"}


def test_all_is_every_parallelisation_the_model_allows():
    d = twelve_heads_on_8()
    scn = parse_scenario(d)
    jobs = load_jobs(scn, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = expand_policies(["all", "inter_op"], scn, d, jobs, "s.yaml")
    assert got == ["inter_op", "hybrid:2x4", "hybrid:4x2"]  # tp=8 does not divide 12 heads
    left_out = [str(w.message) for w in caught if issubclass(w.category, ScenarioWarning)]
    assert len(left_out) == 2 and all("12 attention heads" in m for m in left_out)
    assert any(m.startswith("--policies all: intra_op left out") for m in left_out)
    with pytest.raises(LigerSimError, match="12 attention heads"):  # named explicitly: an error
        expand_policies(["interleaved"], scn, d, jobs, "s.yaml")


def test_all_leaves_out_what_does_not_fit_in_memory():
    d = tiny("intra_op")
    d["hardware"]["count"] = 2
    d["model"] = "llama2-70b"  # 140 GB of fp16 weights: not on one 80 GB GPU (inter_op, pp=2: 70 GB each)
    scn = parse_scenario(d)
    jobs = load_jobs(scn, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScenarioWarning)
        got = expand_policies(["all"], scn, d, jobs, "s.yaml")
    assert got == ["intra_op", "inter_op", "interleaved"]  # no hybrid on 2 GPUs
    d["hardware"]["count"] = 1
    scn = parse_scenario(d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScenarioWarning)
        with pytest.raises(LigerSimError, match="no policy of --policies all"):
            expand_policies(["all"], scn, d, jobs, "s.yaml")


def test_a_hybrid_point_is_that_hybrid(tmp_path):
    d = tiny("intra_op")
    d["workload"]["jobs"] = 10
    scn = parse_scenario(d)
    rate = d["workload"]["arrival"]["rate"]  # the scenario's own: the same jobs as a direct run
    curve = sweep(scn, d, None, ["hybrid:2x2"], [rate], tmp_path, workers=1, progress=False)
    assert list(curve["policy"]) == ["hybrid:2x2"]
    direct = parse_scenario({**d, "policy": {"name": "hybrid", "tp": 2, "pp": 2}})
    jobs = load_jobs(direct, None)
    run = simulate(direct, jobs, record_ir=False)
    _, summary = run_tables(run.events, jobs, run.result.meta, "hybrid", run.result.sim_wall_s)
    assert curve["kernels"].iloc[0] == len(run.events)
    assert curve["jct_mean_s"].iloc[0] == pytest.approx(summary["jct_mean_s"], rel=1e-12)
