"""Scenario loading and the one-line errors bad input gets."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from sim.errors import LigerSimError
from sim.scenario import load_scenario, parse_scenario
from sim.simulate import load_jobs, simulate
from tests.conftest import tiny


def write(tmp_path, data, name="s.yaml"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def error_of(data, tmp_path) -> str:
    path = write(tmp_path, data)
    with pytest.raises(LigerSimError) as e:
        scn, base = load_scenario(path)
        simulate(scn, load_jobs(scn, base), file=str(path))
    return str(e.value)


def test_presets_resolve_and_fields_override():
    d = tiny()
    d["hardware"]["gpu"] = {"preset": "A100-PCIe", "memory": 40e9}
    scn = parse_scenario(d)
    assert scn.hardware.gpu.memory == 40e9 and scn.hardware.gpu.peak_flops == 312e12
    assert scn.model.hidden == 2048 and scn.model.arch == "encoder"


def test_unknown_preset_names_field_and_allowed(tmp_path):
    d = tiny()
    d["hardware"]["gpu"] = "H200"
    msg = error_of(d, tmp_path)
    assert "s.yaml" in msg and "hardware.gpu" in msg and "H100-SXM" in msg and "H200" in msg


def test_unknown_field_lists_allowed(tmp_path):
    d = tiny()
    d["hardware"]["gpus"] = 4
    msg = error_of(d, tmp_path)
    assert "hardware.gpus" in msg and "allowed" in msg and "count" in msg


def test_malformed_yaml_names_line(tmp_path):
    msg = error_of("hardware: {gpu: A100\nmodel: [", tmp_path)
    assert "s.yaml" in msg and "malformed YAML" in msg and "line" in msg


def test_tp_must_divide_heads(tmp_path):
    d = tiny()
    d["hardware"]["count"] = 3
    msg = error_of(d, tmp_path)
    assert "does not divide" in msg and "16 attention heads" in msg


def test_model_that_does_not_fit(tmp_path):
    d = tiny()
    d["model"] = "llama2-70b"
    d["hardware"] = {"gpu": "A100-SXM", "count": 1, "interconnect": "nvswitch-a100"}
    msg = error_of(d, tmp_path)
    assert "model" in msg and "GB per GPU" in msg and "80.0 GB" in msg


@pytest.mark.parametrize("knobs,field", [
    ({"depth": 0}, "policy.depth"),
    ({"split": 0}, "policy.split"),
    ({"contention": -1.0}, "policy.contention"),
])
def test_bad_interleaved_knobs(tmp_path, knobs, field):
    msg = error_of(tiny("interleaved", **knobs), tmp_path)
    assert field in msg


def test_hybrid_degrees_must_multiply_to_gpus(tmp_path):
    msg = error_of(tiny("hybrid", tp=2, pp=3), tmp_path)
    assert "tp x pp" in msg and "hardware.count = 4" in msg


def test_unknown_policy(tmp_path):
    msg = error_of(tiny("round_robin"), tmp_path)
    assert "policy.name" in msg and "interleaved" in msg


def test_empty_and_unsorted_traces(tmp_path):
    (tmp_path / "empty.csv").write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n")
    (tmp_path / "unsorted.csv").write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n1.0,10,2\n0.5,10,2\n")
    for name, words in (("empty.csv", "empty"), ("unsorted.csv", "sorted")):
        d = tiny()
        d["workload"] = {"kind": "trace", "path": name, "batch": 1}
        msg = error_of(d, tmp_path)
        assert name in msg and words in msg


def test_cli_error_is_one_line_without_traceback(tmp_path):
    d = tiny()
    d["model"] = "gpt-5"
    path = write(tmp_path, d)
    r = subprocess.run([sys.executable, "-m", "sim.cli", "run", str(path), "-o", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "model" in lines[0] and "llama2-70b" in lines[0]


def test_ir_of_another_version(tmp_path):
    from sim import ir

    p = tmp_path / "ir.jsonl"
    p.write_text('{"format": "ligersim-ir", "version": 99, "world": 1}\n')
    with pytest.raises(LigerSimError, match="version 99"):
        ir.load(p)


@pytest.mark.parametrize("field", ["batch", "seq_len", "prompt_tokens", "output_tokens"])
@pytest.mark.parametrize("value, field_suffix, says", [
    ({"dist": "normal", "low": 1, "high": 4}, "", "unknown dist 'normal'; allowed: 'uniform', 'empirical'"),
    ({"low": 1, "high": 4}, "", "needs dist: one of 'uniform', 'empirical'"),
    ({"dist": "uniform", "high": 4}, ".low", "required field is missing"),
    ({"dist": "uniform", "low": 9, "high": 4}, "", "low (9) must be <= high (4)"),
    ({"dist": "uniform", "low": -3, "high": 4}, "", "the distribution can draw -3"),
    ({"dist": "uniform", "low": "a", "high": 4}, ".low", "valid integer"),
    ({"dist": "uniform", "low": True, "high": 4}, ".low", "valid integer (got True)"),  # not read as 1
    ({"dist": "uniform", "low": 1, "high": True}, ".high", "valid integer (got True)"),
    ({"dist": "uniform", "low": 2.0, "high": 4}, ".low", "valid integer (got 2.0)"),
    ({"dist": "uniform", "low": "2", "high": 4}, ".low", "valid integer (got '2')"),
    ({"dist": "empirical", "values": [1, True]}, ".values.1", "valid integer (got True)"),
    ({"dist": "empirical", "values": [1, 2], "weights": [True, 1]}, ".weights", "must be numbers, not true or false"),
    ({"dist": "uniform", "low": 1, "high": 4, "mean": 2}, ".mean", "allowed: dist, low, high"),
    ({"dist": "empirical", "values": [1], "weights": [1, 2]}, "", "weights has 2 entries"),
    (-3, "", "must be >= "),
    ("abc", "", "must be an integer, {dist: uniform, low, high} or {dist: empirical"),
    (12.5, "", "must be an integer"),
    (True, "", "must be an integer"),  # not read as 1
])
def test_distribution_fields_name_the_field_and_the_problem(tmp_path, field, value, field_suffix, says):
    """A job-shape field is an int or a distribution mapping: the error names the field and the
    distribution's own problem, not the int branch of the union ("seq_len.int: ... valid integer")."""
    d = tiny()
    d["workload"][field] = value
    msg = error_of(d, tmp_path)
    assert f"s.yaml: workload.{field}{field_suffix}: " in msg and says in msg, msg
    assert ".int" not in msg and "more problem" not in msg, msg


@pytest.mark.parametrize("value", ["abc", [1], True, -1.0, 11])
def test_contention_factor_or_table_is_one_message(tmp_path, value):
    msg = error_of(tiny("interleaved", contention=value), tmp_path)
    assert "policy.contention: must be a factor in (0, 10] or 'table'" in msg and "more problem" not in msg, msg
