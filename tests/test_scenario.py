"""Scenario loading and the one-line errors bad input gets."""

from __future__ import annotations

import copy
import subprocess
import sys
import typing

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
    ({"dist": "uniform", "low": "a", "high": 4}, ".low", "must be an integer (got 'a')"),
    ({"dist": "uniform", "low": True, "high": 4}, ".low", "must be an integer, not true or false"),  # not read as 1
    ({"dist": "uniform", "low": 1, "high": True}, ".high", "must be an integer, not true or false"),
    ({"dist": "uniform", "low": 2.0, "high": 4}, ".low", "must be an integer (got 2.0)"),
    ({"dist": "uniform", "low": "2", "high": 4}, ".low", "must be an integer (got '2')"),
    ({"dist": "empirical", "values": [1, True]}, ".values.1", "must be an integer, not true or false"),
    ({"dist": "empirical", "values": [1, 2], "weights": [True, 1]}, ".weights.0", "must be a number, not true or false"),
    ({"dist": "empirical", "values": [1, 2], "weights": [1, "2"]}, ".weights.1", "must be a number (got '2')"),
    ({"dist": "empirical", "values": [1, 2], "weights": [1, ".inf"]}, ".weights.1", "must be a number (got '.inf')"),
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


def with_value(d: dict, path: str, value) -> dict:
    """`d` with the dotted field `path` set (a preset given by name becomes {preset: name}; a number
    in the path is a list index)."""
    node, *keys, last = [d, *path.split(".")]
    for key in keys:
        nxt = node[int(key)] if isinstance(node, list) else node.get(key)
        if isinstance(nxt, str):
            nxt = node[key] = {"preset": nxt}
        elif nxt is None:
            nxt = node[key] = {}
        node = nxt
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return d


GAMMA = {"workload.arrival": {"process": "gamma", "rate": 100.0}}
ONOFF = {"workload.arrival": {"process": "onoff", "rate": 100.0, "on_s": 1.0, "off_s": 1.0}}
TRACE = {"workload": {"kind": "trace", "path": "t.csv"}}
HOST = {"hardware.host": "default"}
PAIRS = {"hardware.contention": {"pairs": [{"victim": "compute", "other": "memory", "slowdown": 1.5}]}}
UNIFORM, EMPIRICAL = {"dist": "uniform", "low": 1, "high": 4}, {"dist": "empirical", "values": [1, 2], "weights": [1, 1]}
INTEGER, NUMBER = "an integer", "a number"
SHAPES = [f"workload.{f}" for f in ("batch", "seq_len", "prompt_tokens", "output_tokens")]
# every number of the scenario schema (test_every_number_of_the_schema_is_here checks), given a boolean
BOOLEANS = [
    ("seed", True, INTEGER, {}),
    ("hardware.count", True, INTEGER, {}),
    ("hardware.gpu.peak_flops", True, NUMBER, {}),
    ("hardware.gpu.hbm_bw", False, NUMBER, {}),
    ("hardware.gpu.memory", True, NUMBER, {}),
    ("hardware.gpu.sms", True, INTEGER, {}),
    ("hardware.interconnect.link_bw", True, NUMBER, {}),
    ("hardware.interconnect.bridge_bw", True, NUMBER, {}),
    ("hardware.interconnect.fallback_bw", False, NUMBER, {}),
    ("hardware.interconnect.mesh.0.1", True, INTEGER, {"hardware.interconnect.mesh": [[0, 1], [1, 0]]}),
    ("hardware.interconnect.max_gpus", True, INTEGER, {}),
    ("hardware.interconnect.step_latency_s", False, NUMBER, {}),
    ("hardware.interconnect.base_latency_s", True, NUMBER, {}),
    *((f"hardware.interconnect.{f}", True, INTEGER, {}) for f in ("gpus_per_node", "nics_per_node")),
    *((f"hardware.interconnect.{f}", False, NUMBER, {}) for f in ("nic_bw", "net_step_latency_s")),
    ("hardware.host.launch_s", True, NUMBER, HOST),
    ("hardware.host.sync_wakeup_s", False, NUMBER, HOST),
    ("hardware.host.kernel_overhead_s", True, NUMBER, HOST),
    ("hardware.contention.pairs.0.slowdown", True, NUMBER, PAIRS),
    *((f"model.{f}", True, INTEGER, {}) for f in ("layers", "hidden", "heads", "kv_heads", "head_dim", "ffn", "vocab",
                                                   "dtype_bytes", "context", "experts", "experts_per_token")),
    *((f"policy.{f}", True, INTEGER, {}) for f in ("tp", "pp", "dp", "depth", "split", "microbatches",
                                                    "prefill_replicas", "prefill_tp")),
    *((f"serving.{f}", True, INTEGER, {}) for f in ("max_batch_tokens", "max_batch_seqs", "kv_block_tokens", "groups")),
    *((f"serving.{f}", True, NUMBER, {}) for f in ("memory_utilization", "slo_ttft_s", "slo_tpot_s")),
    ("workload.jobs", True, INTEGER, {}),
    ("workload.arrival.rate", True, NUMBER, {}),
    ("workload.arrival.cv", True, NUMBER, GAMMA),
    ("workload.arrival.on_s", True, NUMBER, ONOFF),
    ("workload.arrival.off_s", False, NUMBER, ONOFF),
    *((f, True, INTEGER, {}) for f in SHAPES),
    *((f"workload.batch.{f}", True, INTEGER, {"workload.batch": dict(UNIFORM)}) for f in ("low", "high")),
    ("workload.seq_len.values.1", True, INTEGER, {"workload.seq_len": dict(EMPIRICAL)}),
    ("workload.seq_len.weights.0", False, NUMBER, {"workload.seq_len": dict(EMPIRICAL)}),
    ("workload.rate", True, NUMBER, TRACE),
    *((f"workload.{f}", True, INTEGER, TRACE) for f in ("jobs", "batch", "seq_len")),
]


@pytest.mark.parametrize("path, value, kind, setup", BOOLEANS,
                         ids=[b[0] + (" (trace)" if b[3] is TRACE else "") for b in BOOLEANS])
def test_a_boolean_is_no_number_anywhere_in_the_scenario(tmp_path, path, value, kind, setup):
    """YAML true/false is not read as 1/0 (`workload.jobs: true` ran one job): one line naming the
    file, the field and what it takes."""
    d = tiny()
    for where, v in setup.items():
        with_value(d, where, copy.deepcopy(v))
    says = f"must be {kind}, not true or false"
    if path in SHAPES and setup is not TRACE:  # an integer or a distribution
        says = f"must be an integer, {{dist: uniform, low, high}} or {{dist: empirical, values[, weights]}} (got {value})"
    assert error_of(with_value(d, path, value), tmp_path) == f"{tmp_path / 's.yaml'}: {path}: {says}".replace("True", "true")


def _numbers(model, prefix: str = "", kinds: tuple = (int, float)) -> set[str]:
    """Dotted paths of the schema's fields holding `kinds` (list indices left out). A `Float`
    (sim.schema) is an Annotated float: with `kinds=(float,)` only bare floats are found."""
    from sim.reference import models_in
    from sim.schema import Float

    def is_float(metadata) -> bool:
        return kinds == (float,) and any(m in metadata for m in typing.get_args(Float)[1:])

    def holds(a) -> bool:
        if typing.get_origin(a) is typing.Annotated and is_float(a.__metadata__):
            return False
        return a in kinds or any(holds(x) for x in typing.get_args(a))

    out = set()
    for name, f in model.model_fields.items():
        if holds(f.annotation) and not is_float(f.metadata):  # a plain Float field: its metadata merged in
            out.add(prefix + name)
        for sub in models_in(f.annotation):
            out |= _numbers(sub, f"{prefix}{name}.", kinds)
    return out


def test_every_number_of_the_schema_is_here():
    """Every int and float field is in BOOLEANS; every float field is a `Float` (finite, `40e9`)."""
    from sim.scenario import Scenario

    shapes = {f"workload.{f}.{k}" for f in ("batch", "seq_len", "prompt_tokens", "output_tokens")
              for k in ("low", "high", "values", "weights")}  # one shape field's stand for all four
    tested = {".".join(p for p in path.split(".") if not p.isdigit()) for path, *_ in BOOLEANS}
    assert _numbers(Scenario) - {"policy.contention"} - shapes == tested - shapes  # contention: its own test
    assert {p.rsplit(".", 1)[1] for p in tested & shapes} == {"low", "high", "values", "weights"}
    assert _numbers(Scenario, kinds=(float,)) == {"policy.contention"}  # float | 'table', checked by its validator


@pytest.mark.parametrize("path, value, says", [
    ("workload.jobs", "8", "must be an integer (got '8')"),  # a quoted number is text
    ("workload.jobs", 8.0, "must be an integer (got 8.0)"),
    ("model.gated", 1, "must be true or false (got 1)"),
    ("serving.chunked_prefill", "yes", "must be true or false (got 'yes')"),
    ("workload.arrival.rate", "5", "must be a number (got '5')"),
    ("hardware.gpu.peak_flops", float("inf"), "must be a finite number (got inf)"),
    ("hardware.interconnect.step_latency_s", float("nan"), "Input should be greater than or equal to 0 (got nan)"),
    ("hardware.gpu.memory", "1e400", "must be a finite number (got '1e400')"),
])
def test_numbers_are_taken_as_typed(tmp_path, path, value, says):
    msg = error_of(with_value(tiny(), path, value), tmp_path)
    assert msg == f"{tmp_path / 's.yaml'}: {path}: {says}", msg


def test_an_integer_is_a_number_and_yaml_exponents_are_numbers(tmp_path):
    """`rate: 5` is a number; `memory: 40e9` is one too, though PyYAML (YAML 1.1) reads it as text."""
    path = write(tmp_path, "name: t\nhardware: {gpu: {preset: A100-PCIe, memory: 40e9, hbm_bw: 1.5E12}, count: 4, "
                 "interconnect: {preset: pcie4, step_latency_s: 2e-6}}\nmodel: liger-encoder\n"
                 "workload: {kind: generate, jobs: 3, arrival: {process: poisson, rate: 5}}\n")
    scn, _ = load_scenario(path)
    assert scn.workload.arrival.rate == 5.0 and scn.hardware.gpu.memory == 40e9
    assert scn.hardware.gpu.hbm_bw == 1.5e12 and scn.hardware.interconnect.step_latency_s == 2e-6


def test_a_boolean_number_is_one_line_from_the_cli(tmp_path):
    d = tiny()
    d["workload"]["jobs"] = True
    path = write(tmp_path, d)
    r = subprocess.run([sys.executable, "-m", "sim.cli", "run", str(path), "-o", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr == f"ligersim: error: {path}: workload.jobs: must be an integer, not true or false\n"
