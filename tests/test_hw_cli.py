"""`ligersim hw ...`: registered without importing torch, and clear errors for what users get wrong."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import yaml

from hw import cli
from hw.torchenv import check_device, require_torch
from sim.errors import LigerSimError
from sim.provenance import ROOT, code_version

ONE_GPU = {"name": "one", "hardware": {"gpu": "A100-SXM", "count": 1, "interconnect": "nvswitch-a100"},
           "model": {"preset": "liger-encoder", "hidden": 128, "heads": 2, "kv_heads": 2, "head_dim": 64,
                     "ffn": 256, "layers": 2},
           "workload": {"kind": "generate", "jobs": 3, "arrival": {"process": "poisson", "rate": 5000},
                        "batch": 1, "seq_len": 16},
           "policy": {"name": "intra_op"}}


@pytest.fixture
def scenario(tmp_path):
    p = tmp_path / "one.yaml"
    p.write_text(yaml.safe_dump(ONE_GPU))
    return p


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, hw.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_register_adds_hw_run_and_replay():
    p = argparse.ArgumentParser(prog="ligersim")
    cli.register(p.add_subparsers(dest="command", required=True))
    a = p.parse_args(["hw", "run", "s.yaml", "-o", "out", "--device", "cpu", "--jobs", "3"])
    assert (a.hw_command, a.scenario, a.output, a.device, a.jobs, a.func) == ("run", "s.yaml", "out", "cpu", 3, cli._run)
    a = p.parse_args(["hw", "replay", "ir.jsonl", "--emulate", "--channels", "24"])
    assert (a.hw_command, a.ir, a.device, a.emulate, a.channels, a.func) == ("replay", "ir.jsonl", "cuda", True, 24,
                                                                          cli._replay)
    with pytest.raises(SystemExit):
        p.parse_args(["hw", "run", "s.yaml", "--device", "tpu"])


def test_missing_torch_says_how_to_install(monkeypatch, scenario, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(LigerSimError, match=r"pip install 'ligersim\[hw\]'"):
        require_torch()
    assert cli.main(["hw", "run", str(scenario), "--device", "cpu"]) == 2
    assert "pip install 'ligersim[hw]'" in capsys.readouterr().err


def test_cuda_requested_without_cuda(scenario, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(LigerSimError, match="--device cuda was requested"):
        check_device("cuda")
    assert cli.main(["hw", "run", str(scenario)]) == 2
    assert "--device cuda was requested" in capsys.readouterr().err


def test_other_user_errors(tmp_path, scenario):
    pytest.importorskip("torch")
    with pytest.raises(LigerSimError, match="unknown device"):
        check_device("tpu")
    from hw.run import replay_ir, run_scenario

    assert cli.main(["hw", "replay", str(tmp_path / "missing.jsonl"), "--device", "cpu"]) == 2
    with pytest.raises(LigerSimError, match="cannot read the IR file"):
        replay_ir(tmp_path / "missing.jsonl", tmp_path / "o", device="cpu")

    with pytest.raises(LigerSimError, match="emulated collective needs a CUDA GPU"):
        run_scenario(scenario, tmp_path / "o", device="cpu", emulate=True)


def test_out_of_memory_becomes_a_sized_error(scenario):
    torch = pytest.importorskip("torch")
    from hw.launch import _oom_guard
    from hw.run import Options, Source, build_plan

    plan = build_plan(Source("scenario", str(scenario)))
    with pytest.raises(LigerSimError, match=r"needs about [0-9.]+ GB per GPU on the hw backend \(2 [a-z-]+ layers' weights at tp=1"):
        with _oom_guard(plan, Options()):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")


def test_a_cpu_run_that_cannot_fit_in_host_memory_is_refused_before_it_starts(tmp_path, scenario, monkeypatch,
                                                                             capsys):
    """A CPU run holds every rank's weights in float32 in this machine's memory; one that needs more
    than the OS can give is refused up front with what it needs (the 4-rank encoder validation
    scenario needed ~58 GB on a 23 GB machine and lost a rank to SIGKILL part-way)."""
    pytest.importorskip("torch")
    from hw import launch
    from hw.memory import host_available_bytes
    from hw.run import Source, build_plan

    avail = host_available_bytes()
    assert avail is None or avail > 0
    plan = build_plan(Source("scenario", str(scenario)))
    need = launch._host_need(plan, "single")
    assert 0 < need < 1e9  # the tiny model: its weights, generation buffer and activations
    two = dict(ONE_GPU, hardware=dict(ONE_GPU["hardware"], count=2), policy={"name": "inter_op"})
    p2 = tmp_path / "two.yaml"
    p2.write_text(yaml.safe_dump(two))
    assert launch._host_need(build_plan(Source("scenario", str(p2))), "spawn") > 0
    monkeypatch.setattr(launch, "host_available_bytes", lambda: need / 2)
    assert cli.main(["hw", "run", str(scenario), "-o", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"needs about {need / 1e9:.1f} GB of host memory on the CPU backend (1 process" in err
    assert f"this machine has {need / 2e9:.1f} GB available" in err and not (tmp_path / "o" / "summary.json").exists()


def test_a_rank_killed_by_a_signal_is_named_with_the_likely_cause(scenario):
    pytest.importorskip("torch")
    import torch.multiprocessing as mp

    from hw.launch import killed_rank_message
    from hw.run import Source, build_plan

    plan = build_plan(Source("scenario", str(scenario)))
    msg = killed_rank_message(mp.ProcessExitedException("x", 2, 4321, -9, "SIGKILL"), plan)
    assert msg.startswith("rank 2 (pid 4321) was killed by SIGKILL before the run finished, most likely by the "
                          "operating system for lack of memory (this CPU run needs about ")
    assert "--emulate" in msg
    # a GPU run's ranks: no host-memory estimate or advice that does not apply
    assert killed_rank_message(mp.ProcessExitedException("x", 0, 7, -9, "SIGKILL"), None) == (
        "rank 0 (pid 7) was killed by SIGKILL before the run finished, most likely by the operating system for "
        "lack of memory")
    assert killed_rank_message(mp.ProcessExitedException("x", 1, 99, 3), None) == (
        "rank 1 (pid 99) exited with code 3 before the run finished")


def test_single_rank_run_from_the_command_line(tmp_path, scenario, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "out"
    assert cli.main(["hw", "run", str(scenario), "-o", str(out), "--device", "cpu"]) == 0
    assert "3/3 jobs" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    info = json.loads((out / "hw.json").read_text())
    assert summary["completed"] == 3 and info["mode"] == "single"
    assert info["code"] == code_version()  # which commit ran it
    # and its IR replays
    assert cli.main(["hw", "replay", str(out / "ir.jsonl"), "-o", str(tmp_path / "re"), "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "re" / "summary.json").read_text())["kernels"] == summary["kernels"]


def test_code_version_names_the_commit_or_what_the_environment_says(tmp_path, monkeypatch):
    """Results record the code that made them; a tree copied without .git is told through
    LIGERSIM_CODE, and an unknown one says so (None) instead of guessing."""
    monkeypatch.delenv("LIGERSIM_CODE", raising=False)
    assert code_version(tmp_path) is None
    if (ROOT / ".git").exists():
        here = code_version()
        assert here and len(here.split("+")[0]) == 12
    monkeypatch.setenv("LIGERSIM_CODE", "abc123")
    assert code_version(tmp_path) == "abc123"



def test_ctrl_c_in_a_run_writes_what_completed(tmp_path, scenario, monkeypatch, capsys):
    """Ctrl-C during `hw run`: the kernels already launched finish and are timed, and the outputs
    hold the jobs completed so far, flagged interrupted (as the simulator does)."""
    pytest.importorskip("torch")
    from hw.runtime import TorchRuntime

    sleep_to, calls = TorchRuntime.sleep_to, []

    def interrupt_on_the_third_arrival(self, until):
        calls.append(until)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return sleep_to(self, until)

    monkeypatch.setattr(TorchRuntime, "sleep_to", interrupt_on_the_third_arrival)
    out = tmp_path / "out"
    assert cli.main(["hw", "run", str(scenario), "-o", str(out), "--device", "cpu"]) == 0
    assert "interrupted; wrote the" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and 1 <= summary["completed"] < 3
    assert json.loads((out / "hw.json").read_text())["ranks"][0]["interrupted"] is True


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    from pathlib import Path

    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_in_a_run_of_several_processes_stops_them_all_at_once(tmp_path):
    """Ranks of a spawned run stop at different points, and one blocked in a collective would wait
    for the others until the timeout: Ctrl-C ends them all, says that nothing was written, exits 130."""
    import os
    import signal
    import time

    pytest.importorskip("torch")
    long = {**ONE_GPU, "hardware": {**ONE_GPU["hardware"], "count": 2},
            "workload": {**ONE_GPU["workload"], "jobs": 5000, "arrival": {"process": "poisson", "rate": 50}}}
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(long))
    proc = subprocess.Popen([sys.executable, "-m", "hw.cli", "run", str(path), "-o", str(tmp_path / "out"),
                             "--device", "cpu", "--no-trace"], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(_children(proc.pid)) < 3 and time.monotonic() < deadline:  # 2 ranks and the resource tracker
            time.sleep(0.5)
        time.sleep(3.0)  # the ranks are running jobs
        kids = _children(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
        t = time.monotonic()
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - t < 30
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "a run of several processes writes nothing" in err
    assert not (tmp_path / "out" / "summary.json").exists()
    time.sleep(0.5)
    assert not [k for k in kids if _running(k)]  # no rank left waiting in a collective


def _running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie awaiting its parent."""
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
