"""CUPTI timing (`hw.cupti`): ops matched to the device work they launched, on a recorded-shape trace."""

from __future__ import annotations

import pytest

from hw.cupti import TAG, host_offset_us, op_intervals
from sim.cli import main


def _ev(cat, name, ts, dur, tid=1, **args):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid, "args": args}


def test_ops_span_the_device_work_their_launch_calls_correlate_to():
    events = [
        # op 0: two kernels (runtime launches), the second one after a host gap
        _ev("user_annotation", f"{TAG}0", 100.0, 10.0),
        _ev("cuda_runtime", "cudaLaunchKernel", 101.0, 2.0, correlation=7),
        _ev("cuda_runtime", "cudaLaunchKernel", 106.0, 2.0, correlation=8),
        _ev("kernel", "add", 130.0, 5.0, tid=7, correlation=7),
        _ev("kernel", "norm", 136.0, 4.0, tid=7, correlation=8),
        # op 1: a Triton kernel through the driver API, plus a memset
        _ev("user_annotation", f"{TAG}1", 120.0, 6.0),
        _ev("cuda_driver", "cuLaunchKernel", 121.0, 1.0, correlation=9),
        _ev("cuda_runtime", "cudaMemsetAsync", 123.0, 1.0, correlation=10),
        _ev("gpu_memset", "Memset", 140.0, 1.0, tid=8, correlation=10),
        _ev("kernel", "spin", 141.0, 50.0, tid=8, correlation=9),
        # op 2: no device work; a launch on another host thread inside its span is not its own
        _ev("user_annotation", f"{TAG}2", 200.0, 5.0),
        _ev("cuda_runtime", "cudaLaunchKernel", 201.0, 1.0, tid=2, correlation=11),
        _ev("kernel", "other", 210.0, 3.0, tid=7, correlation=11),
        # someone else's annotation and a launch outside every range
        _ev("user_annotation", "aten::mm", 100.0, 300.0),
        _ev("cuda_runtime", "cudaLaunchKernel", 300.0, 1.0, correlation=12),
        _ev("kernel", "late", 310.0, 1.0, tid=7, correlation=12),
    ]
    got = op_intervals(events)
    # op 0's kernels leave a 1 us gap: busy 9 of its 10 us; op 1's memset and kernel touch
    assert got == {0: (100.0, 130.0, 140.0, 9.0), 1: (120.0, 140.0, 191.0, 51.0)}
    # the runtime read its clock 3 µs before each range opened; host seconds since the origin
    off = host_offset_us(got, {0: 97e-6 + 1.0, 1: 117e-6 + 1.0, 2: 5.0})
    assert off == pytest.approx(1e6 - 3.0)
    with pytest.raises(ValueError, match="no tagged op"):
        host_offset_us({}, {0: 1.0})


def test_cupti_timing_on_cpu_is_a_clear_error(tmp_path, capsys):
    pytest.importorskip("torch")
    assert main(["hw", "run", "scenarios/tiny-cpu.yaml", "-o", str(tmp_path), "--device", "cpu",
                 "--timing", "cupti"]) == 2
    assert "--timing cupti times CUDA kernels" in capsys.readouterr().err
