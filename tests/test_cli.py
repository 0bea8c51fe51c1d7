"""The command line end to end: files written, their schema, replay, curves, traces."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sim.cli import main
from tests.conftest import tiny

EVENT_COLS = {"rank", "stream", "kernel_id", "request_id", "layer", "kind", "name", "start_s", "end_s", "solo_s"}
SUMMARY_KEYS = {"policy", "jobs", "jct_mean_s", "jct_p50_s", "jct_p90_s", "jct_p99_s", "throughput_jobs_s",
                "makespan_s", "kernels", "sim_wall_s", "gpu_busy_frac", "overlap_frac", "stream_occupancy"}


@pytest.fixture
def scenario_file(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(tiny("interleaved")))
    return p


def test_run_writes_every_output(scenario_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(scenario_file), "-o", str(out)]) == 0
    assert "JCT mean" in capsys.readouterr().out
    ev = pd.read_parquet(out / "events.parquet")
    assert EVENT_COLS <= set(ev.columns) and len(ev) > 0
    req = pd.read_csv(out / "requests.csv")
    assert list(req.columns) == ["request_id", "arrival_s", "start_s", "end_s", "jct_s"] and len(req) == 30
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary) and summary["kernels"] == len(ev)
    trace = json.loads((out / "trace.json").read_text())
    tracks = {(e["pid"], e["tid"]) for e in trace["traceEvents"] if e["ph"] == "X"}
    assert tracks == {(r, s) for r in range(4) for s in (0, 1)}
    assert (out / "ir.jsonl").read_text().startswith('{"format": "ligersim-ir", "version": 1')


def test_replay_reproduces_the_events(scenario_file, tmp_path):
    out, rep = tmp_path / "out", tmp_path / "rep"
    assert main(["run", str(scenario_file), "-o", str(out)]) == 0
    assert main(["replay", str(out / "ir.jsonl"), "-o", str(rep)]) == 0
    a = pd.read_parquet(out / "events.parquet")
    b = pd.read_parquet(rep / "events.parquet")
    pd.testing.assert_frame_equal(a, b)
    ra, rb = pd.read_csv(out / "requests.csv"), pd.read_csv(rep / "requests.csv")
    pd.testing.assert_frame_equal(ra, rb)


def test_curve_writes_table_jpc_and_plot(scenario_file, tmp_path, capsys):
    out = tmp_path / "curve"
    assert main(["curve", str(scenario_file), "--policies", "intra_op,interleaved", "--rates", "100:300:200",
                 "--jobs", "12", "--workers", "1", "-o", str(out)]) == 0
    assert "highest JPC: " in capsys.readouterr().out
    curve = pd.read_csv(out / "curve.csv")
    assert {"policy", "offered_rate", "achieved_rate", "jct_mean_s", "jct_p50_s", "jct_p90_s",
            "jct_p99_s"} <= set(curve.columns)
    assert len(curve) == 4 and set(curve["policy"]) == {"intra_op", "interleaved"}
    jpc = pd.read_csv(out / "jpc.csv")
    assert list(jpc.columns[:2]) == ["policy", "jpc_jobs_s"] and len(jpc) == 2
    assert (out / "curve.png").stat().st_size > 5000
    # resuming keeps the points and runs nothing new
    assert main(["curve", str(scenario_file), "--policies", "intra_op,interleaved", "--rates", "100:300:200",
                 "--jobs", "12", "--workers", "1", "--resume", "-o", str(out)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "curve.csv"), curve)


def test_bad_rates_are_a_clear_error(scenario_file, tmp_path, capsys):
    assert main(["curve", str(scenario_file), "--rates", "fast", "-o", str(tmp_path)]) == 2
    assert "--rates" in capsys.readouterr().err


@pytest.mark.parametrize("argv, field", [
    (["run", "{s}", "--jobs", "-3"], "--jobs -3"),  # a slice [:-3] would silently drop the last three jobs
    (["run", "{s}", "--jobs", "0"], "--jobs 0"),
    (["curve", "{s}", "--rates", "100", "--jobs", "-1"], "--jobs -1"),
    (["curve", "{s}", "--rates", "100", "--workers", "-2"], "--workers -2"),
    (["trace", "gen", "{s}", "--jobs", "-5"], "--jobs -5"),
])
def test_counts_below_one_are_a_clear_error(scenario_file, tmp_path, capsys, argv, field):
    argv = [a.format(s=scenario_file) for a in argv] + ["-o", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{field}: give" in err and "at least 1" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "summary.json").exists()


def test_trace_gen_round_trips(scenario_file, tmp_path):
    path = tmp_path / "t.csv"
    assert main(["trace", "gen", str(scenario_file), "-o", str(path), "--rate", "50", "--jobs", "10"]) == 0
    df = pd.read_csv(path)
    assert len(df) == 10 and df["arrival_s"].is_monotonic_increasing
    d = tiny("intra_op")
    d["workload"] = {"kind": "trace", "path": str(path), "format": "ligersim"}
    scn = tmp_path / "from_trace.yaml"
    scn.write_text(yaml.safe_dump(d))
    assert main(["run", str(scn), "-o", str(tmp_path / "o"), "--no-trace"]) == 0
    req = pd.read_csv(tmp_path / "o" / "requests.csv")
    assert req["arrival_s"].tolist() == df["arrival_s"].tolist()


def test_schema_matches_the_committed_reference(capsys):
    from pathlib import Path

    assert main(["schema"]) == 0
    committed = (Path(__file__).resolve().parent.parent / "docs" / "scenario-reference.md").read_text()
    assert capsys.readouterr().out == committed, "regenerate with: ligersim schema > docs/scenario-reference.md"


def test_plot_commands_write_images(scenario_file, tmp_path):
    out = tmp_path / "out"
    assert main(["run", str(scenario_file), "-o", str(out), "--no-ir"]) == 0
    assert main(["plot", "timeline", str(out), "--ranks", "0", "--window", "0:20"]) == 0
    assert (out / "timeline.png").stat().st_size > 5000 and (out / "timeline.svg").stat().st_size > 5000
    cdir = tmp_path / "c"
    assert main(["curve", str(scenario_file), "--policies", "intra_op", "--rates", "100,200", "--jobs", "8",
                 "--workers", "1", "-o", str(cdir)]) == 0
    (cdir / "curve.png").unlink()
    assert main(["plot", "curve", str(cdir)]) == 0
    assert (cdir / "curve.png").stat().st_size > 5000 and (cdir / "curve.svg").exists()
    assert main(["plot", "curve", str(out)]) == 2  # no curve there: a clear error


def test_chrome_trace_in_chunks_is_one_valid_document(scenario_file, tmp_path, monkeypatch):
    import sim.outputs as outputs

    out = tmp_path / "out"
    assert main(["run", str(scenario_file), "-o", str(out)]) == 0
    whole = json.loads((out / "trace.json").read_text())
    monkeypatch.setattr(outputs, "TRACE_CHUNK", 7)  # many chunks, the last one short
    events = pd.read_parquet(out / "events.parquet")
    outputs.chrome_trace(events, tmp_path / "chunked.json", title="tiny")
    chunked = json.loads((tmp_path / "chunked.json").read_text())
    assert len(events) % 7 and chunked == whole
    text = (tmp_path / "chunked.json").read_text()
    assert text == json.dumps(json.loads(text))  # the very text one json.dump of the whole writes
    assert sum(e["ph"] == "X" for e in chunked["traceEvents"]) == len(events)


def test_a_trace_over_its_limit_holds_the_runs_beginning_whole(scenario_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(scenario_file), "-o", str(out), "--trace-kernels", "40", "--no-plot"]) == 0
    events = pd.read_parquet(out / "events.parquet")
    summary = json.loads((out / "summary.json").read_text())
    trace = json.loads((out / "trace.json").read_text())
    cut = trace["otherData"]["kernels_before_s"]
    written = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    before = events[events["start_s"] < cut]
    assert len(written) == len(before) == summary["trace_kernels"] <= 40 < len(events)
    assert sorted(e["args"]["kernel_id"] for e in written) == sorted(before["kernel_id"])  # none missing
    assert summary["trace_until_s"] == cut and (events["start_s"] >= cut).any()
    assert f"{summary['trace_kernels']:,} of {len(events):,} kernels" in capsys.readouterr().out
    assert main(["run", str(scenario_file), "-o", str(out), "--trace-kernels", "0", "--no-plot"]) == 0
    trace = json.loads((out / "trace.json").read_text())
    assert sum(e["ph"] == "X" for e in trace["traceEvents"]) == len(events)
    assert "trace_kernels" not in json.loads((out / "summary.json").read_text())


def test_a_trace_cut_where_more_kernels_start_at_once_than_it_holds():
    from sim.outputs import trace_window

    ev = pd.DataFrame({"start_s": [0.0, 0.0, 0.0, 1.0, 0.5]})
    kept, cut = trace_window(ev, 2)
    assert len(kept) == 2 and cut == 0.0 and (kept["start_s"] == 0.0).all()
    kept, cut = trace_window(ev, 4)
    assert list(kept.index) == [0, 1, 2, 4] and cut == 1.0
    assert trace_window(ev, 5)[1] is None and trace_window(ev, 0)[1] is None


def test_the_best_line_names_ties_and_the_next():
    from sim.cli import best_line

    t = pd.DataFrame({"policy": ["a", "b", "c", "d"], "jpc_jobs_s": [50.0, 100.0, 99.5, float("nan")],
                      "capacity_jobs_s": [60.0, 110.0, 105.0, 20.0]})
    assert best_line(t) == "highest JPC: b (100) and c (99.5) jobs/s (within 1%: a tie at these rates); next a (50)"
    assert best_line(t.iloc[:1]) == "highest JPC: a (50) jobs/s"
    assert best_line(t.iloc[3:]) == "highest JPC: none (no line sustains any swept rate)"


def test_bad_input_found_by_an_audit_is_one_line(scenario_file, tmp_path, capsys):
    """Inputs an audit found giving tracebacks or silently wrong results: each is now a one-line
    error (exit 2) naming what is wrong, or, where the input is valid, read as meant."""
    import gzip

    def error(argv: list[str]) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("ligersim: error: ")
        return err[0]

    run = ["run", str(scenario_file), "--no-trace", "--no-plot"]
    (tmp_path / "afile").write_text("")
    assert "afile: File exists" in error(run + ["-o", str(tmp_path / "afile")])
    assert "give rates" in error(["curve", str(scenario_file), "--rates", "1:inf:1", "-o", str(tmp_path / "c")])
    assert "at most 10,000" in error(["curve", str(scenario_file), "--rates", "1:1e9:1e-9", "-o", str(tmp_path / "c")])
    assert "--policies" in error(["curve", str(scenario_file), "--rates", "10", "--vary", "policy.name=intra_op",
                                  "-o", str(tmp_path / "c")])
    assert "workload.rate" in error(["trace", "gen", str(scenario_file), "--rate", "0", "-o", str(tmp_path / "t.csv")])
    d = yaml.safe_load(scenario_file.read_text())
    bad = tmp_path / "bad.yaml"
    for field, value, says in (("seed", -1, "seed"), ("workload", {**d["workload"], "jobs": 10**12}, "workload.jobs")):
        bad.write_text(yaml.safe_dump({**d, field: value}))
        assert says in error(["run", str(bad), "-o", str(tmp_path / "o")])
    bad.write_bytes(b"name: \xff\xfe\n")
    assert "not UTF-8" in error(["run", str(bad), "-o", str(tmp_path / "o")])
    # IR files: cut off, holding nothing, a rank outside the schedule, gzip that is not
    out = tmp_path / "out"
    assert main(run + ["-o", str(out)]) == 0
    capsys.readouterr()
    lines = (out / "ir.jsonl").read_text().splitlines(keepends=True)
    for name, text, says in (("cut.jsonl", "".join(lines[:len(lines) // 2]), "cut off"),
                             ("head.jsonl", lines[0], "no operations"),
                             ("rank.jsonl", "".join(lines).replace('{"r": 0,', '{"r": 9,', 1), "rank 9")):
        (tmp_path / name).write_text(text)
        assert says in error(["replay", str(tmp_path / name), "-o", str(tmp_path / "r"), "--no-trace"])
    (tmp_path / "not.jsonl.gz").write_text("plain")
    assert "cannot read the IR file" in error(["replay", str(tmp_path / "not.jsonl.gz"), "-o", str(tmp_path / "r")])
    with gzip.open(tmp_path / "short.jsonl.gz", "wt") as f:
        f.write("".join(lines))
    (tmp_path / "cut.jsonl.gz").write_bytes((tmp_path / "short.jsonl.gz").read_bytes()[:200])
    assert "cut off" in error(["replay", str(tmp_path / "cut.jsonl.gz"), "-o", str(tmp_path / "r")])
    for bad in (["--ranks", "a,b"], ["--requests", "-1"], ["--window", "5"], ["--window", "5:1"]):
        with pytest.raises(SystemExit) as exit_:
            main(["plot", "timeline", str(out), *bad])
        assert exit_.value.code == 2 and f"argument {bad[0]}: expected" in capsys.readouterr().err
    assert main(["plot", "timeline", str(out), "--window", "0:5", "--ranks", "0"]) == 0
    capsys.readouterr()
    # a garbage curve.csv under --resume and plot curve; a GPU count given as a boolean
    (tmp_path / "c").mkdir(exist_ok=True)
    for text in ("", "a,b\n1,2\n"):
        (tmp_path / "c" / "curve.csv").write_text(text)
        assert "not a curve table" in error(["curve", str(scenario_file), "--rates", "10", "--resume", "--workers", "1",
                                             "-o", str(tmp_path / "c")])
        assert "not a curve table" in error(["plot", "curve", str(tmp_path / "c")])
    twice = tmp_path / "twice.yaml"
    twice.write_text(scenario_file.read_text() + "seed: 99\n")  # the key is in the file already
    assert "key 'seed' is given twice" in error(["run", str(twice), "-o", str(tmp_path / "o")])
    boolean = tmp_path / "boolean.yaml"
    boolean.write_text(yaml.safe_dump({**d, "hardware": {**d["hardware"], "count": True}}))
    assert "hardware.count" in error(["run", str(boolean), "-o", str(tmp_path / "o")])


def test_timestamps_and_output_tokens_are_read_as_meant(tmp_path):
    import warnings

    from sim.errors import ScenarioWarning
    from sim.scenario import parse_scenario
    from sim.simulate import load_jobs
    from sim.workload import TraceWorkload, build_jobs

    stamps = pd.to_datetime(["2023-11-16 18:15:46.000", "2023-11-16 18:15:46.010", "2023-11-16 18:15:46.040"])
    pd.DataFrame({"at": stamps, "prompt_tokens": [10, 20, 30]}).to_parquet(tmp_path / "t.parquet")
    cfg = TraceWorkload(kind="trace", path=str(tmp_path / "t.parquet"), format="columns", columns={"arrival_s": "at"})
    assert [j.arrival_s for j in build_jobs(cfg, 0)] == pytest.approx([0.0, 0.01, 0.04])  # not nanoseconds
    d = tiny("intra_op")
    d["workload"]["output_tokens"] = 5  # decode steps asked for, in the encoder setting: said, not dropped quietly
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_jobs(parse_scenario(d), None)
    assert any(issubclass(w.category, ScenarioWarning) and "serving.mode is encoder" in str(w.message) for w in caught)


def test_corrupt_results_tables_under_plot_are_one_line(scenario_file, tmp_path, capsys):
    """plot timeline / plot curve on an events.parquet or jpc.csv that is not one: one line naming
    the file, not pyarrow's traceback or a KeyError."""
    out = tmp_path / "out"
    assert main(["run", str(scenario_file), "-o", str(out), "--no-trace", "--no-plot", "--no-ir"]) == 0
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "curve.csv").write_text("policy,offered_rate,achieved_rate,jct_mean_s\nintra_op,10,9,0.1\n")
    capsys.readouterr()
    for path, text, argv, says in (
        (out / "events.parquet", "rank,stream\n0,0\n", ["plot", "timeline", str(out)], "not an events table (Parquet"),
        (tmp_path / "c" / "jpc.csv", "a,b\n1,2\n", ["plot", "curve", str(tmp_path / "c")],
         "not a JPC table: no column policy, jpc_jobs_s"),
    ):
        path.write_text(text)
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"ligersim: error: {path}: {says}"), err


def test_plot_timeline_selection_the_run_does_not_have_is_an_error(scenario_file, tmp_path, capsys):
    """--ranks / --requests naming ranks or requests the run lacks (some or all), or a --window where
    the selected kernels do not run, drew an empty figure: now one line naming them and what exists."""
    out = tmp_path / "out"
    assert main(["run", str(scenario_file), "-o", str(out), "--no-trace", "--no-plot", "--no-ir"]) == 0
    capsys.readouterr()
    for argv, says in (
        (["--ranks", "7"], "--ranks 7: this run has ranks 0-3"),
        (["--ranks", "2,9,7"], "--ranks 7,9: this run has ranks 0-3"),  # the missing ones only
        (["--requests", "5,30"], "--requests 30: this run has requests 0-29"),
        (["--ranks", "0", "--window", "900:1000"], "--window 900:1000: the kernels selected run from "),
    ):
        assert main(["plot", "timeline", str(out), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"ligersim: error: {out}: {says}"), err
    assert not (out / "timeline.png").exists()
    assert main(["plot", "timeline", str(out), "--ranks", "0,3", "--requests", "0,29"]) == 0


def test_id_ranges():
    from sim.cli import _id_ranges

    assert _id_ranges([0, 1, 2, 3, 7]) == "0-3, 7"
    assert _id_ranges(list(range(0, 40, 2)), most=3) == "0, 2, 4, ..."


@pytest.mark.parametrize("text, says", [
    ("not json\n", "not JSON (Expecting value: line 1 column 1)"),
    ('{"scenario": "tiny", "pol', "not JSON (cut off: Unterminated string starting at: line 1 column 22)"),
    ("", "not JSON (empty)"),
    ("[1, 2]\n", "must be a JSON object, not an array"),
    ('{"scenario": ["tiny"]}', "scenario: must be a string, not an array"),
], ids=["text", "cut-off", "empty", "array", "wrong-type"])
def test_a_corrupt_summary_json_under_plot_timeline_is_one_line(scenario_file, tmp_path, capsys, text, says):
    """plot timeline titles its figure from the run's summary.json: one that is not JSON, cut off, or
    JSON of another shape is one line naming the file (a JSONDecodeError or AttributeError traceback)."""
    out = tmp_path / "out"
    assert main(["run", str(scenario_file), "-o", str(out), "--no-trace", "--no-plot", "--no-ir"]) == 0
    capsys.readouterr()
    (out / "summary.json").write_text(text)
    assert main(["plot", "timeline", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ligersim: error: {out / 'summary.json'}: {says}; `ligersim run` or `ligersim hw run` writes one"]
    assert not (out / "timeline.png").exists()


def test_a_run_written_over_another_keeps_none_of_its_files(scenario_file, tmp_path):
    """An earlier run's optional files go: a generative run's kv.csv, a trace and an IR (also compressed)
    this run does not write were left beside its tables as if they were its own."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("kv.csv", "trace.json", "ir.jsonl", "ir.jsonl.gz"):
        (out / name).write_text("an earlier run's\n")
    assert main(["run", str(scenario_file), "-o", str(out), "--no-trace", "--no-ir", "--no-plot"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["events.parquet", "requests.csv", "summary.json"]


def test_a_replay_of_a_profiled_run_keeps_the_profiles_host_costs(tmp_path):
    """The IR header embeds the scenario; written out whole, its default host costs and contention
    read back as set by the user, so a replay ran with them instead of the profile's."""
    fixture = Path(__file__).resolve().parent / "fixtures" / "validation"
    scn = yaml.safe_load((fixture / "scenario.yaml").read_text())
    scn["hardware"]["profile"] = str(fixture / "profile-cpu.yaml")
    path = tmp_path / "profiled.yaml"
    path.write_text(yaml.safe_dump(scn))
    out, rep = tmp_path / "out", tmp_path / "rep"
    assert main(["run", str(path), "-o", str(out), "--no-plot"]) == 0
    assert main(["replay", str(out / "ir.jsonl"), "-o", str(rep)]) == 0
    a, b = pd.read_parquet(out / "events.parquet"), pd.read_parquet(rep / "events.parquet")
    pd.testing.assert_frame_equal(a, b)
