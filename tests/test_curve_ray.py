"""Curves on Ray (`ligersim curve --ray`): the same rows as local worker processes, a scenario's
files found from anywhere, user errors from a node as the user's error, clear refusals; and a
local sweep stopped early keeps the rows of points that finish."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sim.cli import main
from sim.errors import LigerSimError
from sim.scenario import parse_scenario
from sim.simulate import load_jobs
from sim.sweep_ray import _check_reachable, with_local_profile
from tests.conftest import tiny

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def profiled_scenario(tmp_path) -> Path:
    """A scenario in one folder whose profile is named relative to it, in another."""
    (tmp_path / "prof").mkdir()
    shutil.copy(ROOT / "profiles" / "h100-sxm.yaml", tmp_path / "prof" / "h100.yaml")
    scn = tiny("interleaved")
    scn["hardware"] = {"gpu": "H100-SXM", "count": 4, "interconnect": "nvswitch-h100", "profile": "../prof/h100.yaml"}
    scn["workload"]["jobs"] = 12
    (tmp_path / "scn").mkdir()
    path = tmp_path / "scn" / "s.yaml"
    path.write_text(yaml.safe_dump(scn))
    return path


def _curve(path: Path, out: Path, *extra: str) -> pd.DataFrame:
    assert main(["curve", str(path), "--policies", "intra_op,interleaved", "--rates", "100,400", "-o", str(out),
                 "--workers", "2", *extra]) == 0
    return pd.read_csv(out / "curve.csv").drop(columns="sim_wall_s")


def test_ray_curve_equals_local_curve_and_finds_the_profile_from_elsewhere(profiled_scenario, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.chdir(tmp_path)  # not the scenario's folder, which its profile path is relative to
    local = _curve(profiled_scenario, tmp_path / "local")
    remote = _curve(profiled_scenario, tmp_path / "ray", "--ray")
    assert len(local) == 4 and local["achieved_rate"].gt(0).all()
    pd.testing.assert_frame_equal(local, remote)
    assert not ray.is_initialized()  # the Ray the sweep started is shut down


def test_a_user_error_on_a_node_arrives_as_the_error():
    pytest.importorskip("ray")
    from sim.sweep_ray import run_on_ray

    bad = {**tiny("intra_op"), "policy": {"name": "nonesuch"}}  # refused on the node, by run_point
    rows = run_on_ray({"intra_op": bad}, [("intra_op", 10.0)], lambda rate: [], "bad.yaml", False, "", None)
    with pytest.raises(LigerSimError, match="bad.yaml: policy.name: .*unknown policy 'nonesuch'") as err:
        next(rows)
    assert type(err.value) is LigerSimError and "Traceback" not in str(err.value)  # not Ray's wrapper


def test_a_local_sweep_stopped_by_an_error_keeps_the_rows_still_finishing():
    from sim.curve import _run_local

    good = tiny("intra_op")
    good["workload"]["jobs"] = 6
    bad = {**good, "policy": {"name": "nonesuch"}}
    scn = parse_scenario(good)
    jobs = load_jobs(scn, None)
    late: list[dict] = []
    rows = _run_local({"bad": bad, "good": good}, [("bad", 100.0), ("good", 100.0)], lambda rate: jobs,
                      "s.yaml", False, 2, late)
    with pytest.raises(LigerSimError, match="unknown policy"):
        list(rows)
    assert [r["policy"] for r in late] == ["good"] and late[0]["kernels"] > 0


def test_unreachable_or_malformed_addresses_fail_at_once():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LigerSimError, match="cannot reach a Ray cluster"):
        _check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(LigerSimError, match="give HOST:PORT"):
        _check_reachable("headnode")
    _check_reachable(None)
    _check_reachable("auto")


def test_a_profile_is_written_once_per_content_on_a_node(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    scn = {"hardware": {"gpu": "H100-SXM", "profile": "/driver/only/p.yaml"}, "model": "x"}
    a = with_local_profile(scn, "kernels: {}\n")
    b = with_local_profile(scn, "kernels: {}\n")
    c = with_local_profile(scn, "kernels: {a: 1}\n")
    assert a == b and a["hardware"]["profile"] != c["hardware"]["profile"]
    assert Path(a["hardware"]["profile"]).read_text() == "kernels: {}\n" and a["model"] == "x"
    assert scn["hardware"]["profile"] == "/driver/only/p.yaml"  # the driver's mapping is left alone
    assert with_local_profile(scn, None) is scn
