"""A sweep's lines: hybrid degrees by name, `all` as every way to parallelise the GPUs that the
model allows, `--vary` fields, each line checked before any point runs."""

from __future__ import annotations

import warnings

import pytest

from sim.curve import (
    parse_vary,
    policy_degrees,
    policy_label,
    policy_variant,
    scenario_variants,
    sweep,
    with_setting,
)
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
    assert policy_degrees("hybrid:2x2+dp2") == ("hybrid", (2, 2))
    for bad in ("hybrid:2by4", "hybrid:x4", "hybrid:0x8", "intra_op:2x2", "hybrid:"):
        with pytest.raises(LigerSimError, match="hybrid:TPxPP"):
            policy_degrees(bad)
    for bad in ("intra_op+2", "intra_op+dp", "intra_op+dp0", "intra_op+tp2"):
        with pytest.raises(LigerSimError, match=r"\+dpN"):
            policy_variant({}, bad)
    assert policy_label("hybrid:02X2+DP02") == "hybrid:2x2+dp2"
    d = twelve_heads_on_8()
    assert policy_variant(d, "hybrid:4x2")["policy"] == {"name": "hybrid", "tp": 4, "pp": 2}
    d["policy"] = {"name": "hybrid", "tp": 2, "pp": 4}
    assert policy_variant(d, "hybrid")["policy"] == {"name": "hybrid", "tp": 2, "pp": 4}
    assert policy_variant(d, "intra_op")["policy"] == {"name": "intra_op"}
    assert policy_variant(d, "intra_op+dp2")["policy"] == {"name": "intra_op", "dp": 2}
    d["policy"] = {"name": "intra_op", "dp": 4}
    assert policy_variant(d, "interleaved")["policy"] == {"name": "interleaved", "dp": 4}  # the scenario's
    assert policy_variant(d, "interleaved+dp1")["policy"] == {"name": "interleaved"}


def test_prefill_and_decode_replicas_by_name():
    """`+PpDd` names a disaggregated line (P prefill, D decode replicas); `all` has none, and a
    line named without a suffix runs the scenario's split and says so."""
    assert policy_label("intra_op+1P3D") == "intra_op+1p3d"
    assert policy_variant({}, "intra_op+1p3d")["policy"] == {"name": "intra_op", "dp": 4, "prefill_replicas": 1}
    d = {"policy": {"name": "intra_op", "dp": 2, "prefill_replicas": 1}}
    assert policy_variant(d, "intra_op+dp2")["policy"] == {"name": "intra_op", "dp": 2}
    assert policy_variant(d, "intra_op+dp1")["policy"] == {"name": "intra_op"}
    assert policy_variant(d, "intra_op")["policy"] == d["policy"]
    assert policy_label("intra_op+1P2D:02/1") == "intra_op+1p2d:2/1"
    assert policy_variant(d, "intra_op+1p2d:2/1")["policy"] == {"name": "intra_op", "dp": 3, "prefill_replicas": 1,
                                                                 "prefill_tp": 2, "tp": 1}
    split = {"policy": {"name": "intra_op", "dp": 3, "prefill_replicas": 1, "prefill_tp": 2, "tp": 1}}
    assert policy_variant(split, "intra_op")["policy"] == split["policy"]  # the scenario's TP per phase kept
    assert policy_variant(split, "intra_op+dp2")["policy"] == {"name": "intra_op", "dp": 2}
    for bad in ("intra_op+0p2d", "intra_op+1p", "intra_op+p1d", "intra_op+1p0d", "intra_op+1p2d:2", "intra_op+1p2d:0/1",
                "intra_op+dp2:2/1"):
        with pytest.raises(LigerSimError, match=r"\+PpDd"):
            policy_variant({}, bad)
    d = tiny("intra_op")
    d["hardware"]["count"] = 2
    d["serving"] = {"mode": "generative"}
    d["workload"].update(batch=1, prompt_tokens=64, output_tokens=4)
    d["workload"].pop("seq_len", None)
    d["policy"] = {"name": "intra_op", "dp": 2, "prefill_replicas": 1}
    scn = parse_scenario(d)
    lines = scenario_variants(["intra_op", "intra_op+dp2"], [], scn, d, load_jobs(scn, None), "s.yaml")
    assert list(lines) == ["intra_op+1p1d", "intra_op+dp2"]
    assert lines["intra_op+dp2"]["policy"] == {"name": "intra_op", "dp": 2}


def test_disaggregated_is_every_split_of_the_gpus_that_fits():
    """`--policies disaggregated`: P prefill replicas of TP A and D decode replicas of TP B with
    P x A + D x B GPUs, A and B dividing one another; those the model cannot run left out with a
    warning; refused for encoder scenarios."""
    from sim.curve import every_split

    assert every_split(4) == ["intra_op+1p3d", "intra_op+2p2d", "intra_op+3p1d", "intra_op+2p1d:1/2",
                              "intra_op+1p1d:1/3", "intra_op+1p2d:2/1", "intra_op+1p1d", "intra_op+1p1d:3/1"]
    d = tiny("intra_op")
    d["serving"] = {"mode": "generative"}
    d["workload"].update(batch=1, prompt_tokens=64, output_tokens=4)
    d["workload"].pop("seq_len", None)
    scn = parse_scenario(d)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lines = scenario_variants(["disaggregated"], [], scn, d, load_jobs(scn, None), "s.yaml")
    assert list(lines) == [p for p in every_split(4) if ":3/" not in p and "/3" not in p]  # TP 3: not the heads
    assert all("left out" in str(w.message) and "tp=3" in str(w.message) for w in caught)
    d["serving"] = {"mode": "encoder"}
    d["workload"] = tiny("intra_op")["workload"]
    enc = parse_scenario(d)
    with pytest.raises(LigerSimError, match="needs serving.mode: generative"):
        scenario_variants(["disaggregated"], [], enc, d, load_jobs(enc, None), "s.yaml")


def test_all_is_every_parallelisation_the_model_allows():
    d = twelve_heads_on_8()
    scn = parse_scenario(d)
    jobs = load_jobs(scn, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = scenario_variants(["all", "inter_op"], [], scn, d, jobs, "s.yaml")
    # tp=8 does not divide 12 heads; replicas of 4, 2 and 1 GPUs each
    assert list(got) == ["inter_op", "hybrid:2x4", "hybrid:4x2", "intra_op+dp2", "inter_op+dp2", "interleaved+dp2",
                         "hybrid:2x2+dp2", "intra_op+dp4", "inter_op+dp4", "interleaved+dp4", "intra_op+dp8"]
    assert got["hybrid:4x2"]["policy"] == {"name": "hybrid", "tp": 4, "pp": 2}
    assert got["hybrid:2x2+dp2"]["policy"] == {"name": "hybrid", "tp": 2, "pp": 2, "dp": 2}
    left_out = [str(w.message) for w in caught if issubclass(w.category, ScenarioWarning)]
    assert len(left_out) == 2 and all("12 attention heads" in m for m in left_out)
    assert any(m.startswith("--policies all: intra_op left out") for m in left_out)
    with pytest.raises(LigerSimError, match="12 attention heads"):  # named explicitly: an error
        scenario_variants(["interleaved"], [], scn, d, jobs, "s.yaml")
    d["policy"] = {"name": "intra_op", "dp": 2}  # a line named without +dpN runs the scenario's replicas
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScenarioWarning)
        got = scenario_variants(["intra_op", "all"], [], parse_scenario(d), d, jobs, "s.yaml")
    assert list(got)[:3] == ["intra_op+dp2", "inter_op", "hybrid:2x4"]
    assert got["intra_op+dp2"]["policy"] == {"name": "intra_op", "dp": 2} and "intra_op" not in got
    d["policy"] = {"name": "inter_op"}
    with warnings.catch_warnings(record=True) as caught:  # a router needs replicas to route to
        warnings.simplefilter("always")
        got = scenario_variants(["inter_op"], parse_vary(["policy.router=round_robin,least_loaded"]),
                                parse_scenario(d), d, jobs, "s.yaml")
    assert list(got) == ["inter_op"]
    assert any("runs one replica, which nothing routes to" in str(w.message) for w in caught)


def test_all_leaves_out_what_does_not_fit_in_memory():
    d = tiny("intra_op")
    d["hardware"]["count"] = 2
    d["model"] = "llama2-70b"  # 140 GB of fp16 weights: not on one 80 GB GPU (inter_op, pp=2: 70 GB each)
    scn = parse_scenario(d)
    jobs = load_jobs(scn, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScenarioWarning)
        got = scenario_variants(["all"], [], scn, d, jobs, "s.yaml")
    assert list(got) == ["intra_op", "inter_op", "interleaved"]  # no hybrid on 2 GPUs
    d["hardware"]["count"] = 1
    scn = parse_scenario(d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScenarioWarning)
        with pytest.raises(LigerSimError, match="no policy of --policies all"):
            scenario_variants(["all"], [], scn, d, jobs, "s.yaml")


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


def test_vary_reads_fields_and_values():
    assert parse_vary(["policy.split=2, 4,8", "serving.groups=3", "hardware.interconnect=pcie4"]) == [
        ("policy.split", [2, 4, 8]), ("serving.groups", [3]), ("hardware.interconnect", ["pcie4"])]
    assert parse_vary(None) == []
    for bad, why in (("policy.split", "KEY=V1,V2"), ("policy.split=", "KEY=V1,V2"), ("=4", "KEY=V1,V2"),
                     ("policy..split=4", "KEY=V1,V2"), ("workload.batch=2,4", "the workload sets the jobs")):
        with pytest.raises(LigerSimError, match=why):
            parse_vary([bad])
    with pytest.raises(LigerSimError, match="given twice"):
        parse_vary(["policy.split=2", "policy.split=4"])
    d = {"model": "llama2-70b", "hardware": {"gpu": "H100-SXM", "count": 4}}
    assert with_setting(d, "model.layers", 4, "s.yaml")["model"] == {"preset": "llama2-70b", "layers": 4}
    assert with_setting(d, "hardware.count", 8, "s.yaml")["hardware"] == {"gpu": "H100-SXM", "count": 8}
    assert d["hardware"]["count"] == 4  # the base mapping is left alone
    with pytest.raises(LigerSimError, match="not a mapping"):
        with_setting({"seed": 3}, "seed.x", 1, "s.yaml")


def test_a_varied_line_is_that_scenario_and_bad_values_name_the_line(tmp_path):
    d = tiny("interleaved")
    d["workload"]["jobs"] = 8
    d["workload"]["arrival"]["rate"] = 2000.0  # jobs overlap: how many may be in flight matters
    scn = parse_scenario(d)
    curve = sweep(scn, d, None, ["interleaved"], [2000.0], tmp_path, workers=1, progress=False,
                  vary=parse_vary(["policy.depth=1,6"]))
    assert list(curve["policy"]) == ["interleaved policy.depth=1", "interleaved policy.depth=6"]
    for depth, row in zip((1, 6), curve.itertuples()):
        direct = parse_scenario({**d, "policy": {"name": "interleaved", "depth": depth}})
        jobs = load_jobs(direct, None)
        run = simulate(direct, jobs, record_ir=False)
        assert row.kernels == len(run.events)
        _, summary = run_tables(run.events, jobs, run.result.meta, "interleaved", run.result.sim_wall_s)
        assert row.jct_mean_s == pytest.approx(summary["jct_mean_s"], rel=1e-12)
    assert curve["jct_mean_s"].iloc[0] != curve["jct_mean_s"].iloc[1]  # one job at a time, or six
    with pytest.raises(LigerSimError, match="interleaved policy.depth=0"):
        sweep(scn, d, None, ["interleaved"], [2000.0], tmp_path / "bad", workers=1, progress=False,
              vary=parse_vary(["policy.depth=4,0"]))


def test_each_varied_line_fits_the_jobs_to_its_own_context(tmp_path):
    from tests.test_generative import gen

    d = gen("intra_op", jobs=30)
    d["model"]["context"] = 330  # some prompts fill it, some outputs overrun it (see test_generative)
    scn = parse_scenario(d)
    rate = d["workload"]["arrival"]["rate"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScenarioWarning)
        curve = sweep(scn, d, None, ["intra_op"], [rate], tmp_path, workers=1, progress=False,
                      vary=parse_vary(["serving.over_context=allow,enforce"]))
        enforce = parse_scenario({**d, "serving": {**d["serving"], "over_context": "enforce"}})
        served = load_jobs(enforce, None)
    allow, cut = curve.set_index("policy")["jobs"]
    assert allow == 30 and cut == len(served) < 30  # the enforcing line served what a server would


def test_warnings_of_the_points_are_said_once_and_ignored_knobs_draw_one_line(tmp_path):
    from pathlib import Path

    from sim.profile import ProfileWarning

    d = tiny("interleaved")
    d["hardware"] = {"gpu": "H100-SXM", "count": 4, "interconnect": "nvswitch-h100",
                     "profile": str(Path(__file__).resolve().parent.parent / "profiles" / "h100-sxm.yaml")}
    d["workload"]["jobs"] = 6
    scn = parse_scenario(d)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        curve = sweep(scn, d, None, ["interleaved", "intra_op"], [100.0, 400.0], tmp_path, workers=2,
                      progress=False, vary=parse_vary(["policy.depth=1,6"]))
    said = [(w.category, str(w.message)) for w in caught]
    profile = [m for c, m in said if c is ProfileWarning]
    assert profile and len(profile) == len(set(profile))  # several workers met them; each said once
    assert ("--vary policy.depth: intra_op does not read it; one intra_op line" in
            [m for c, m in said if c is ScenarioWarning])
    assert sorted(set(curve["policy"])) == ["interleaved policy.depth=1", "interleaved policy.depth=6", "intra_op"]


def test_a_worker_that_does_not_share_memory_does_not_repeat_the_drivers_warnings(tmp_path, monkeypatch):
    """Spawned workers (Python 3.14's default is forkserver; Ray's are separate processes) start
    with no record of what the driver already said: a profile of another GPU is said once."""
    import functools
    import multiprocessing
    from pathlib import Path

    import sim.curve
    from sim.profile import ProfileWarning

    monkeypatch.setattr(sim.curve, "ProcessPoolExecutor", functools.partial(
        sim.curve.ProcessPoolExecutor, mp_context=multiprocessing.get_context("spawn")))
    d = tiny("intra_op")  # an A100 scenario priced with the H100's profile
    d["hardware"]["profile"] = str(Path(__file__).resolve().parent.parent / "profiles" / "h100-sxm.yaml")
    d["workload"]["jobs"] = 4
    scn = parse_scenario(d)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sweep(scn, d, None, ["intra_op"], [100.0, 200.0], tmp_path, workers=2, progress=False)
    other_gpu = [str(w.message) for w in caught if w.category is ProfileWarning and "A100" in str(w.message)]
    assert len(other_gpu) == 1, other_gpu


def test_the_knob_table_covers_every_policy_field():
    """A policy field added to the schema must be placed in `sim.policies.KNOBS`, or sweeps would
    draw it as a line of its own under policies that ignore it (or collapse lines that differ)."""
    from sim.policies import GENERATIVE_KNOBS, KNOBS, POLICIES, POLICY_FIELDS
    from sim.scenario import PolicySpec

    every = {"policy.name", "policy.tp", "policy.pp", "policy.dp", "policy.router",
             "policy.expert_parallel"}  # read by every policy
    fields = {f"policy.{f}" for f in PolicySpec.model_fields} - every
    assert fields == {f for f in POLICY_FIELDS if f.startswith("policy.")}
    assert set(KNOBS) == set(GENERATIVE_KNOBS) == set(POLICIES)
    assert all(set(k) <= set(POLICY_FIELDS) for t in (KNOBS, GENERATIVE_KNOBS) for k in t.values())


def test_only_pipelines_read_how_they_admit_requests():
    """A sweep of serving.pipeline_admission draws one line for the policies that do not read it."""
    from sim.policies import reads

    assert [p for p in ("intra_op", "inter_op", "interleaved", "hybrid")
            if reads(p, "serving.pipeline_admission", generative=True)] == ["inter_op", "hybrid"]


def test_varying_a_field_of_a_section_the_scenario_leaves_out_starts_from_its_preset():
    """`--vary hardware.host.launch_s=...` on a scenario without `host:` was refused for missing
    fields: the section started from nothing instead of the default preset it stands for."""
    from sim.curve import with_setting

    d = tiny("intra_op")
    d["hardware"].pop("host", None)
    varied = with_setting(d, "hardware.host.launch_s", 2e-5, "s.yaml")
    assert varied["hardware"]["host"] == {"preset": "default", "launch_s": 2e-5}
    scn = parse_scenario(varied)
    assert scn.hardware.host.launch_s == 2e-5 and scn.hardware.host.sync_wakeup_s == 10e-6
    with pytest.raises(LigerSimError, match=r"--vary model.layers.x: model.layers is 4"):
        with_setting({**d, "model": {"preset": "llama2-7b", "layers": 4}}, "model.layers.x", 1, "s.yaml")
