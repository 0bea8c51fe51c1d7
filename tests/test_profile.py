"""Calibrated profiles: format round-trip, clear errors, interpolation and its fallback."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import pytest
import yaml

from sim import kernels as K
from sim.contention import ContentionTable
from sim.costs import ProfileCost, RooflineCost
from sim.errors import LigerSimError
from sim.links import build_topology
from sim.presets import INTERCONNECTS
from sim.profile import (
    PROFILE_VERSION,
    EmulatedTimes,
    MeasuredKernels,
    Measurement,
    Profile,
    ProfileWarning,
    contention_table,
    links_section,
    load_profile,
    profile_from_dict,
    save_profile,
)
from sim.scenario import load_scenario
from sim.simulate import load_jobs, make_engine, simulate

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures" / "validation"
MS = [16, 64, 256, 1024]


def roofline() -> RooflineCost:
    return RooflineCost(989e12, 3.35e12, 132, 2e-6, build_topology(INTERCONNECTS["nvswitch-h100"], 2))


def a_profile() -> Profile:
    gemm = [Measurement({"m": m, "n": 1024, "k": 1024}, 1e-5 * (1 + m / 64), 0.9e-5, 1.2e-5 * (1 + m / 64), 9)
            for m in MS]
    norm = [Measurement({"elems": e}, 2e-6 * (1 + e / 1e5), 2e-6, 3e-6, 9, name="layernorm_1",
                        bytes=6.0 * e) for e in (4096, 65536, 1 << 20)]
    return Profile(device={"name": "Test GPU", "sms": 132}, date="2026-01-01", command="test",
                   host={"launch_s": 4e-6, "sync_wakeup_s": 7e-6}, kernels={"gemm": gemm, "layernorm": norm},
                   contention={"measurements": [], "table": [
                       {"victim": "compute", "other": "memory", "priority": "higher", "slowdown": 1.2}]})


def test_save_load_round_trip(tmp_path):
    p = a_profile()
    path = save_profile(p, tmp_path / "p.yaml")
    q = load_profile(path)
    assert q.to_dict() == p.to_dict()
    assert yaml.safe_load(path.read_text())["version"] == PROFILE_VERSION
    assert q.contention_pairs() == [("compute", "memory", "higher", 1.2, "any")]


def test_clear_errors(tmp_path):
    with pytest.raises(LigerSimError, match="profile file not found"):
        load_profile(tmp_path / "missing.yaml")
    d = a_profile().to_dict()
    with pytest.raises(LigerSimError, match=r"version: profile version 99 is not supported"):
        profile_from_dict({**d, "version": 99}, "p.yaml")
    with pytest.raises(LigerSimError, match="not a ligersim profile"):
        profile_from_dict({"format": "other"}, "p.yaml")
    bad = {**d, "kernels": {"gemm": [{"dims": {"m": 1, "n": 1, "k": 1}, "median_s": -1}]}}
    with pytest.raises(LigerSimError, match=r"kernels.gemm\[0\].median_s: median_s must be a finite number > 0"):
        profile_from_dict(bad, "p.yaml")
    bad = {**d, "kernels": {"gemm": [{"dims": {"m": 1, "n": 1, "k": 1}, "median_s": float("inf")}]}}
    with pytest.raises(LigerSimError, match=r"median_s must be a finite number > 0, got inf"):
        profile_from_dict(bad, "p.yaml")
    for bad, says in (({"kernels": {"frobnicate": []}}, r"kernels.frobnicate: unknown kernel kind"),
                      ({"kernels": {"gemm": [{"dims": {"m": "x"}, "median_s": 1e-5}]}}, r"gemm\[0\].dims.m: must be whole"),
                      ({"kernels": {"gemm": [{"dims": {"m": -5}, "median_s": 1e-5}]}}, r"got -5"),
                      ({"host": "x"}, r"host: must be a mapping"), ({"links": [1]}, r"links: must be a mapping")):
        with pytest.raises(LigerSimError, match=says):
            profile_from_dict({**d, **bad}, "p.yaml")
    bad = {**d, "contention": {"table": [{"victim": "gpu", "other": "memory", "slowdown": 2}]}}
    with pytest.raises(LigerSimError, match=r"contention.table\[0\]"):
        profile_from_dict(bad, "p.yaml")
    bad = {**d, "host_in_situ": {"intra_op": {"launch": {"q": 1e-4}, "launch_linear": {"q": ["b", 1e-4]}}}}
    with pytest.raises(LigerSimError, match=r"host_in_situ.intra_op.launch_linear: must map op names to \[dim"):
        profile_from_dict(bad, "p.yaml")
    bad = {**d, "host_in_situ": {"intra_op": {"launch": {"q": 1e-4}, "launch_stats": {"q": [3, 1e-4]}}}}
    with pytest.raises(LigerSimError, match=r"host_in_situ.intra_op.launch_stats: must map op names to \[samples"):
        profile_from_dict(bad, "p.yaml")


GEMM = {"dims": {"m": 1, "n": 1, "k": 1}, "median_s": 1e-5}
SITU = {"launch": {"q": 1e-4}}


@pytest.mark.parametrize("bad, field, says", [
    ({"kernels": {"gemm": [{**GEMM, "median_s": True}]}}, r"kernels.gemm\[0\].median_s", "must be a number, got true"),
    ({"kernels": {"gemm": [{**GEMM, "p10_s": True}]}}, r"kernels.gemm\[0\].p10_s", "must be a finite number ≥ 0, got true"),
    ({"kernels": {"gemm": [{**GEMM, "p90_s": "x"}]}}, r"kernels.gemm\[0\].p90_s", "must be a finite number ≥ 0, got 'x'"),
    ({"kernels": {"gemm": [{**GEMM, "flops": False}]}}, r"kernels.gemm\[0\].flops", "got false"),
    ({"kernels": {"gemm": [{**GEMM, "bytes": math.inf}]}}, r"kernels.gemm\[0\].bytes", "got inf"),
    ({"kernels": {"gemm": [{**GEMM, "reps": True}]}}, r"kernels.gemm\[0\].reps", "must be a whole number ≥ 1, got true"),
    ({"kernels": {"gemm": [{**GEMM, "reps": 2.5}]}}, r"kernels.gemm\[0\].reps", "got 2.5"),
    ({"kernels": {"gemm": [{**GEMM, "dims": {"m": True}}]}}, r"kernels.gemm\[0\].dims.m", "must be whole numbers"),
    ({"contention": {"table": [{"victim": "compute", "other": "memory", "slowdown": True}]}},
     r"contention.table\[0\].slowdown", "must be a number, got true"),
    ({"contention": {"table": [{"victim": "compute", "other": "memory", "slowdown": math.inf}]}},
     r"contention.table\[0\].slowdown", "slowdown must be a finite number ≥ 1, got inf"),
    ({"host": {"launch_s": True}}, "host.launch_s", "must be a time ≥ 0 in seconds, got true"),
    ({"host": {"runtime_s": False}}, "host.runtime_s", "got false"),  # every host value, not five of them
    ({"host": {"record_s": "4e-6"}}, "host.record_s", "got '4e-6'"),  # was dropped without a word
    ({"host": {"sync_wakeup_s": math.nan}}, "host.sync_wakeup_s", "got nan"),
    ({"host_ops": {"q": True}}, "host_ops", "must map op names to host times"),
    ({"host_in_situ": {"intra_op": {"launch": {"q": True}}}}, "host_in_situ.intra_op", "must be an in-situ entry"),
    ({"host_in_situ": {"intra_op": {**SITU, "launch_linear": {"q": ["b", 1e-4, True, 3]}}}},
     "host_in_situ.intra_op.launch_linear", "must map op names"),
    ({"host_in_situ": {"intra_op": {**SITU, "launch_stats": {"q": [True, 1e-4, 2e-4]}}}},
     "host_in_situ.intra_op.launch_stats", "must map op names"),
    ({"host_in_situ": {"intra_op": {**SITU, "record_stats": [3, False, 1e-4]}}},
     "host_in_situ.intra_op.record_stats", "must be \\[samples"),
    ({"host_in_situ": {"intra_op": {**SITU, "after_s": {"sync": True}}}}, "host_in_situ.intra_op.after_s",
     "must map sync and sleep_until"),
    ({"host_in_situ": {"intra_op": {**SITU, "sleep_late_s": True}}}, "host_in_situ.intra_op.sleep_late_s", "got true"),
    ({"host_in_situ": {"intra_op": {**SITU, "record_s": True}}}, "host_in_situ.intra_op.record_s", "got true"),
    ({"host_in_situ": {"intra_op": {**SITU, "wait_s": "x"}}}, "host_in_situ.intra_op.wait_s", "got 'x'"),
    ({"emulated_collective": [{"n": True, "target_s": 1e-5, "median_s": 2e-5}]}, r"emulated_collective\[0\]",
     "must be a list of {n: GPUs ≥ 1, target_s, median_s: seconds ≥ 0}"),
    ({"emulated_collective": [{"n": 2, "target_s": 1e-5, "median_s": True}]}, r"emulated_collective\[0\]", "must be"),
    ({"emulated_collective": [{"n": 2, "target_s": 1e-5}]}, r"emulated_collective\[0\]", "must be"),
    ({"emulated_collective": {"n": 2}}, "emulated_collective", "must be a list"),
])
def test_a_profile_number_that_is_true_false_or_text_is_an_error(tmp_path, bad, field, says):
    """A profile's numbers are numbers: `true` is not read as 1 second (or 1 sample), text is not
    dropped or a traceback; the error names the file and the field."""
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({**a_profile().to_dict(), **bad}))
    with pytest.raises(LigerSimError, match=f"^{re.escape(str(path))}: {field}: .*{says}"):
        load_profile(path)


def test_interpolation_exact_at_measured_points_and_monotone_between():
    roof = roofline()
    mk = MeasuredKernels(a_profile(), roof.spec_solo)
    for m, meas in zip(MS, a_profile().kernels["gemm"]):
        assert mk.estimate(K.gemm("g", m, 1024, 1024)) == pytest.approx(meas.median_s, rel=1e-12)
    ts = [mk.estimate(K.gemm("g", m, 1024, 1024)) for m in range(16, 1025, 7)]
    assert all(b >= a for a, b in zip(ts, ts[1:]))
    # log-log between neighbours: at the geometric mean of work, the geometric mean of times
    mid = mk.estimate(K.gemm("g", 32, 1024, 1024))
    lo, hi = (a_profile().kernels["gemm"][i].median_s for i in (0, 1))
    assert mid == pytest.approx(math.sqrt(lo * hi), rel=1e-9)
    # named pointwise ops interpolate over bytes within their own op
    spec = K.pointwise("layernorm", "layernorm_1", 20000, 2, 1, 8.0)
    spec.bytes = 6.0 * 20000
    t = mk.estimate(spec)
    assert 2e-6 * (1 + 4096 / 1e5) < t < 2e-6 * (1 + 65536 / 1e5)


def test_an_in_context_profile_prices_each_op_of_a_shared_shape_by_its_own_entries():
    """Timed in context, the Q and K projections of one shape took different times (which op runs
    before a kernel sets what it finds in L2): an in-context profile keeps an entry per op, used
    exactly and for interpolation along the op's own points; an op or piece without entries, and
    any profile timed alone, price the shape as before."""
    named = [Measurement({"m": m, "n": 1024, "k": 1024}, f * 1e-5 * (1 + m / 64), 0, 0, 9, name=op)
             for op, f in (("q_proj", 1.1), ("k_proj", 1.2)) for m in (16, 256)]
    prof = a_profile()
    prof.kernels["gemm"] = prof.kernels["gemm"] + named
    plain = MeasuredKernels(prof, roofline().spec_solo)
    prof.settings["in_context"] = True
    mk = MeasuredKernels(prof, roofline().spec_solo)
    q, kk = K.gemm("q_proj", 256, 1024, 1024), K.gemm("k_proj", 256, 1024, 1024)
    assert mk.estimate(q) == pytest.approx(1.1e-5 * 5, rel=1e-12)
    assert mk.estimate(kk) == pytest.approx(1.2e-5 * 5, rel=1e-12)
    # between the op's own points: q stays 1.1/1.2 of k (the anonymous family would give both one time)
    q_mid, k_mid = mk.estimate(K.gemm("q_proj", 64, 1024, 1024)), mk.estimate(K.gemm("k_proj", 64, 1024, 1024))
    assert q_mid == pytest.approx(1.1 / 1.2 * k_mid, rel=1e-9)
    # an op without entries and a piece of a split q_proj (timed alone, whatever the order of the
    # entries) take the shape's entry timed alone, not another op's in-context time
    v = K.gemm("v_proj", 256, 1024, 1024)
    piece = K.split_gemm(K.gemm("q_proj", 256, 2048, 1024), 0.5)[0]
    assert piece.dims["n"] == 1024 and mk.estimate(piece) == mk.estimate(v) == pytest.approx(5e-5, rel=1e-12)
    prof.kernels["gemm"] = named + a_profile().kernels["gemm"]  # named entries first this time
    first = MeasuredKernels(prof, roofline().spec_solo)
    assert first.estimate(piece) == first.estimate(v) == pytest.approx(5e-5, rel=1e-12)
    # a shape only ops measured answers for an op without entries of its own
    only = K.gemm("v_proj", 16, 1024, 1024)
    prof.kernels["gemm"] = named
    assert MeasuredKernels(prof, roofline().spec_solo).estimate(only) in (pytest.approx(1.1e-5 * 1.25),
                                                                          pytest.approx(1.2e-5 * 1.25))
    # timed alone, the profile prices every op of the shape alike (the last entry of the shape)
    assert plain.estimate(q) == plain.estimate(kk) == plain.estimate(v)


def test_decode_attention_follows_the_longest_context_within_its_batch_size():
    """Decode attention is measured per batch size at even contexts; an iteration with uneven
    contexts costs what b x the longest context costs (padded or per-sequence kernels), and two
    batch sizes are distinct families, so b = 8 at the same bytes is not priced as b = 1."""
    prof = a_profile()
    meas = []
    for b in (1, 8):
        for c in (64, 256, 1024):
            spec = K.decode_attention("decode_attention", 8, 8, 128, [c] * b)
            meas.append(Measurement(dict(spec.dims), (3e-6 + spec.bytes / 2e12) * (2 if b == 8 else 1), 0, 0, 9,
                                    name="decode_attention", flops=spec.flops, bytes=spec.bytes))
    prof.kernels["decode_attention"] = meas
    mk = MeasuredKernels(prof, roofline().spec_solo)
    even = K.decode_attention("decode_attention", 8, 8, 128, [256] * 8)
    uneven = K.decode_attention("decode_attention", 8, 8, 128, [64] * 6 + [256, 1408])
    assert even.dims["ctx"] == uneven.dims["ctx"] and uneven.dims["ctx_max"] > even.dims["ctx_max"]
    assert mk.estimate(even) == pytest.approx(meas[4].median_s, rel=1e-12)  # measured exactly
    assert mk.estimate(uneven) > 1.5 * mk.estimate(even)
    one = K.decode_attention("decode_attention", 8, 8, 128, [512])
    assert mk.estimate(one) < 0.7 * mk.estimate(K.decode_attention("decode_attention", 8, 8, 128, [64] * 8))


def test_roofline_with_one_warning_outside_the_measured_range():
    roof = roofline()
    mk = MeasuredKernels(a_profile(), roof.spec_solo)
    big = K.gemm("g", 8192, 1024, 1024)
    with pytest.warns(ProfileWarning, match="outside the measured range"):
        t = mk.estimate(big)
    edge = K.gemm("g", 1024, 1024, 1024)
    ratio = a_profile().kernels["gemm"][-1].median_s / roof.spec_solo(edge)
    assert t == pytest.approx(roof.spec_solo(big) * ratio)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mk.estimate(K.gemm("g", 16384, 1024, 1024))  # same family: no second warning


def test_kind_absent_from_the_profile_is_an_error():
    mk = MeasuredKernels(a_profile(), roofline().spec_solo)
    with pytest.raises(LigerSimError, match=r"kernels.softmax: no measurements of kernel kind\(s\) softmax"):
        mk.estimate(K.pointwise("softmax", "softmax", 1024, 1, 1, 5.0))
    with pytest.raises(LigerSimError, match="bgemm, softmax"):
        mk.require({"gemm", "bgemm", "softmax"})


def test_profile_cost_keeps_the_cost_interface_and_caches():
    roof = roofline()
    cost = ProfileCost(roof, MeasuredKernels(a_profile(), roof.spec_solo), EmulatedTimes({}, 3e-6))
    spec = K.gemm("g", 64, 1024, 1024)
    assert cost.solo(K.Kernel(spec, 0)) == cost.spec_solo(spec) == pytest.approx(2e-5)
    ar = K.collective("all_reduce", "ar", 1 << 20)
    assert cost.spec_solo(ar, (0, 1)) == pytest.approx(roof.spec_solo(ar, (0, 1)) + 3e-6)
    assert cost.spec_solo(ar, None) == 0.0
    send = K.collective("send", "send_activations", 1 << 20)  # emulated like an all-reduce: + its overhead
    assert cost.spec_solo(send, (0, 1)) == pytest.approx(roof.spec_solo(send, (0, 1)) + 3e-6)
    assert len(cost._cache) == 4


def test_scenario_profile_resolves_relative_to_the_scenario_and_drives_the_engine(tmp_path):
    data = yaml.safe_load((FIX / "scenario.yaml").read_text())
    data["hardware"]["profile"] = "prof/cpu.yaml"
    (tmp_path / "prof").mkdir()
    (tmp_path / "prof" / "cpu.yaml").write_text((FIX / "profile-cpu.yaml").read_text())
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    scn, base = load_scenario(tmp_path / "s.yaml")
    assert scn.hardware.profile == str((tmp_path / "prof" / "cpu.yaml").resolve())
    engine, cost = make_engine(scn)
    prof = load_profile(scn.hardware.profile)
    assert isinstance(cost, ProfileCost)
    assert engine.host.launch_s == prof.host["launch_s"]
    assert engine.host.kernel_gap_s == 0.0  # measured only by a CUPTI-timed calibration
    assert engine.contention.entries == {}  # CPU profiles measure no contention: kernels never overlap there
    gapped = yaml.safe_load((FIX / "profile-cpu.yaml").read_text())
    gapped["host"]["kernel_gap_s"] = 1.5e-6
    (tmp_path / "prof" / "cpu.yaml").write_text(yaml.safe_dump(gapped))
    data["hardware"]["host"] = {"launch_s": 1e-6, "sync_wakeup_s": 0.0, "kernel_overhead_s": 0.0}  # its own host
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    scn2, _ = load_scenario(tmp_path / "s.yaml")
    engine2 = make_engine(scn2)[0]
    assert (engine2.host.launch_s, engine2.host.kernel_gap_s) == (1e-6, 1.5e-6)
    # in-situ host costs: the scenario's own entry before its policy's
    del data["hardware"]["host"]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    gapped["host_in_situ"] = {scn.policy.name: {"launch": {"q_proj": 1e-4}},
                              f"scenario:{scn.name}": {"launch": {"q_proj": 3e-4}}}
    (tmp_path / "prof" / "cpu.yaml").write_text(yaml.safe_dump(gapped))
    assert make_engine(load_scenario(tmp_path / "s.yaml")[0])[0].host.launch_by_name == {"q_proj": 3e-4}
    data["name"] = "another"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    assert make_engine(load_scenario(tmp_path / "s.yaml")[0])[0].host.launch_by_name == {"q_proj": 1e-4}
    run = simulate(scn, load_jobs(scn, base))
    assert run.events["request_id"].nunique() == 4


def test_a_profile_of_another_gpu_model_is_said_even_with_the_same_sms(tmp_path):
    """The H100 profile under an H200 scenario (both 132 SMs) or an A100 one: one warning naming both."""
    import shutil

    repo = Path(__file__).resolve().parents[1]
    shutil.copy(repo / "profiles" / "h100-sxm.yaml", tmp_path / "h100.yaml")
    data = yaml.safe_load((repo / "scenarios" / "validation" / "intra-tp8-large-saturating.yaml").read_text())
    data["hardware"]["profile"] = "h100.yaml"

    def warned(gpu: str) -> list[str]:
        data["hardware"]["gpu"] = gpu
        (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            make_engine(load_scenario(tmp_path / "s.yaml")[0])
        return [str(w.message) for w in caught if issubclass(w.category, ProfileWarning)]

    assert not [m for m in warned("H100-SXM") if "measured on" in m]
    said = [m for m in warned("H200-SXM") if "measured on" in m]
    assert len(said) == 1 and "measured on NVIDIA H100 80GB HBM3 but the scenario's GPU is H200-SXM" in said[0]
    said = [m for m in warned("A100-PCIe") if "measured on" in m]
    assert len(said) == 1 and "GPU is A100-PCIe: kernel times are the profile's GPU's" in said[0]


def test_scenario_needing_an_unmeasured_kind_fails_up_front(tmp_path):
    prof = a_profile()
    save_profile(prof, tmp_path / "p.yaml")
    data = yaml.safe_load((FIX / "scenario.yaml").read_text())
    data["hardware"]["profile"] = "p.yaml"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    scn, _ = load_scenario(tmp_path / "s.yaml")
    with pytest.raises(LigerSimError, match=r"p.yaml: kernels\.bgemm: no measurements of kernel kind\(s\) bgemm"):
        make_engine(scn)


def test_contention_table_maps_calibration_classes_onto_the_simulator():
    meas = [{"victim": "gemm", "other": "memory", "priority": "higher", "slowdown": s} for s in (1.1, 1.3)]
    meas += [{"victim": "attention", "other": "memory", "priority": "higher", "slowdown": 1.2},
             {"victim": "memory", "other": "collective", "priority": "lower", "slowdown": 7.4},
             {"victim": "collective", "other": "collective", "priority": "equal", "slowdown": 2.0},
             {"victim": "copy", "other": "gemm", "priority": "equal", "slowdown": 0.97}]
    table = {(t["victim"], t["other"], t["priority"]): t["slowdown"] for t in contention_table(meas)}
    assert table == {("compute", "memory", "higher"): 1.2, ("memory", "collective", "lower"): 7.4,
                     ("copy", "compute", "equal"): 1.0}


def test_contention_table_keeps_which_kernel_started_first():
    """A kernel that starts second waits for the SMs the first holds (H100: an emulated collective
    beside a GEMM 1.06-1.36x when it started first, 1.9-2.3x when the GEMM did), so the table has
    an entry per launch order beside the one over both (for kernels that start together)."""
    meas = [{"victim": "collective", "other": "gemm", "priority": "higher", "first": f, "size": z, "slowdown": x}
            for f, z, x in (("victim", "small", 1.36), ("victim", "large", 1.08), ("other", "small", 2.34),
                            ("other", "large", 1.93))]
    table = {(t["priority"], t.get("first", "any")): t["slowdown"] for t in contention_table(meas)}
    assert table == {("higher", "victim"): pytest.approx(1.22), ("higher", "other"): pytest.approx(2.135),
                     ("higher", "any"): pytest.approx((1.36 + 1.93) / 2)}
    prof = Profile(device={"name": "Test GPU"}, date="d", command="c",
                   contention={"measurements": meas, "table": contention_table(meas)})
    loaded = profile_from_dict(prof.to_dict(), "p.yaml")
    t = ContentionTable(loaded.contention_pairs())
    assert t.factor("collective", "compute", 0, 1, "victim") == pytest.approx(1.22)
    assert t.factor("collective", "compute", 0, 1, "other") == pytest.approx(2.135)
    assert t.factor("collective", "compute", 0, 1) == pytest.approx(1.645)  # started together
    assert t.factor("collective", "compute", 1, 0, "other") == 1.0  # no lower-priority entry: none
    bad = prof.to_dict()
    bad["contention"]["table"][0]["first"] = "both"
    with pytest.raises(LigerSimError, match=r"contention.table\[0\].first: first must be one of victim, other, any"):
        profile_from_dict(bad, "p.yaml")


def test_link_fits_of_the_shipped_nccl_tables_report_their_error():
    links = links_section(REPO / "profiles" / "nccl")
    h100 = {(e["collective"], e["n"], e["nodes"]): e for e in links["topologies"]["h100_dgx"]}
    e = h100[("all_reduce", 8, 1)]
    assert 300 < e["bandwidth_GBps"] < 450 and 0 < e["alpha_s"] < 2e-5
    assert 0 < e["median_rel_err"] < 0.15
    assert any("byte-identical" in w for x in links["topologies"]["a100_pairwise_nvlink"] for w in x["warnings"])


def test_host_op_costs_round_trip_and_give_launch_costs(tmp_path):
    prof = a_profile()
    prof.host.update({"launch_s": 9e-6, "generic_op_s": 4e-6, "runtime_s": 5e-6})
    prof.host_ops = {"input_norm": 30e-6, "all_reduce": 50e-6}
    path = save_profile(prof, tmp_path / "p.yaml")
    back = load_profile(path)
    assert back.host_ops == prof.host_ops
    assert back.launch_costs() == pytest.approx({"input_norm": 35e-6, "all_reduce": 55e-6})
    bad = yaml.safe_load(path.read_text())
    bad["host_ops"] = {"input_norm": -1}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(LigerSimError, match="host_ops"):
        load_profile(tmp_path / "bad.yaml")
    assert a_profile().launch_costs() == {}  # none measured: the scalar launch cost applies


def test_emulated_all_reduce_lasts_what_calibration_measured_it_to_last():
    """Small emulated all-reduces end an overhead after their link-model target; large ones are
    still copying through HBM when it passes (H100: 239 us for a 182 us target). Between measured
    targets of a group size, measured/target is interpolated in log target; below, the smallest
    one's excess is added; above, the largest one's ratio applies; an unmeasured group size gets
    the median overhead."""
    rows = [{"interconnect": "nvswitch-h100", "n": 8, "nbytes": b, "target_s": t, "median_s": m}
            for b, t, m in ((1 << 20, 20e-6, 24e-6), (8 << 20, 60e-6, 66e-6), (32 << 20, 180e-6, 240e-6))]
    rows.append({"interconnect": "pcie4", "n": 8, "nbytes": 1 << 20, "target_s": 20e-6, "median_s": 90e-6})
    prof = Profile(device={"name": "Test GPU", "sms": 132}, date="2026-01-01", command="test",
                   emulated_collective=rows)
    em = prof.emulated_times("nvswitch-h100")
    for _, t, m in ((0, 20e-6, 24e-6), (0, 60e-6, 66e-6), (0, 180e-6, 240e-6)):
        assert em.time(t, 8) == pytest.approx(m)
    assert em.time(10e-6, 8) == pytest.approx(14e-6)  # below: + the smallest one's 4 us
    assert em.time(360e-6, 8) == pytest.approx(480e-6)  # above: x 240/180
    mid = em.time(math.sqrt(60e-6 * 180e-6), 8) / math.sqrt(60e-6 * 180e-6)
    assert mid == pytest.approx((66 / 60 + 240 / 180) / 2)  # halfway in log target
    assert 100e-6 * 66 / 60 < em.time(100e-6, 8) < 100e-6 * 240 / 180
    assert em.time(50e-6, 4) == pytest.approx(50e-6 + prof.emulation_overhead_s())
    assert em.time(0.0, 8) == 0.0
    # another interconnect's measurements are not this one's; one never measured uses them all
    assert prof.emulated_times("pcie4").time(20e-6, 8) == pytest.approx(90e-6)
    assert prof.emulated_times("nvlink-v100").time(20e-6, 8) == pytest.approx((24e-6 + 90e-6) / 2)
