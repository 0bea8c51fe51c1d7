"""Validation: the report builder on a recorded run, the emulated-rank replay, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sim import ir
from sim.cli import main
from sim.errors import LigerSimError
from sim.outputs import write_run
from sim.profile import load_profile
from sim.scenario import load_scenario
from sim.simulate import load_jobs, simulate
from sim.validation import MODES, REPORT_FILES, build_report, predict

FIX = Path(__file__).resolve().parent / "fixtures" / "validation"
KEYS = ("kernel_err_median", "kernel_err_p90", "makespan_err", "jct_mean_err", "throughput_err")


def test_report_on_the_recorded_cpu_run(tmp_path):
    s = predict(FIX / "measured", FIX / "scenario.yaml", FIX / "profile-cpu.yaml", tmp_path)
    for mode in ("closed_loop", "replay"):
        assert all(k in s[mode] for k in KEYS)
        assert s[mode]["kernels_matched"] == s[mode]["kernels_measured"] == 256
    assert s["device"] == "cpu" and s["hw_mode"] == "spawn"
    table = pd.read_csv(tmp_path / "validation.csv")
    assert set(table["level"]) == {"kernel", "request"}
    assert len(table[(table["mode"] == "replay") & (table["level"] == "request")]) == 4
    assert set(table.columns) >= {"measured_s", "predicted_s", "error"}
    assert json.loads((tmp_path / "summary.json").read_text())["replay"]["kernel_err_median"] >= 0
    md = (tmp_path / "report.md").read_text()
    assert "| replay | 256/256 |" in md and "measured on: cpu" in md
    for png in ("scatter.png", "error_cdf.png", "timelines.png"):
        assert (tmp_path / png).stat().st_size > 1000
    # the builder alone, on the recorded outputs, gives the same summary
    assert build_report(tmp_path) == s
    assert main(["plot", "validation", str(tmp_path)]) == 0


def test_the_gpus_own_spread_compares_each_kernel_with_its_shapes_others(tmp_path):
    from sim.validation import repeat_spread

    # rank 0: three kernels of shape A (1.0, 1.0, 1.1 us), one of shape B (alone: no spread); a
    # setup kernel (request -1) and rank 1's kernel of shape A are not compared with rank 0's
    dur = [1.0, 1.0, 1.1, 5.0, 9.0, 3.0]
    ev = pd.DataFrame({"rank": [0, 0, 0, 0, 0, 1], "request_id": [0, 1, 1, 1, -1, 0], "kernel_id": range(6),
                       "name": ["a", "a", "a", "b", "a", "a"], "fraction": 1.0, "start_s": 0.0,
                       "end_s": [d * 1e-6 for d in dur]})
    shapes = {(r, k): n for r, k, n in zip(ev["rank"], ev["kernel_id"], ["A", "A", "A", "B", "A", "A"])}
    s = repeat_spread(ev, shapes)
    low = 1.0 - 1.0 / 1.05  # a 1.0 against the median of 1.0 and 1.1
    assert s["kernels"] == 3 and s["median"] == pytest.approx(low, rel=1e-9)
    assert s["p90"] == pytest.approx(low + 0.8 * (0.1 - low), rel=1e-9)  # numpy's quantile of (low, low, 0.1)
    # without shapes: the same name and piece within one request (request 1's 1.0 and 1.1)
    assert repeat_spread(ev)["kernels"] == 2
    assert repeat_spread(ev)["median"] == pytest.approx((1.0 - 1.0 / 1.1 + 0.1) / 2, rel=1e-9)
    assert repeat_spread(ev.iloc[3:5])["kernels"] == 0
    s = predict(FIX / "measured", FIX / "scenario.yaml", FIX / "profile-cpu.yaml", tmp_path)
    assert s["kernel_repeat_spread"]["kernels"] > 0
    assert "The GPU's own spread" in (tmp_path / "report.md").read_text()


def _self_recorded(tmp_path):
    """The fixture's scenario simulated with its own profile and no contention, as a 'measurement'
    (`tmp_path/s.yaml`): scenario, jobs and the simulated run."""
    data = yaml.safe_load((FIX / "scenario.yaml").read_text())
    data["hardware"]["profile"] = str(FIX / "profile-cpu.yaml")
    data["hardware"]["contention"] = "none"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    scn, base = load_scenario(tmp_path / "s.yaml")
    jobs = load_jobs(scn, base)
    return scn, jobs, simulate(scn, jobs)


@pytest.mark.parametrize("emulated", [False, True])
def test_a_run_the_simulator_recorded_itself_is_predicted_exactly(tmp_path, emulated):
    """Self-consistency: 'measure' with the simulator and the same profile; replay must agree
    exactly, also as a lone emulated rank 0 whose collectives last the link model's time."""
    scn, jobs, run = _self_recorded(tmp_path)
    ev, sched = run.events, run.result.schedule
    if emulated:
        ev = ev[ev["rank"] == 0]
        sched = ir.Schedule(sched.world, [op for op in sched.ops if op.rank == 0], sched.meta)
    m = tmp_path / "measured"
    write_run(m, ev, jobs, sched, scn.policy.name, None, trace=False)
    (m / "hw.json").write_text(json.dumps({"mode": "emulate" if emulated else "spawn", "device": "sim"}))
    s = predict(m, tmp_path / "s.yaml", FIX / "profile-cpu.yaml", tmp_path / "v")
    assert s["replay"]["kernel_err_p90"] < 1e-9 and abs(s["replay"]["makespan_err"]) < 1e-9
    assert s["closed_loop"]["kernel_err_p90"] < 1e-9 and abs(s["closed_loop"]["jct_mean_err"]) < 1e-9


def test_validate_cli_with_a_recorded_run_and_its_errors(tmp_path, capsys):
    out = tmp_path / "v"
    args = ["validate", str(FIX / "scenario.yaml"), "--profile", str(FIX / "profile-cpu.yaml"), "-o", str(out)]
    assert main([*args, "--measured", str(FIX / "measured")]) == 0
    printed = capsys.readouterr().out
    assert "replay: kernel |err| median" in printed
    drift = [d["ratio"] for d in json.loads((out / "summary.json").read_text())["host"]["drift"]]
    assert f"host speed through the measured run: {min(drift):.2f}-{max(drift):.2f} of its own median" in printed
    assert (out / "report.md").exists()
    bad = yaml.safe_load((FIX / "profile-cpu.yaml").read_text())
    bad["version"] = 2
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(bad))
    assert main(["validate", str(FIX / "scenario.yaml"), "--profile", str(tmp_path / "old.yaml"), "-o",
                 str(out), "--measured", str(FIX / "measured")]) == 2
    assert "profile version 2 is not supported" in capsys.readouterr().err
    assert main([*args, "--measured", str(tmp_path / "nowhere")]) == 2
    assert "recorded run folder not found" in capsys.readouterr().err
    assert main([*args, "--measured", str(FIX / "measured"), "--jobs", "2"]) == 2  # it ran the jobs it ran
    assert "--jobs" in capsys.readouterr().err
    other = yaml.safe_load((FIX / "scenario.yaml").read_text())  # not the scenario it was recorded under
    other["policy"] = {"name": "intra_op"}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    assert main(["validate", str(tmp_path / "other.yaml"), "--profile", str(FIX / "profile-cpu.yaml"), "-o", str(out),
                 "--measured", str(FIX / "measured")]) == 2
    assert "policy.name: policy.name is 'intra_op' but the recorded run" in capsys.readouterr().err
    shutil.copytree(FIX / "measured", tmp_path / "m")
    (tmp_path / "m" / "hw.json").write_text("{bad")
    assert main([*args, "--measured", str(tmp_path / "m")]) == 2
    assert "hw.json: not JSON" in capsys.readouterr().err
    with pytest.raises(LigerSimError, match="no validation.csv"):
        from sim.cli import build_parser

        a = build_parser().parse_args(["plot", "validation", str(tmp_path)])
        a.func(a)


def test_validate_runs_the_hw_backend_on_cpu(tmp_path):
    pytest.importorskip("torch")
    data = yaml.safe_load((FIX / "scenario.yaml").read_text())
    data["hardware"]["count"] = 1
    data["policy"] = {"name": "intra_op"}
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(data))
    shutil.copy(FIX / "profile-cpu.yaml", tmp_path / "p.yaml")
    assert main(["validate", str(tmp_path / "one.yaml"), "--profile", str(tmp_path / "p.yaml"), "-o",
                 str(tmp_path / "v"), "--device", "cpu", "--jobs", "2"]) == 0
    s = json.loads((tmp_path / "v" / "summary.json").read_text())
    assert s["hw_mode"] == "single" and s["replay"]["kernels_matched"] == s["replay"]["kernels_measured"] > 0
    # the run timed its host on its own first jobs (at most the 2 it runs) before its clock, and was predicted so
    assert s["host_costs"].startswith("in process: timed on the measured run's first 2 jobs")
    probe = json.loads((tmp_path / "v" / "measured" / "hw.json").read_text())["host_in_process"]
    assert probe["jobs"] == 2 and probe["launch"]


def test_validate_on_cuda_without_cuda(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["validate", str(FIX / "scenario.yaml"), "--profile", str(FIX / "profile-cpu.yaml"), "-o",
                 str(tmp_path / "v")]) == 2
    assert "--device cuda was requested" in capsys.readouterr().err


def test_generative_run_the_simulator_recorded_itself_is_predicted_exactly(tmp_path):
    """Generative runs' kernels carry iteration ids: requests (JCT, TTFT, TPOT) must come from the
    iterations that served them, and a replay may launch an iteration only after its requests
    arrived. Self-consistency: 'measure' with the simulator and the profile; both modes agree."""
    pytest.importorskip("torch")
    from hw.calibrate import TINY_CPU

    data = dict(next(d for d in TINY_CPU if d["name"] == "tiny-generative"))
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(data))
    prof = tmp_path / "p.yaml"
    assert main(["calibrate", "-o", str(prof), "--quick", "--device", "cpu", "--scenario", str(tmp_path / "g.yaml")]) == 0
    data["hardware"] = {**data["hardware"], "profile": str(prof), "contention": "none"}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    scn, base = load_scenario(tmp_path / "s.yaml")
    jobs = load_jobs(scn, base)
    run = simulate(scn, jobs)
    m = tmp_path / "measured"
    write_run(m, run.events, jobs, run.result.schedule, scn.policy.name, None, trace=False)
    (m / "hw.json").write_text(json.dumps({"mode": "spawn", "device": "sim"}))
    s = predict(m, tmp_path / "s.yaml", prof, tmp_path / "v")
    req = pd.read_csv(m / "requests.csv")
    for mode in ("closed_loop", "replay"):
        got = s[mode]
        assert got["measured"]["jct_mean_s"] == pytest.approx(req["jct_s"].mean(), rel=1e-9)
        assert got["measured"]["ttft_mean_s"] == pytest.approx(req["ttft_s"].mean(), rel=1e-9)
        assert req["ttft_s"].min() > 0
        assert got["predicted"]["ttft_mean_s"] > 0 and got["predicted"]["jct_mean_s"] > 0
        for key in ("kernel_err_p90", "makespan_err", "jct_mean_err", "ttft_mean_err", "tpot_mean_err"):
            assert abs(got[key]) < 1e-9, (mode, key, got[key])
    table = pd.read_csv(tmp_path / "v" / "validation.csv")
    assert set(table[table["level"] == "request"]["name"]) == {"jct", "ttft", "tpot"}


def test_gpu_suite_validate_stage_dry_runs_on_cpu(tmp_path):
    """scripts/gpu-suite.sh is what a GPU session runs: its validate stage, on CPU, writes the report."""
    import os
    import subprocess
    import sys

    pytest.importorskip("torch")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
           "PROFILE": str(FIX / "profile-cpu.yaml")}
    r = subprocess.run(["bash", "scripts/gpu-suite.sh", "validate", str(FIX / "scenario.yaml")], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "out" / "validation" / "scenario" / "summary.json").read_text())
    assert s["replay"]["kernels_matched"] == s["replay"]["kernels_measured"] > 0
    r = subprocess.run(["bash", "scripts/gpu-suite.sh", "nonsense"], cwd=repo, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "unknown stage" in r.stderr
    # `validate rest`: the suite's scenarios without a report in $OUT yet (here a stand-in command
    # that fails at once, so only which scenarios it starts is seen)
    done = tmp_path / "out" / "validation" / "intra-tp2-small-light"
    done.mkdir(parents=True)
    (done / "summary.json").write_text("{}")
    r = subprocess.run(["bash", "scripts/gpu-suite.sh", "validate", "rest"], cwd=repo,
                       env={**env, "PYTHON": "false"}, capture_output=True, text=True, timeout=60)
    started = [line[3:] for line in r.stdout.splitlines() if line.startswith("== ")]
    suite = sorted(p.stem for p in (repo / "scenarios" / "validation").glob("*.yaml"))
    assert started == [n for n in suite if n != "intra-tp2-small-light"] and len(started) == len(suite) - 1


def test_gpu_tables_from_recorded_results(tmp_path):
    """results/gpu_tables.py builds the README's validation and issue-4 tables from result folders."""
    import importlib.util

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("gpu_tables", repo / "results" / "gpu_tables.py")
    gt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gt)
    predict(FIX / "measured", FIX / "scenario.yaml", FIX / "profile-cpu.yaml", tmp_path / "val" / "fixture")
    table = gt.validation_table(tmp_path / "val")
    assert "| fixture | interleaved | profile | " in table and "closed loop / replay" in table
    drift = [d["ratio"] for d in json.loads((tmp_path / "val" / "fixture" / "summary.json").read_text())["host"]["drift"]]
    assert f"| profile | {min(drift):.2f}–{max(drift):.2f} | " in table
    assert "Measured on cpu" in table
    assert gt.misses({"kernel_err_median": 0.01, "makespan_err": -0.049, "jct_mean_err": 0.2}) == ["jct_mean_err"]
    hw = tmp_path / "hw"
    for name, policy, thr in (("run-intra", "intra_op", 500.0), ("run-interleaved", "interleaved", 550.0)):
        (hw / name).mkdir(parents=True)
        s = json.loads((FIX / "measured" / "summary.json").read_text())
        s.update(policy=policy, throughput_jobs_s=thr)
        (hw / name / "summary.json").write_text(json.dumps(s))
    assert "run-interleaved vs run-intra: throughput +10.0%" in gt.hw_table(hw)
    assert "no validation results" in gt.validation_table(tmp_path / "none")


def two_recorded_runs(tmp_path):
    """A report folder with the recorded CPU run as `measured/` and a copy as `measured_cupti/`."""
    out = tmp_path / "report"
    shutil.copytree(FIX / "measured", out / "measured")
    shutil.copytree(FIX / "measured", out / "measured_cupti")
    return out, out / "measured", out / "measured_cupti"


def test_kernel_times_from_a_second_run_and_compressed_recorded_runs(tmp_path):
    """`--kernels-from`: request measures from one recorded run, kernel times from another run of
    the scenario, matched by what each kernel is; a report moved elsewhere finds its runs beside
    it, and gzipped IRs and tables (as committed reports keep them) are read."""
    import gzip

    out, runs, second = two_recorded_runs(tmp_path)
    ev = pd.read_parquet(second / "events.parquet")
    ev["end_s"] = ev["start_s"] + 2 * (ev["end_s"] - ev["start_s"])  # every kernel twice as long
    ev = ev.sample(frac=1.0, random_state=0)  # rows in another order; kernel ids of another run
    ev["kernel_id"] = ev["kernel_id"].to_numpy()[::-1]
    ev.to_parquet(second / "events.parquet")
    (second / "hw.json").write_text(json.dumps({"mode": "spawn", "device": "cpu", "timing": "cupti"}))
    (second / "ir.jsonl").unlink()  # as the committed CUPTI runs: no IR, kernels matched by what they are
    base = predict(runs, FIX / "scenario.yaml", FIX / "profile-cpu.yaml", tmp_path / "plain")
    s = predict(runs, FIX / "scenario.yaml", FIX / "profile-cpu.yaml", out, kernels=second)
    for mode in ("closed_loop", "replay"):
        assert s[mode]["kernels_matched"] == 256
        # the same predictions, against kernels twice as long
        t0 = pd.read_csv(tmp_path / "plain" / "validation.csv").query("level == 'kernel' and mode == @mode")
        t1 = pd.read_csv(out / "validation.csv").query("level == 'kernel' and mode == @mode")
        assert t1["measured_s"].sum() == pytest.approx(2 * t0["measured_s"].sum())
        assert sorted(t1["predicted_s"]) == pytest.approx(sorted(t0["predicted_s"]))
        assert s[mode]["makespan_err"] == pytest.approx(base[mode]["makespan_err"])  # requests: first run
    assert s["kernel_timing"] == "cupti"
    # moved, with the IR and the table compressed
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    for f in (moved / "measured" / "ir.jsonl", moved / "validation.csv"):
        with open(f, "rb") as a, gzip.open(f.with_name(f.name + ".gz"), "wb") as b:
            b.write(a.read())
        f.unlink()
    shutil.rmtree(out)
    assert ir.load(moved / "measured" / "ir.jsonl").meta == ir.load(FIX / "measured" / "ir.jsonl").meta
    again = build_report(moved)
    assert again["closed_loop"]["kernel_err_median"] == pytest.approx(s["closed_loop"]["kernel_err_median"])
    assert main(["plot", "validation", str(moved)]) == 0


def test_kernels_of_another_run_are_matched_by_shape_when_both_irs_are_there(tmp_path):
    """Two runs of a timing-dependent scenario number their iterations (and cut their pieces)
    differently. With the other run's IR, its kernels are paired with the prediction's by layer,
    name and shape, the n-th with the n-th; without it, by request number, which here pairs
    kernels of different shapes."""
    out, runs, second = two_recorded_runs(tmp_path)
    ev = pd.read_parquet(second / "events.parquet")
    ids = sorted(ev["request_id"].unique())
    ev["request_id"] = ev["request_id"].map(dict(zip(ids, ids[1:] + ids[:1])))  # numbered differently
    ev.to_parquet(second / "events.parquet")
    (second / "hw.json").write_text(json.dumps({"mode": "spawn", "device": "cpu", "timing": "cupti"}))
    s = predict(runs, FIX / "scenario.yaml", FIX / "profile-cpu.yaml", out, kernels=second)
    plain = predict(runs, FIX / "scenario.yaml", FIX / "profile-cpu.yaml", tmp_path / "plain")
    for mode in ("closed_loop", "replay"):
        assert s[mode]["kernels_matched"] == plain[mode]["kernels_matched"] == 256
        # the same kernels as the run matched with itself: the same errors
        assert s[mode]["kernel_err_median"] == pytest.approx(plain[mode]["kernel_err_median"])
    (second / "ir.jsonl").unlink()
    by_request = build_report(out)["closed_loop"]
    assert by_request["kernels_matched"] < 256 or by_request["kernel_err_median"] != pytest.approx(
        plain["closed_loop"]["kernel_err_median"])


def test_an_events_timed_run_is_predicted_with_the_gpu_time_of_its_timing_events(tmp_path):
    """A run timed with CUDA events has a pair of event records around each op, GPU work between
    queued kernels; predicting such a run adds the profile's `event_pair_gpu_s` to the gap between
    queued kernels, and only for such a run (a CUPTI-timed one, or a simulation, has none)."""
    scn, jobs, run = _self_recorded(tmp_path)
    m = tmp_path / "measured"
    write_run(m, run.events, jobs, run.result.schedule, scn.policy.name, None, trace=False)
    prof = yaml.safe_load((FIX / "profile-cpu.yaml").read_text())
    prof["host"]["event_pair_gpu_s"] = 200e-6  # large beside the fixture's kernels: they queue behind it
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(prof))
    err = {}
    for timing in ("events", "cupti"):
        (m / "hw.json").write_text(json.dumps({"mode": "spawn", "device": "sim", "timing": timing}))
        err[timing] = predict(m, tmp_path / "s.yaml", tmp_path / "p.yaml", tmp_path / timing)["replay"]["makespan_err"]
    assert abs(err["cupti"]) < 1e-9  # the recording's own costs: replayed exactly
    assert err["events"] > 0.2
    prof["host"]["event_pair_gpu_s"] = -1e-6
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(prof))
    with pytest.raises(LigerSimError, match="host.event_pair_gpu_s"):
        load_profile(tmp_path / "bad.yaml")


def test_a_run_that_timed_its_own_host_is_predicted_with_those_costs(tmp_path, capsys):
    """A measured run whose process timed its host per op before its clock (hw.json
    `host_in_process`) is predicted with those costs; `host_costs="profile"` keeps the profile's.
    Which ones were used is in the summary and the report, with how this host's speed compared."""
    scn, jobs, run = _self_recorded(tmp_path)
    m = tmp_path / "measured"
    write_run(m, run.events, jobs, run.result.schedule, scn.policy.name, None, trace=False)
    names = {op.kernel.spec.name for op in run.result.schedule.ops if op.op == "launch"}
    own = {"launch": {n: 1e-3 for n in names}, "launch_stats": {n: [5, 1e-3, 1e-3] for n in names}, "samples": 100,
           "runs": ["probe"], "jobs": 2}  # slow beside the profile
    (m / "hw.json").write_text(json.dumps({"mode": "spawn", "device": "sim", "host_in_process": own}))
    mine = predict(m, tmp_path / "s.yaml", FIX / "profile-cpu.yaml", tmp_path / "own")
    given = predict(m, tmp_path / "s.yaml", FIX / "profile-cpu.yaml", tmp_path / "prof", host_costs="profile")
    assert abs(given["replay"]["makespan_err"]) < 1e-9  # the recording's own costs
    assert mine["replay"]["makespan_err"] > 0.5
    assert mine["host_costs"].startswith("in process: timed on the measured run's first 2 jobs")
    assert given["host_costs"].startswith("profile")
    assert "- host costs per op: in process" in (tmp_path / "own" / "report.md").read_text()
    assert "host_speed_vs_profile" not in mine  # the fixture's profile has no in-situ entry to compare with
    # against a profile whose in-situ entry has the same ops at half the time: this host took 2x
    prof = yaml.safe_load((FIX / "profile-cpu.yaml").read_text())
    prof["host_in_situ"] = {scn.policy.name: {"launch": {n: 5e-4 for n in names},
                                              "launch_stats": {n: [10, 5e-4, 6e-4] for n in names}}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(prof))
    both = predict(m, tmp_path / "s.yaml", tmp_path / "p.yaml", tmp_path / "both")
    assert both["host_speed_vs_profile"] == pytest.approx(2.0)
    assert "host took 2.00x the profile's in-situ time" in (tmp_path / "both" / "report.md").read_text()
    (m / "hw.json").write_text(json.dumps({"mode": "spawn", "device": "sim", "host_in_process": {"launch": [1]}}))
    with pytest.raises(LigerSimError, match=r"hw.json: host_in_process: must be an in-situ entry"):
        predict(m, tmp_path / "s.yaml", FIX / "profile-cpu.yaml", tmp_path / "bad")
    (m / "hw.json").write_text(json.dumps({"mode": "spawn", "device": "sim", "host_in_process": own}))
    with pytest.raises(LigerSimError, match="unknown host costs 'both'"):
        predict(m, tmp_path / "s.yaml", FIX / "profile-cpu.yaml", tmp_path / "x", host_costs="both")
    args = ["validate", str(tmp_path / "s.yaml"), "--profile", str(FIX / "profile-cpu.yaml"), "--measured", str(m)]
    assert main([*args, "-o", str(tmp_path / "cli"), "--host-costs", "profile"]) == 0
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["host_costs"].startswith("profile")


@pytest.mark.parametrize("damage, says", [
    (lambda p: p.write_text("not parquet\n"), "not an events table (Parquet magic bytes not found"),
    (lambda p: p.write_bytes(p.read_bytes()[:2000]), "not an events table (Parquet magic bytes not found"),
    (lambda p: pd.read_parquet(p).drop(columns=["start_s"]).to_parquet(p), "not an events table: no column start_s"),
], ids=["text", "cut-off", "no-start_s"])
def test_a_corrupt_events_table_in_a_recorded_run_is_one_line(tmp_path, capsys, damage, says):
    """`validate --measured` and `plot validation` on an events.parquet that is text, cut off or
    without a column it reads: one line naming the file (pyarrow's traceback or a KeyError were)."""
    shutil.copytree(FIX / "measured", tmp_path / "m")
    events = tmp_path / "m" / "events.parquet"
    damage(events)
    out = tmp_path / "v"
    args = ["validate", str(FIX / "scenario.yaml"), "--profile", str(FIX / "profile-cpu.yaml"), "-o", str(out)]

    def error(argv: list[str]) -> str:
        assert main(argv) == 2
        return capsys.readouterr().err.strip().splitlines()[-1]  # (a warning about the CPU profile comes first)

    assert error([*args, "--measured", str(tmp_path / "m")]).startswith(f"ligersim: error: {events}: {says}")
    assert main([*args, "--measured", str(FIX / "measured")]) == 0  # a good report, then point it at the damaged run
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "measured_dir": str(tmp_path / "m")}))
    assert error(["plot", "validation", str(out)]).startswith(f"ligersim: error: {events}: {says}")


@pytest.mark.parametrize("name, text, says", [
    ("meta.json", "{bad", "not JSON (Expecting property name enclosed in double quotes: line 1 column 2)"),
    ("meta.json", '{"measured_dir": "/tmp/x', "not JSON (cut off: Unterminated string starting at: line 1 column 18)"),
    ("meta.json", '["measured"]', "must be a JSON object, not an array"),
    ("meta.json", '{"scenario": "fixture"}', "measured_dir: missing"),
    ("meta.json", '{"measured_dir": 3}', "measured_dir: must be a string, not an integer"),
    ("meta.json", '{"measured_dir": "m", "kernels_dir": true}', "kernels_dir: must be a string, not true or false"),
    ("closed_loop/run_meta.json", "[]", "must be a JSON object, not an array"),
    ("closed_loop/run_meta.json", '{"kv_log": []}', "iterations: missing"),
    ("closed_loop/run_meta.json", '{"iterations": [], "rejected_requests": "2"}',
     "rejected_requests: must be an integer, not a string"),
], ids=["meta-text", "meta-cut-off", "meta-array", "meta-no-measured_dir", "meta-measured_dir-int", "meta-kernels_dir-bool",
        "run_meta-array", "run_meta-no-iterations", "run_meta-rejected-str"])
def test_a_corrupt_json_file_in_a_validation_folder_is_one_line(tmp_path, capsys, name, text, says):
    """A validation folder's meta.json (read by `plot validation` and `build_report`) or its closed
    loop's run_meta.json that is not JSON, cut off, not an object or without a key its reader needs:
    one line naming the file and the key (a JSONDecodeError, AttributeError, KeyError or TypeError)."""
    out = tmp_path / "v"
    predict(FIX / "measured", FIX / "scenario.yaml", FIX / "profile-cpu.yaml", out)
    (out / name).write_text(text)
    want = f"{out / name}: {says}; `ligersim validate` writes it"
    with pytest.raises(LigerSimError) as e:
        build_report(out)
    assert str(e.value) == want
    if name == "meta.json":
        capsys.readouterr()
        assert main(["plot", "validation", str(out)]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"ligersim: error: {want}"]


@pytest.mark.parametrize("damaged", ["measured", "kernels"])
def test_a_corrupt_recorded_run_fails_before_anything_is_simulated_or_written(tmp_path, capsys, damaged):
    """`validate --measured` (and --kernels-from) read the recorded runs' events before simulating:
    a corrupt events.parquet or hw.json is an error before closed_loop/, replay/ or meta.json are
    written (the events were read only when the report was built, after both)."""
    runs = {}
    for which in ("measured", "kernels"):
        runs[which] = tmp_path / which
        shutil.copytree(FIX / "measured", runs[which])
    args = ["validate", str(FIX / "scenario.yaml"), "--profile", str(FIX / "profile-cpu.yaml"),
            "--measured", str(runs["measured"])] + (["--kernels-from", str(runs["kernels"])] if damaged == "kernels" else [])
    events, hw = runs[damaged] / "events.parquet", runs[damaged] / "hw.json"
    events.write_bytes(events.read_bytes()[:2000])
    capsys.readouterr()
    assert main([*args, "-o", str(tmp_path / "new")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"ligersim: error: {events}: not an events table (Parquet magic bytes not found")
    assert not (tmp_path / "new").exists()
    shutil.copy(FIX / "measured" / "events.parquet", events)
    hw.write_text("[]")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "notes.txt").write_text("kept")
    assert main([*args, "-o", str(tmp_path / "old")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"ligersim: error: {hw}: must be a JSON object, not an array; `ligersim hw run` writes it")
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("mode", ["closed_loop", "replay"])
def test_a_corrupt_prediction_says_validate_writes_it(tmp_path, capsys, mode):
    """A validation folder's closed_loop/ or replay/ events.parquet is `ligersim validate`'s, and
    the error's hint says so (it said `ligersim run` or `ligersim hw run` writes one); a run of
    that name outside a validation folder is still `ligersim run`'s."""
    out = tmp_path / "v"
    predict(FIX / "measured", FIX / "scenario.yaml", FIX / "profile-cpu.yaml", out)
    events = out / mode / "events.parquet"
    events.write_text("not parquet\n")
    capsys.readouterr()
    for argv in (["plot", "validation", str(out)], ["plot", "timeline", str(out / mode)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"ligersim: error: {events}: not an events table ("), err
        assert err[0].endswith("; `ligersim validate` writes it"), err
    with pytest.raises(LigerSimError, match=r"; `ligersim validate` writes it$"):
        build_report(out)
    alone = tmp_path / "runs" / mode  # no meta.json beside it: not a validation folder's
    shutil.copytree(out / mode, alone)
    assert main(["plot", "timeline", str(alone)]) == 2
    assert capsys.readouterr().err.strip().endswith("; `ligersim run` or `ligersim hw run` writes one")


def test_a_reused_output_folder_keeps_nothing_of_an_earlier_validation(tmp_path):
    """An encoder run validated into a generative validation's -o folder read its closed_loop/run_meta.json
    (the closed loop's requests from the other run's iterations); a compressed table or IR, or a
    kv.csv, of the earlier one stayed beside the new report. The report is a fresh folder's."""
    args = (FIX / "measured", FIX / "scenario.yaml", FIX / "profile-cpu.yaml")
    fresh, out = tmp_path / "fresh", tmp_path / "reused"
    predict(*args, fresh)
    for mode in MODES:  # what an earlier generative validation, compressed as committed, left
        (out / mode).mkdir(parents=True)
        (out / mode / "kv.csv").write_text("time_s,kv_tokens\n0.0,16\n")
        (out / mode / "ir.jsonl.gz").write_bytes(b"an earlier run's")
    (out / "closed_loop" / "run_meta.json").write_text(json.dumps(
        {"iterations": [[0, 0, 0, 64, 1], [1, 0, 1, 64, 1]], "kv_log": [[0.0, 128]], "kv_capacity_tokens": 4096}))
    (out / "validation.csv.gz").write_bytes(b"an earlier report's")
    predict(*args, out)
    assert (out / "summary.json").read_text() == (fresh / "summary.json").read_text()
    assert (out / "validation.csv").read_text() == (fresh / "validation.csv").read_text()
    for d in (out, out / "closed_loop", out / "replay"):
        assert sorted(p.name for p in d.iterdir() if p.is_file()) == sorted(
            p.name for p in (fresh / d.relative_to(out)).iterdir() if p.is_file()), d
    assert set(REPORT_FILES) - {"validation.csv.gz"} <= {p.name for p in out.iterdir()}
