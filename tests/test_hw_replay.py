"""`hw replay` of a simulator-recorded IR runs the same kernels in the same per-stream order,
and hw runs write the simulator's files with the same schema."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

import yaml  # noqa: E402

from hw.run import replay_ir, run_scenario  # noqa: E402
from sim import ir  # noqa: E402
from sim.outputs import write_run  # noqa: E402
from sim.scenario import parse_scenario  # noqa: E402
from sim.simulate import load_jobs, simulate  # noqa: E402

TINY = {"name": "tiny", "seed": 0,
        "hardware": {"gpu": "A100-SXM", "count": 2, "interconnect": "nvswitch-a100"},
        "model": {"preset": "liger-encoder", "hidden": 256, "heads": 4, "kv_heads": 4, "head_dim": 64,
                  "ffn": 1024, "layers": 2},
        "workload": {"kind": "generate", "jobs": 4, "arrival": {"process": "poisson", "rate": 20000},
                     "batch": 2, "seq_len": {"dist": "uniform", "low": 16, "high": 48}}}


def sim_run(tmp, policy: dict):
    scn = parse_scenario({**TINY, "policy": policy})
    jobs = load_jobs(scn, None)
    run = simulate(scn, jobs)
    write_run(tmp, run.events, jobs, run.result.schedule, scn.policy.name, run.result.sim_wall_s,
              {"scenario": scn.name})
    return run


def per_stream(ev: pd.DataFrame) -> dict:
    return {key: g.sort_values(["start_s", "kernel_id"])["kernel_id"].tolist()
            for key, g in ev.groupby(["rank", "stream"])}


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replay")
    run = sim_run(tmp / "sim", {"name": "interleaved", "depth": 3})
    replay_ir(tmp / "sim" / "ir.jsonl", tmp / "hw", device="cpu")
    return tmp, run


def test_replay_runs_the_same_kernels_in_the_same_stream_order(replayed):
    tmp, run = replayed
    hw = pd.read_parquet(tmp / "hw" / "events.parquet")
    assert len(hw) == len(run.events)
    assert (hw["fraction"] < 1).any()  # the interleaved schedule split GEMMs
    assert per_stream(hw) == per_stream(run.events)
    got, want = ir.load(tmp / "hw" / "ir.jsonl"), ir.load(tmp / "sim" / "ir.jsonl")
    assert [[op.key() for op in ops] for ops in got.by_rank()] == [[op.key() for op in ops] for ops in want.by_rank()]


def test_replay_outputs_have_the_simulators_schema(replayed):
    tmp, _ = replayed
    assert pq.read_schema(tmp / "hw" / "events.parquet").equals(pq.read_schema(tmp / "sim" / "events.parquet"))
    hw_sum = json.loads((tmp / "hw" / "summary.json").read_text())
    sim_sum = json.loads((tmp / "sim" / "summary.json").read_text())
    assert set(hw_sum) == set(sim_sum)
    assert hw_sum["completed"] == hw_sum["jobs"] == 4
    hw_req, sim_req = pd.read_csv(tmp / "hw" / "requests.csv"), pd.read_csv(tmp / "sim" / "requests.csv")
    assert list(hw_req.columns) == list(sim_req.columns)
    assert hw_req["arrival_s"].tolist() == sim_req["arrival_s"].tolist()
    trace = json.loads((tmp / "hw" / "trace.json").read_text())
    assert sum(e["ph"] == "X" for e in trace["traceEvents"]) == hw_sum["kernels"]
    info = json.loads((tmp / "hw" / "hw.json").read_text())
    assert info["backend"] == "hw" and info["device"] == "cpu" and info["executed_ranks"] == 2


def test_run_scenario_on_cpu_matches_the_simulated_kernels(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "policy": {"name": "intra_op"}}))
    summary = run_scenario(path, tmp_path / "hw", device="cpu")
    run = sim_run(tmp_path / "sim", {"name": "intra_op"})
    hw = pd.read_parquet(tmp_path / "hw" / "events.parquet")
    assert summary["kernels"] == len(run.events) and summary["completed"] == 4
    assert per_stream(hw) == per_stream(run.events)
    assert pq.read_schema(tmp_path / "hw" / "events.parquet").equals(pq.read_schema(tmp_path / "sim" / "events.parquet"))
    # the replayable IR it wrote carries the scenario and the job list, as the simulator's does
    meta = ir.load(tmp_path / "hw" / "ir.jsonl").meta
    assert meta["policy"] == "intra_op" and len(meta["job_list"]) == 4
