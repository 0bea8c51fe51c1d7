"""`ligersim calibrate` on CPU: a profile the simulator loads, resumable, clear device errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from sim.cli import main
from sim.profile import load_profile
from sim.scenario import load_scenario
from sim.simulate import load_jobs, simulate

torch = pytest.importorskip("torch")
FIX = Path(__file__).resolve().parent / "fixtures" / "validation"


@pytest.fixture
def scenario(tmp_path):
    shutil.copy(FIX / "scenario.yaml", tmp_path / "s.yaml")
    return tmp_path / "s.yaml"


def test_quick_cpu_calibration_writes_a_profile_the_simulator_runs_with(tmp_path, scenario, monkeypatch):
    from hw import calibrate as cal

    out = tmp_path / "profiles" / "cpu.yaml"
    calls = {"n": 0}
    real = cal.Calibration._record

    def interrupt_after_10(self, spec, ts):
        real(self, spec, ts)
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt

    monkeypatch.setattr(cal.Calibration, "_record", interrupt_after_10)
    assert main(["calibrate", "-o", str(out), "--quick", "--device", "cpu", "--scenario", str(scenario)]) == 130
    partial = load_profile(out)
    assert partial.status == "partial" and sum(len(v) for v in partial.kernels.values()) == 10

    monkeypatch.setattr(cal.Calibration, "_record", real)
    assert main(["calibrate", "-o", str(out), "--quick", "--device", "cpu", "--scenario", str(scenario)]) == 0
    prof = load_profile(out)
    assert prof.status == "complete" and prof.device["backend"] == "cpu" and prof.device["torch"]
    assert {"gemm", "bgemm", "softmax", "layernorm", "elementwise"} <= set(prof.kernels)
    assert prof.command.startswith("ligersim") or prof.command
    assert prof.host["launch_s"] >= 0 and prof.links["topologies"]["h100_dgx"]
    keys = [(k, m.name, tuple(sorted(m.dims.items()))) for k, v in prof.kernels.items() for m in v]
    assert len(keys) == len(set(keys))  # resumed: nothing measured twice
    fractions = {m.dims["n"] for m in prof.kernels["gemm"]}
    assert len(fractions) > 3  # split pieces k/8 measured beside the whole GEMMs
    for m in prof.kernels["gemm"]:
        assert m.p10_s <= m.median_s <= m.p90_s and m.reps >= 5

    # a re-run resumes from the finished profile and measures nothing new
    timed = {"n": 0}
    real_times = cal.Timer.times

    def count(self, fn, reps=None, warmup=None):
        timed["n"] += 1
        return real_times(self, fn, reps, warmup)

    monkeypatch.setattr(cal.Timer, "times", count)
    assert main(["calibrate", "-o", str(out), "--quick", "--device", "cpu", "--scenario", str(scenario)]) == 0
    assert timed["n"] == 0

    data = yaml.safe_load(scenario.read_text())
    data["hardware"]["profile"] = str(out)
    scenario.write_text(yaml.safe_dump(data))
    scn, base = load_scenario(scenario)
    run = simulate(scn, load_jobs(scn, base))
    assert len(run.events) and (run.events["end_s"] > run.events["start_s"]).all()


def test_cuda_requested_without_cuda_is_a_clear_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["calibrate", "-o", str(tmp_path / "p.yaml"), "--device", "cuda"]) == 2
    assert "--device cuda was requested" in capsys.readouterr().err
    assert not (tmp_path / "p.yaml").exists()


def test_profile_of_another_device_is_not_resumed(tmp_path, capsys):
    prof = yaml.safe_load((FIX / "profile-cpu.yaml").read_text())
    prof["device"]["name"] = "NVIDIA H100 80GB HBM3"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(prof))
    assert main(["calibrate", "-o", str(tmp_path / "p.yaml"), "--quick", "--device", "cpu"]) == 2
    assert "pass --fresh" in capsys.readouterr().err


def test_generative_calibration_measures_iteration_kernels_over_the_workload(tmp_path):
    """A generative scenario's iterations need `decode_attention` and chunked `prefill_attention`
    costs: calibration measures them on synthetic iterations through the hw paged-KV ops, one
    entry per shape, and the simulator then prices the scenario's iterations inside the measured
    range (no extrapolation warning for attention)."""
    import warnings

    from hw.calibrate import TINY_CPU
    from sim.profile import ProfileWarning
    from sim.scenario import parse_scenario

    out = tmp_path / "gen.yaml"
    scn_dict = dict(next(d for d in TINY_CPU if d["name"] == "tiny-generative"))
    scn_path = tmp_path / "gen-scenario.yaml"
    scn_path.write_text(yaml.safe_dump(scn_dict))
    assert main(["calibrate", "-o", str(out), "--quick", "--device", "cpu", "--scenario", str(scn_path)]) == 0
    prof = load_profile(out)
    dec = prof.kernels["decode_attention"]
    assert len({(m.dims["b"], m.dims["ctx"]) for m in dec}) == len(dec) >= 9  # batches x contexts, no duplicates
    assert {m.dims["b"] for m in dec} == {1, 2, 4}
    pre = [m for m in prof.kernels["attention"] if m.name == "prefill_attention"]
    assert any(m.dims["sq"] < m.dims["skv"] for m in pre)  # a chunk behind a cached past
    assert all(m.dims["sq"] <= 32 for m in pre)  # within the token budget
    assert all(m.median_s > 0 for m in dec + pre)

    scn = parse_scenario({**scn_dict, "hardware": {**scn_dict["hardware"], "profile": str(out)}}, str(scn_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = simulate(scn, load_jobs(scn, tmp_path), progress=False)
    assert len(res.jobs) == scn_dict["workload"]["jobs"] and len(res.events)
    outside = [str(w.message) for w in caught if issubclass(w.category, ProfileWarning) and "attention" in str(w.message)]
    assert not outside, outside


def test_host_dispatch_of_every_named_op_is_recorded_and_drives_launch_costs(tmp_path, monkeypatch):
    """On CUDA calibration records each named op's host dispatch time (`host_ops`); forced on
    here on CPU to exercise the machinery (where it would be the whole execution)."""
    from hw import calibrate as cal
    from sim.simulate import make_engine

    real = cal.Settings.make

    def with_host_ops(*a, **k):
        s = real(*a, **k)
        s.host_ops, s.host_op_reps = True, 2
        return s

    monkeypatch.setattr(cal.Settings, "make", with_host_ops)
    out = tmp_path / "p.yaml"
    assert main(["calibrate", "-o", str(out), "--quick", "--device", "cpu"]) == 0
    prof = load_profile(out)
    assert {"qkv_proj", "input_norm", "decode_attention", "prefill_attention", "lm_head"} <= set(prof.host_ops)
    assert all(t > 0 for t in prof.host_ops.values())
    assert {"runtime_s", "generic_op_s"} <= set(prof.host)
    data = dict(next(d for d in cal.TINY_CPU if d["name"] == "tiny-generative"))
    data["hardware"] = {**data["hardware"], "profile": str(out)}
    from sim.scenario import parse_scenario

    engine, _ = make_engine(parse_scenario(data, str(tmp_path / "s.yaml")))
    assert engine.host.launch_by_name == pytest.approx(prof.launch_costs())
    assert engine.host.launch_by_name["decode_attention"] > prof.host["runtime_s"]


def test_host_in_situ_reads_each_ops_host_time_from_a_recorded_run(tmp_path):
    """`hw.host_in_situ`: a launch costs the host time until the rank's next operation, up to a
    blocking op's call; a profile's in-situ entry for the scenario's policy drives the engine."""
    import yaml

    from hw.host_in_situ import measure, op_costs
    from sim.ir import Op, Schedule
    from sim.kernels import Kernel, pointwise
    from sim.profile import save_profile

    def k(name):
        return Kernel(pointwise("elementwise", name, 64, 1, 1, 0.0), 0)

    ops = [Op(0, "stream", 0.0, 0), Op(0, "launch", 1.0, 0, kernel=k("a")), Op(0, "launch", 1.5, 0, kernel=k("b")),
           Op(0, "record", 1.75, 0, event=1), Op(0, "sync", 1.8, event=1), Op(0, "launch", 5.0, 0, kernel=k("a")),
           Op(0, "wait", 5.25, 0, event=1), Op(0, "sleep_until", 6.0, until=9.0), Op(0, "launch", 9.0, 0, kernel=k("b"))]
    got = op_costs(Schedule(1, ops, {}))
    # b's first launch is followed by a record: 0.25; the record and the wait keep their gaps up to
    # the sync's and the sleep's calls (no wait in them); the blocking ops' own gaps (their waits
    # and what follows) are not launches'; the last launch has no successor
    assert got == {"a": [0.5, 0.25], "b": [0.25], "record": [pytest.approx(0.05)], "wait": [0.75]}

    scn = tmp_path / "s.yaml"
    scn.write_text(yaml.safe_dump({**TINY, "policy": {"name": "interleaved"}}))
    measured = measure([str(scn)], "cpu", jobs=3)
    entry = measured["interleaved"]
    assert entry["runs"] == ["s"] and entry["samples"] > 20
    # the named scenario's own entry beside its policy's pooled one (here the same single run)
    assert set(measured) == {"interleaved", "scenario:tiny-situ"}
    assert measured["scenario:tiny-situ"]["samples"] == entry["samples"]
    assert {"q_proj", "layernorm_1", "mlp_all_reduce"} <= set(entry["launch"])
    assert all(t >= 0 for t in entry["launch"].values()) and entry["record_s"] >= 0
    n, mean, p90 = entry["launch_stats"]["q_proj"]
    assert n >= 6 and mean > 0 and p90 >= entry["launch"]["q_proj"] * 0.5
    # Liger syncs before planning each round: the time from each sync's return to the next op
    assert entry["after_s"]["sync"] > 0 and set(entry["after_s"]) <= {"sync", "sleep_until"}

    prof = a_profile_with_situ(entry)
    path = save_profile(prof, tmp_path / "p.yaml")
    assert load_profile(path).host_in_situ == prof.host_in_situ
    other, wake, by_name = prof.host_params("interleaved", 1.0, 1.0)
    # each op's mean: a host-bound run lasts the sum of its ops' costs
    assert by_name == {k: v[1] for k, v in entry["launch_stats"].items()} and wake == 7e-6
    assert by_name != entry["launch"]
    assert other == pytest.approx((entry["record_s"] + entry.get("wait_s", 1.0)) / 2)
    # generative serving has its own key, falling back to its policy's entry when it was not measured
    assert prof.host_params("interleaved/generative", 1.0, 1.0)[2] == by_name
    # a profile without the statistics (as the first H100 profile): the medians
    bare = a_profile_with_situ({k: v for k, v in entry.items() if k != "launch_stats"})
    assert bare.host_params("interleaved", 1.0, 1.0)[2] == entry["launch"]
    # ops whose host cost grows with the sequences they cover: a fitted line beside the flat cost
    from hw.host_in_situ import summarise

    lined = summarise({"prefill_attention": [3e-4, 4e-4, 5e-4] * 4}, ["s"],
                      {"prefill_attention": [(b, 2e-4 + 1e-4 * b) for b in (1, 2, 3)] * 4})
    assert lined["launch_linear"]["prefill_attention"] == ["b", pytest.approx(2e-4), pytest.approx(1e-4), 12]
    prof_l = a_profile_with_situ(lined)
    assert prof_l.host_linear("interleaved") == {"prefill_attention": ("b", pytest.approx(2e-4),
                                                                       pytest.approx(1e-4))}
    assert load_profile(save_profile(prof_l, tmp_path / "l.yaml")).host_linear("interleaved") == \
        prof_l.host_linear("interleaved")
    assert prof.host_linear("interleaved") == {}  # the tiny encoder's kernels all cover one sequence count
    # a scenario measured on its own uses its own entry; any other falls back to its policy's
    own = {**entry, "launch": {k: 2 * v for k, v in entry["launch"].items()}, "launch_stats": {}}
    both = a_profile_with_situ(entry)
    both.host_in_situ["scenario:tiny-situ"] = own
    assert both.host_params(["scenario:tiny-situ", "interleaved"], 1.0, 1.0)[2] == own["launch"]
    assert both.host_params(["scenario:other", "interleaved/generative"], 1.0, 1.0)[2] == by_name
    # a policy without an in-situ entry: the profile's scalar launch cost and host_ops (none here)
    assert prof.host_params("intra_op", 1.0, 1.0) == (4e-6, 7e-6, {})
    # the host's time after blocking ops: the entry's, and nothing where none was measured
    assert prof.host_after("interleaved") == (entry["after_s"], entry.get("sleep_late_s", 0.0))
    assert prof.host_after("intra_op") == ({}, 0.0)
    timed = summarise({"a": [1e-4]}, ["s"], blocking={"sync": [1e-4, 3e-4], "sleep_until": [5e-5],
                                                     "sleep_late": [2e-5, 4e-5]})
    assert timed["after_s"] == {"sleep_until": pytest.approx(5e-5), "sync": pytest.approx(2e-4)}
    assert timed["sleep_late_s"] == pytest.approx(3e-5)


def a_profile_with_situ(entry):
    from sim.profile import Profile

    return Profile(device={"name": "Test GPU", "sms": 132}, date="2026-01-01", command="test",
                   host={"launch_s": 4e-6, "sync_wakeup_s": 7e-6}, host_in_situ={"interleaved": entry})


TINY = {"name": "tiny-situ", "seed": 5, "hardware": {"gpu": "H100-SXM", "count": 2, "interconnect": "nvswitch-h100"},
        "model": {"preset": "liger-encoder", "hidden": 128, "heads": 2, "kv_heads": 2, "head_dim": 64, "ffn": 256,
                  "layers": 2},
        "workload": {"kind": "generate", "jobs": 6, "arrival": {"process": "poisson", "rate": 1000}, "batch": 1,
                     "seq_len": {"dist": "uniform", "low": 8, "high": 32}}}


def test_gemms_whose_weight_a_run_reads_from_hbm_are_timed_cold():
    """A weight that fits in L2 is still read from HBM in a run when the rest of the model's
    weights on the rank pass through L2 first (each layer has its own); one larger than L2 streams
    either way; a small model's weights stay in L2; only GEMMs carry a weight."""
    from hw.calibrate import weight_evicted
    from sim.kernels import gemm, pointwise
    from sim.scenario import ModelSpec

    l2 = 50 << 20  # an H100's
    llama7b = ModelSpec(preset="llama2-7b").shape()
    qkv = gemm("qkv_proj", 8, 3072, 4096)  # 25 MB of a 101 MB layer at TP 4
    assert weight_evicted(llama7b, 4, qkv, l2)
    assert not weight_evicted(llama7b, 1, gemm("gate_up_proj", 8, 2 * 11008, 4096), l2)  # 180 MB: streams anyway
    tiny = ModelSpec(preset="llama2-7b", hidden=512, heads=4, kv_heads=4, head_dim=128, ffn=1024, layers=2).shape()
    assert not weight_evicted(tiny, 1, gemm("qkv_proj", 8, 1536, 512), l2)  # its whole model fits (10 MB)
    deeper = ModelSpec(preset="llama2-7b", hidden=512, heads=4, kv_heads=4, head_dim=128, ffn=1024).shape()
    assert weight_evicted(deeper, 1, gemm("qkv_proj", 8, 1536, 512), l2)  # 32 layers of 5 MB: each layer its own
    assert not weight_evicted(llama7b, 4, pointwise("rmsnorm", "input_norm", 8 * 4096, 2, 1, 6.0), l2)
    assert not weight_evicted(llama7b, 4, qkv, 0)  # no L2 size known (CPU)


def test_a_profile_is_not_resumed_with_other_weight_eviction(tmp_path):
    from hw.calibrate import calibrate
    from sim.errors import LigerSimError
    from sim.profile import load_profile, save_profile

    out = tmp_path / "p.yaml"
    calibrate(out, device="cpu", quick=True, progress=False)
    prof = load_profile(out)
    assert prof.settings["evict_weights"] is False  # on CPU there is no L2 to evict from
    prof.settings["evict_weights"] = True
    save_profile(prof, out)
    with pytest.raises(LigerSimError, match="evicted weights; pass --fresh"):
        calibrate(out, device="cpu", quick=True, progress=False)


def test_ops_but_gemms_and_collectives_are_timed_cold():
    from hw.calibrate import cold_op
    from sim.kernels import attention, collective, gemm, pointwise

    assert cold_op(pointwise("rmsnorm", "input_norm", 8 * 4096, 2, 1, 6.0))
    assert cold_op(pointwise("softmax", "softmax", 1 << 20, 1, 1, 5.0))
    assert cold_op(attention("attention", 1, 8, 128, 128, 64, 8, causal=True))
    assert not cold_op(gemm("qkv_proj", 8, 3072, 4096))  # its weight has its own rule
    assert not cold_op(collective("all_reduce", "attn_all_reduce", 1 << 20))


def test_a_profile_is_not_resumed_with_ops_timed_otherwise(tmp_path):
    from hw.calibrate import calibrate
    from sim.errors import LigerSimError
    from sim.profile import load_profile, save_profile

    out = tmp_path / "p.yaml"
    calibrate(out, device="cpu", quick=True, progress=False)
    prof = load_profile(out)
    assert prof.settings["cold_ops"] is False  # on CPU there is no L2 to flush
    prof.settings["cold_ops"] = True
    save_profile(prof, out)
    with pytest.raises(LigerSimError, match=r"ops timed cold \(settings.cold_ops\); pass --fresh"):
        calibrate(out, device="cpu", quick=True, progress=False)


def test_a_policys_in_situ_entry_pools_its_scenarios_entries():
    """The pooled mean is exact (what the simulator charges); medians, p90s, lines and the rest
    are weighted by the samples behind them."""
    from hw.host_in_situ import pool

    e1 = {"launch": {"a": 1.0}, "launch_stats": {"a": [2, 1.5, 2.0]}, "samples": 10, "runs": ["x"],
          "record_s": 1.0, "after_s": {"sync": 2.0}, "launch_linear": {"p": ["b", 1.0, 2.0, 10]}, "jobs": 8}
    e2 = {"launch": {"a": 3.0, "b": 2.0}, "launch_stats": {"a": [6, 3.5, 4.0], "b": [1, 2.0, 2.0]}, "samples": 30,
          "runs": ["y"], "record_s": 3.0, "after_s": {"sync": 4.0, "sleep_until": 1.0},
          "launch_linear": {"p": ["b", 3.0, 4.0, 30]}, "jobs": 8}
    got = pool([e1, e2])
    assert got["launch_stats"]["a"] == [8, pytest.approx(3.0), pytest.approx(3.5)]  # (2*1.5 + 6*3.5) / 8
    assert got["launch"] == {"a": pytest.approx(2.5), "b": 2.0}
    assert got["launch_stats"]["b"] == [1, 2.0, 2.0]
    assert got["samples"] == 40 and got["runs"] == ["x", "y"] and got["jobs"] == 8
    assert got["record_s"] == pytest.approx(2.5) and got["after_s"] == {"sleep_until": 1.0, "sync": pytest.approx(3.5)}
    assert got["launch_linear"]["p"] == ["b", pytest.approx(2.5), pytest.approx(3.5), 40]
    assert pool([e1]) == {k: v for k, v in e1.items()}
    # records and waits: their means pooled exactly, as the launches'
    w1, w2 = {**e1, "wait_stats": [4, 1.0, 2.0]}, {**e2, "wait_stats": [12, 3.0, 6.0]}
    assert pool([w1, w2])["wait_stats"] == [16, pytest.approx(2.5), pytest.approx(5.0)]
    assert "record_stats" not in pool([w1, w2])


def test_records_and_waits_cost_their_own_means():
    """An event record and a stream wait each cost the host their in-situ mean (in the chunked
    generative H100 run a record's was 29 us, a wait's 9 us, and host times skew right); a
    profile from before keeps their medians; a policy without an entry charges the launch cost."""
    from hw.host_in_situ import summarise

    entry = summarise({"a": [1e-4] * 3, "record": [1e-5, 1e-5, 1e-5, 5e-5], "wait": [4e-6, 6e-6]}, ["s"])
    assert entry["record_stats"][:2] == [4, pytest.approx(2e-5)] and entry["record_stats"][2] >= 5e-5
    assert entry["record_s"] == pytest.approx(1e-5)  # the median, as before
    prof = a_profile_with_situ(entry)
    assert prof.host_record_wait("interleaved") == (pytest.approx(2e-5), pytest.approx(5e-6))
    before = a_profile_with_situ({k: v for k, v in entry.items() if not k.endswith("_stats")})
    assert before.host_record_wait("interleaved") == (pytest.approx(1e-5), pytest.approx(5e-6))
    assert prof.host_record_wait("intra_op") == (None, None)


def test_calibration_measures_a_ready_syncs_host_time_and_adds_it_to_an_older_profile(tmp_path):
    """`host.sync_call_s`: issue to return of a sync on an event already passed, through the
    policy driver; a resumed profile from before it was measured gets it, the rest is kept."""
    from hw.calibrate import Calibration, Settings

    settings = Settings.make("cpu", True, [])
    cal = Calibration(tmp_path / "p.yaml", settings, "test", False, False)
    cal.host()
    host = cal.profile.host
    assert 0 < host["sync_call_s"] < 1e-3
    old = {k: v for k, v in host.items() if k != "sync_call_s"}
    cal.profile.host = dict(old)
    cal.save(force=True)
    again = Calibration(tmp_path / "p.yaml", settings, "test", False, False)
    again.host()
    assert again.profile.host["sync_call_s"] > 0
    assert {k: v for k, v in again.profile.host.items() if k != "sync_call_s"} == old
    assert load_profile(tmp_path / "p.yaml").host["sync_call_s"] == again.profile.host["sync_call_s"]


def test_a_resumed_calibration_rebuilds_the_policys_entry_from_every_scenarios_own(tmp_path):
    """A calibration cut off after some in-situ runs kept their own entries; the resumed one runs
    only the missing scenarios and pools the policy's entry from all of them (the stage runs on
    CUDA; here it is called on the CPU)."""
    import yaml

    from hw.calibrate import Calibration, Settings
    from hw.host_in_situ import pool

    paths = []
    for name in ("tiny-a", "tiny-b"):
        paths.append(tmp_path / f"{name}.yaml")
        paths[-1].write_text(yaml.safe_dump({**TINY, "name": name}))
    settings = Settings.make("cpu", True, [str(p) for p in paths])
    settings.in_situ_jobs = 2
    cal = Calibration(tmp_path / "p.yaml", settings, "test", False, False)
    cal.host_in_situ()
    situ = cal.profile.host_in_situ
    a, b = situ["scenario:tiny-a"], situ["scenario:tiny-b"]
    assert situ["intra_op"] == pool([a, b]) and situ["intra_op"]["runs"] == ["tiny-a", "tiny-b"]
    del situ["intra_op"], situ["scenario:tiny-b"]  # cut off after the first run
    a["launch"] = {k: 2 * v for k, v in a["launch"].items()}  # (to see that it is not measured again)
    cal.save(force=True)
    again = Calibration(tmp_path / "p.yaml", settings, "test", False, False)
    again.host_in_situ()
    situ = again.profile.host_in_situ
    assert situ["scenario:tiny-a"] == a and "scenario:tiny-b" in situ
    assert situ["intra_op"] == pool([a, situ["scenario:tiny-b"]])


def test_in_context_calibration_times_each_kernel_inside_the_jobs_sequence(tmp_path, monkeypatch):
    """`--in-context`: a target's kernels are timed inside one job's whole sequence, run through
    the library's ops in order over per-layer weights (`Timer.each`); each op of a shared shape
    has its own entry; split pieces are still timed alone; a resume under the other rule is refused."""
    from hw import calibrate as cal
    from hw.calibrate import Timer, calibrate, targets

    seen: list[tuple[int, int]] = []
    each = Timer.each

    def spy(self, fns, passes):
        rows = each(self, fns, passes)
        seen.append((len(fns), passes))
        assert len(rows) == passes and all(len(r) == len(fns) for r in rows)
        return rows

    monkeypatch.setattr(Timer, "each", spy)
    out = tmp_path / "ctx.yaml"
    prof = calibrate(out, device="cpu", quick=True, progress=False, in_context=True)
    assert prof.settings["in_context"] is True and prof.status == "complete"
    settings = cal.Settings.make("cpu", True, None)
    tgt = targets(settings)
    encoder = [t for t in tgt if t.model.arch == "encoder"]
    assert seen and len(seen) <= len(tgt) + len(cal.gen_targets(settings))  # one sequence per target at most
    # one job's sequence: every layer's kernels but the collectives, prologue and epilogue
    from sim.layers import epilogue_kernels, layer_kernels, prologue_kernels

    t = encoder[0]
    n = (len(prologue_kernels(t.model, t.tp, t.batch, t.seq)) + len(epilogue_kernels(t.model, t.tp, t.batch, t.seq))
         + t.model.layers * len([s for s in layer_kernels(t.model, t.tp, t.batch, t.seq) if not s.is_collective]))
    assert (n, settings.context_passes) in seen
    # the Q, K and V projections of an encoder share a shape, each its own entry of layers x passes samples
    gemm = [m for m in prof.kernels["gemm"] if m.dims == {"m": t.batch * t.seq, "n": t.model.hidden // t.tp,
                                                            "k": t.model.hidden}]
    assert {m.name for m in gemm} >= {"q_proj", "k_proj", "v_proj"} and prof.settings["entries"] == "by_op"
    assert all(m.reps == t.model.layers * settings.context_passes for m in gemm if m.name)
    assert any(not m.name for m in prof.kernels["gemm"])  # split pieces, timed alone, are keyed by shape
    # generative iterations too: a decode attention runs once per layer of each pass
    gen = next(tt for tt in cal.gen_targets(settings))
    dec = [m_ for m_ in prof.kernels["decode_attention"]]
    assert dec and all(m_.reps == gen.model.layers * settings.context_passes for m_ in dec)
    # the pieces of split GEMMs, timed alone, are there too
    assert any(m.dims.get("n0") is not None or m.dims["n"] < t.model.hidden // t.tp for m in prof.kernels["gemm"])
    from sim.errors import LigerSimError

    with pytest.raises(LigerSimError, match=r"timed inside each job's sequence \(settings.in_context\); pass "
                                             r"--fresh to start over, or add --in-context"):
        calibrate(out, device="cpu", quick=True, progress=False)
    from sim.profile import load_profile, save_profile

    per_shape = load_profile(out)  # an in-context profile from before entries were kept per op
    del per_shape.settings["entries"]
    save_profile(per_shape, tmp_path / "per-shape.yaml")
    with pytest.raises(LigerSimError, match=r"one entry per shape .*pass --fresh"):
        calibrate(tmp_path / "per-shape.yaml", device="cpu", quick=True, progress=False, in_context=True)
    alone = tmp_path / "alone.yaml"
    calibrate(alone, device="cpu", quick=True, progress=False)
    with pytest.raises(LigerSimError, match=r"timed alone \(settings.in_context\).*drop --in-context"):
        calibrate(alone, device="cpu", quick=True, progress=False, in_context=True)


def test_a_gate_the_host_waits_out_is_not_lengthened_again_and_again(capsys):
    """Gated timing retries with a 4x longer gate when the host could not enqueue its calls inside
    it. When enqueueing itself lasted the gate (the host waited on the GPU: a full launch queue),
    a longer gate only waits longer: it stops after two tries whose enqueueing grew with the gate, instead of four (85x the gate)."""
    import types

    torch = pytest.importorskip("torch")
    from hw.calibrate import Settings, Timer

    t = Timer(torch, Settings(device="cpu"))
    t.cuda, t.cupti = True, False
    t.torch = types.SimpleNamespace(cuda=types.SimpleNamespace(synchronize=lambda: None))
    gates: list[float] = []

    def waits_out(fn, reps, gate_s, evict):  # the host blocks until the gate opens
        gates.append(gate_s)
        t.last_enqueue_s = gate_s * 1.01
        return False, [1.0] * reps

    t._event_reps = waits_out
    assert t._gated(lambda: None, 3, 1e-3, False, "a test") == [1.0] * 3
    assert gates == [1e-3, 4e-3] and "waited on the GPU (a full" in capsys.readouterr().err
    gates.clear()

    def slow_host(fn, reps, gate_s, evict):  # the host needs 5 ms whatever the gate: a longer one holds
        gates.append(gate_s)
        t.last_enqueue_s = 5e-3
        return gate_s > 5e-3, [2.0] * reps

    t._event_reps = slow_host
    assert t._gated(lambda: None, 2, 1e-3, False, "a test") == [2.0] * 2 and gates == [1e-3, 4e-3, 16e-3]
