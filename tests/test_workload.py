"""Workload generation and trace loading: statistics, determinism, and user-facing errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from sim.errors import LigerSimError
from sim.jobs import Job
from sim.workload import (
    GenerateWorkload,
    TraceWorkload,
    WorkloadConfig,
    build_jobs,
    jobs_frame,
    with_rate,
    write_trace,
)

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "traces"
CFG = TypeAdapter(WorkloadConfig)


def gen(arrival: dict, jobs: int = 100, **shapes) -> GenerateWorkload:
    return CFG.validate_python({"kind": "generate", "arrival": arrival, "jobs": jobs, **shapes})


def trace(path, **kw) -> TraceWorkload:
    return CFG.validate_python({"kind": "trace", "path": str(path), **kw})


def arrivals(jobs: list[Job]) -> np.ndarray:
    return np.array([j.arrival_s for j in jobs])


# ---------------------------------------------------------------- generated arrivals


def test_poisson_mean_rate_and_exponential_gaps():
    t = arrivals(build_jobs(gen({"process": "poisson", "rate": 20.0}, jobs=20_000), seed=1))
    assert t[0] == 0.0 and np.all(np.diff(t) >= 0)
    gaps = np.diff(t)
    assert (len(t) - 1) / t[-1] == pytest.approx(20.0, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("cv", [0.3, 1.0, 3.0])
def test_gamma_cv_and_rate(cv):
    gaps = np.diff(
        arrivals(build_jobs(gen({"process": "gamma", "rate": 5.0, "cv": cv}, jobs=40_000), seed=2))
    )
    assert 1 / gaps.mean() == pytest.approx(5.0, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.08)


def test_constant_exact_spacing():
    t = arrivals(build_jobs(gen({"process": "constant", "rate": 4.0}, jobs=50), seed=3))
    assert t.tolist() == [i / 4.0 for i in range(50)]


def test_onoff_silent_in_off_periods_and_rate_when_on():
    on, off = 2.0, 3.0
    t = arrivals(
        build_jobs(gen({"process": "onoff", "rate": 50.0, "on_s": on, "off_s": off}, jobs=5000), seed=4)
    )
    phase = np.mod(t, on + off)
    assert np.all(phase < on)
    assert np.all(np.diff(t) >= 0)
    # long-run rate is rate * on / (on + off)
    assert (len(t) - 1) / t[-1] == pytest.approx(50.0 * on / (on + off), rel=0.05)


def test_same_seed_same_jobs_different_seed_different():
    cfg = gen(
        {"process": "gamma", "rate": 3.0, "cv": 2.0},
        batch={"dist": "uniform", "low": 1, "high": 8},
        output_tokens={"dist": "empirical", "values": [1, 10, 100]},
    )
    assert build_jobs(cfg, seed=7) == build_jobs(cfg, seed=7)
    assert build_jobs(cfg, seed=7) != build_jobs(cfg, seed=8)


# ---------------------------------------------------------------- generated shapes


@settings(max_examples=40, deadline=None)
@given(low=st.integers(1, 500), span=st.integers(0, 500), seed=st.integers(0, 2**32 - 1))
def test_uniform_within_bounds(low, span, seed):
    jobs = build_jobs(
        gen(
            {"process": "constant", "rate": 1.0},
            jobs=200,
            seq_len={"dist": "uniform", "low": low, "high": low + span},
        ),
        seed=seed,
    )
    seqs = [j.seq_len for j in jobs]
    assert min(seqs) >= low and max(seqs) <= low + span
    # prompt_tokens defaults to each job's seq_len
    assert all(j.prompt_tokens == j.seq_len for j in jobs)


def test_uniform_hits_both_ends():
    jobs = build_jobs(
        gen({"process": "poisson", "rate": 1.0}, jobs=500, batch={"dist": "uniform", "low": 2, "high": 4}), 0
    )
    assert {j.batch for j in jobs} == {2, 3, 4}


def test_empirical_picks_only_given_values_with_weights():
    cfg = gen(
        {"process": "poisson", "rate": 1.0},
        jobs=4000,
        output_tokens={"dist": "empirical", "values": [16, 256, 999], "weights": [3, 1, 0]},
    )
    outs = np.array([j.output_tokens for j in build_jobs(cfg, seed=5)])
    assert set(outs.tolist()) == {16, 256}
    assert np.mean(outs == 16) == pytest.approx(0.75, abs=0.03)


def test_defaults():
    j = build_jobs(gen({"process": "poisson", "rate": 1.0}, jobs=1), seed=0)[0]
    assert j == Job(0, 0.0, batch=1, seq_len=128, prompt_tokens=128, output_tokens=0)


@pytest.mark.parametrize(
    "bad",
    [
        {"arrival": {"process": "poisson", "rate": 0}},
        {"arrival": {"process": "poisson", "rate": 1, "cv": 2}},  # cv only for gamma
        {"arrival": {"process": "onoff", "rate": 1, "on_s": 1}},  # off_s missing
        {"arrival": {"process": "weibull", "rate": 1}},
        {"arrival": {"process": "poisson", "rate": 1}, "jobs": 0},
        {"arrival": {"process": "poisson", "rate": 1}, "batch": 0},
        {"arrival": {"process": "poisson", "rate": 1}, "seq_len": {"dist": "uniform", "low": 5, "high": 4}},
        {"arrival": {"process": "poisson", "rate": 1}, "seq_len": {"dist": "uniform", "low": 0, "high": 4}},
        {
            "arrival": {"process": "poisson", "rate": 1},
            "batch": {"dist": "empirical", "values": [1], "weights": [1, 2]},
        },
        {"arrival": {"process": "poisson", "rate": 1}, "batch": {"dist": "empirical", "values": []}},
        {"arrival": {"process": "poisson", "rate": 1}, "typo": 1},
    ],
)
def test_generate_config_rejects(bad):
    with pytest.raises(ValidationError):
        CFG.validate_python({"kind": "generate", **bad})


def test_with_rate_generate_and_trace():
    g = gen({"process": "gamma", "rate": 1.0, "cv": 2.0})
    g2 = with_rate(g, 7.5)
    assert g2.arrival.rate == 7.5 and g2.arrival.cv == 2.0 and g.arrival.rate == 1.0
    t2 = with_rate(trace("x.csv", jobs=5), 3.0)
    assert t2.rate == 3.0 and t2.jobs == 5
    with pytest.raises(LigerSimError, match="rate"):
        with_rate(g, 0)


# ---------------------------------------------------------------- traces


def test_azure_conv_trace_loads():
    jobs = build_jobs(trace("traces/azure_llm_2023_conv.csv"), seed=0, base_dir=ROOT)
    assert len(jobs) == 19_366
    assert jobs[0] == Job(0, 0.0, batch=1, seq_len=374, prompt_tokens=374, output_tokens=44)
    assert jobs[1].arrival_s == 4.314579
    assert jobs[-1].request_id == 19_365


def test_azure_code_trace_loads_relative_to_base_dir():
    jobs = build_jobs(trace("azure_llm_2023_code.csv"), seed=0, base_dir=TRACES)
    assert len(jobs) == 8_819
    assert (jobs[0].prompt_tokens, jobs[0].output_tokens) == (4808, 10)


def test_time_scaling_hits_target_rate_and_jobs_limit():
    jobs = build_jobs(trace("azure_llm_2023_conv.csv", rate=40.0, jobs=1000), seed=0, base_dir=TRACES)
    t = arrivals(jobs)
    assert len(jobs) == 1000
    assert (len(t) - 1) / (t[-1] - t[0]) == pytest.approx(40.0, rel=1e-9)
    # scaling keeps the trace's shape: gaps are proportional to the original ones
    orig = arrivals(build_jobs(trace("azure_llm_2023_conv.csv", jobs=1000), 0, TRACES))
    np.testing.assert_allclose(t * orig[-1] / t[-1], orig, rtol=1e-12)


def test_encoder_overrides_and_time_unit(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("ms,tok\n0,10\n500,20\n1500,30\n")
    cols = {"arrival_s": "ms", "prompt_tokens": "tok"}
    jobs = build_jobs(trace(p, format="columns", columns=cols, time_unit="ms"), 0)
    assert [(j.arrival_s, j.seq_len, j.prompt_tokens, j.batch) for j in jobs] == [
        (0.0, 10, 10, 1),
        (0.5, 20, 20, 1),
        (1.5, 30, 30, 1),
    ]
    jobs = build_jobs(trace(p, format="columns", columns=cols, time_unit="ms", batch=4, seq_len=384), 0)
    assert all((j.batch, j.seq_len) == (4, 384) for j in jobs) and jobs[2].prompt_tokens == 30


job_strategy = st.builds(
    Job,
    request_id=st.integers(0, 10**9),
    arrival_s=st.floats(0, 1e6, allow_nan=False),
    batch=st.integers(1, 1024),
    seq_len=st.integers(1, 10**6),
    prompt_tokens=st.integers(0, 10**6),
    output_tokens=st.integers(0, 10**6),
)


@settings(max_examples=30, deadline=None)
@given(
    jobs=st.lists(job_strategy, min_size=1, max_size=30, unique_by=lambda j: j.request_id),
    ext=st.sampled_from(["csv", "parquet"]),
)
def test_write_trace_round_trips(tmp_path_factory, jobs, ext):
    jobs = sorted(jobs, key=lambda j: j.arrival_s)
    path = write_trace(jobs, tmp_path_factory.mktemp("rt") / f"jobs.{ext}")
    assert build_jobs(trace(path, format="ligersim"), seed=0) == jobs
    assert build_jobs(trace(path, format="columns"), seed=0) == jobs


def test_generated_round_trip_and_frame(tmp_path):
    jobs = build_jobs(
        gen(
            {"process": "poisson", "rate": 3.0},
            jobs=50,
            output_tokens={"dist": "uniform", "low": 0, "high": 9},
        ),
        9,
    )
    df = jobs_frame(jobs)
    assert list(df.columns) == [
        "request_id",
        "arrival_s",
        "batch",
        "seq_len",
        "prompt_tokens",
        "output_tokens",
    ]
    assert len(df) == 50 and str(df["arrival_s"].dtype) == "float64" and str(df["batch"].dtype) == "int64"
    path = write_trace(jobs, tmp_path / "sub" / "g.csv")
    assert build_jobs(trace("g.csv", format="ligersim"), 0, base_dir=path.parent) == jobs


# ---------------------------------------------------------------- trace errors


def csv(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


AZ = "arrived_at,num_prefill_tokens,num_decode_tokens\n"


@pytest.mark.parametrize(
    ("text", "kw", "field", "words"),
    [
        (AZ, {}, "workload.path", "no rows"),
        ("", {}, "workload.path", "empty"),
        ('a,b\n1,2\n3,4,5,6\n"x', {}, "workload.path", "cannot read"),
        ("arrived_at,num_prefill_tokens\n0,1\n", {}, "num_decode_tokens", "not in the file"),
        (AZ + "0,10,5\n2,10,5\n1,10,5\n", {}, "arrived_at", "row 3 (line 4)"),
        (AZ + "-1,10,5\n", {}, "arrived_at", "minimum 0"),
        (AZ + "0,10,5\n1,10.5,5\n", {}, "num_prefill_tokens", "row 2 (line 3): 10.5 is not an integer"),
        (AZ + "0,10,-5\n", {}, "num_decode_tokens", "below the allowed minimum"),
        (AZ + "0,10,5\n1,,5\n", {}, "num_prefill_tokens", "row 2 (line 3): missing"),
        (AZ + "0,10,5\nNaN,10,5\n", {}, "arrived_at", "missing"),
        (AZ + "0,ten,5\n", {}, "num_prefill_tokens", "'ten' is not a finite number"),
        (AZ + "0,10,5\n0,0,5\n", {}, "num_prefill_tokens", "seq_len"),
        (
            "t,p\n0,1\n",
            {"format": "columns", "columns": {"arrival_s": "t", "batch": "bs"}},
            "workload.columns.batch",
            "'bs'",
        ),
        ("x\n0\n", {"format": "columns"}, "workload.columns.arrival_s", "'arrival_s'"),
        ("arrival_s,request_id\n0,1\n1,1\n", {"format": "columns"}, "request_id", "unique"),
        ("arrival_s\n0\n", {"format": "ligersim"}, "request_id", "not in the file"),
        (AZ + "0,10,5\n", {"rate": 2.0}, "workload.rate", "two jobs"),
    ],
)
def test_trace_errors_name_file_and_field(tmp_path, text, kw, field, words):
    p = csv(tmp_path, text)
    with pytest.raises(LigerSimError) as ei:
        build_jobs(trace(p, **kw), seed=0)
    e = ei.value
    assert e.field == field and Path(e.file) == p
    assert str(p) in str(e) and field in str(e) and words in str(e)


def test_missing_file_names_places_tried(tmp_path):
    with pytest.raises(LigerSimError) as ei:
        build_jobs(trace("nope.csv"), seed=0, base_dir=tmp_path)
    assert (
        ei.value.field == "workload.path" and "nope.csv" in str(ei.value) and str(tmp_path) in str(ei.value)
    )


def test_bad_extension_and_garbage_parquet(tmp_path):
    with pytest.raises(LigerSimError, match=r"workload.path.*\.csv, \.parquet"):
        build_jobs(trace(csv(tmp_path, AZ, "t.txt")), seed=0)
    with pytest.raises(LigerSimError, match="cannot read as parquet"):
        build_jobs(trace(csv(tmp_path, "not parquet", "t.parquet")), seed=0)
    with pytest.raises(LigerSimError, match="extension"):
        write_trace([Job(0, 0.0)], tmp_path / "x.json")


def test_binary_csv_is_a_user_error(tmp_path):
    p = tmp_path / "b.csv"
    p.write_bytes(b"\xff\xfe\x00\x81garbage\x00\x9f\n\x00\x00")
    with pytest.raises(LigerSimError, match="workload.path"):
        build_jobs(trace(p), seed=0)


def test_trace_config_rejects():
    with pytest.raises(ValidationError, match="columns applies only"):
        trace("x.csv", columns={"arrival_s": "t"})
    for bad in (
        {"rate": 0},
        {"jobs": 0},
        {"format": "tsv"},
        {"time_unit": "min"},
        {"seq_len": 0},
        {"colums": {}},
    ):
        with pytest.raises(ValidationError):
            trace("x.csv", **bad)
