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
        # op 3: its second kernel's launch call returned (409) after the first kernel ended (402):
        # of the 8 us gap, 1 us (409 -> 410) is the GPU's, the rest the host's
        _ev("user_annotation", f"{TAG}3", 390.0, 30.0),
        _ev("cuda_runtime", "cudaLaunchKernel", 391.0, 1.0, correlation=13),
        _ev("cuda_runtime", "cudaLaunchKernel", 408.0, 1.0, correlation=14),
        _ev("kernel", "a", 400.0, 2.0, tid=7, correlation=13),
        _ev("kernel", "b", 410.0, 2.0, tid=7, correlation=14),
    ]
    got = op_intervals(events)
    assert set(got) == {0, 1, 3}
    # op 0's kernels leave a 1 us gap although the second was launched long before: busy 9 of its
    # 10 us, and that gap is the GPU's own (fed 10); op 1's memset and kernel touch
    assert (got[0].range_start, got[0].start, got[0].end, got[0].busy, got[0].fed) == (100.0, 130.0, 140.0, 9.0, 10.0)
    assert (got[1].start, got[1].end, got[1].busy, got[1].fed) == (140.0, 191.0, 51.0, 51.0)
    assert (got[3].busy, got[3].fed) == (4.0, 5.0)
    assert got[3].kernels == ((400.0, 402.0, 392.0), (410.0, 412.0, 409.0))
    # the runtime read its clock 3 µs before each range opened; host seconds since the origin
    got.pop(3)
    off = host_offset_us(got, {0: 97e-6 + 1.0, 1: 117e-6 + 1.0, 2: 5.0})
    assert off == pytest.approx(1e6 - 3.0)
    with pytest.raises(ValueError, match="no tagged op"):
        host_offset_us({}, {0: 1.0})


def test_cupti_timing_on_cpu_is_a_clear_error(tmp_path, capsys):
    pytest.importorskip("torch")
    assert main(["hw", "run", "scenarios/tiny-cpu.yaml", "-o", str(tmp_path), "--device", "cpu",
                 "--timing", "cupti"]) == 2
    assert "--timing cupti times CUDA kernels" in capsys.readouterr().err


def test_runtime_rows_take_each_ops_fed_time_and_keep_its_activities():
    """A CUPTI-timed runtime's rows start at the op's first activity and last its `fed` time; its
    activities are kept (on the run's clock) for `cupti_kernels.parquet`."""
    torch = pytest.importorskip("torch")

    from hw.collectives import NoCollectives
    from hw.cupti import OpTiming
    from hw.kernels import GenericKernels
    from hw.runtime import TorchRuntime
    from sim.kernels import Kernel, pointwise

    rt = TorchRuntime(0, 1, lambda _k: 0.0, GenericKernels("cpu", torch.float32, NoCollectives()), "cpu")
    k = Kernel(pointwise("elementwise", "norm", 64, 1, 1, 0.0), 0, 7, 0)
    k.kernel_id = 5
    rt._kernels = [(k, 0, 0.5, None, None)]
    rt._cupti = {0: OpTiming(10.0, 20.0, 40.0, 15.0, 18.0, ((20.0, 30.0, 12.0), (35.0, 40.0, 33.0)))}
    rt._offset_us = 1e6
    (row,) = rt.rows()
    assert row[12] == pytest.approx(1.00002) and row[13] == pytest.approx(1.00002 + 18e-6)
    assert rt.cupti_kernels() == [(0, 5, pytest.approx(1.00002), pytest.approx(1.00003), pytest.approx(1.000012)),
                                  (0, 5, pytest.approx(1.000035), pytest.approx(1.00004), pytest.approx(1.000033))]


def test_calibration_reps_are_timed_as_validation_times_an_op():
    """`rep_times`: calibration's CUPTI timer reads each gated repetition like validation reads an
    op: busy time plus the GPU's own gaps (all of them, since gated launches return first); and
    the GPU's gap from one repetition to the next, where the next had been launched in time."""
    from hw.cupti import rep_times

    events = [_ev("kernel", "sleep", 0.0, 500.0, tid=7, correlation=1),  # the gate: in no range
              _ev("cuda_runtime", "cudaLaunchKernel", 1.0, 1.0, correlation=1)]
    for i in range(3):  # each rep: two kernels 1 us apart, launched long before the GPU reached them
        t = 10.0 * i + 20.0
        events += [_ev("user_annotation", f"{TAG}{i}", t, 5.0),
                   _ev("cuda_runtime", "cudaLaunchKernel", t + 1.0, 1.0, correlation=10 + 2 * i),
                   _ev("cuda_runtime", "cudaLaunchKernel", t + 3.0, 1.0, correlation=11 + 2 * i),
                   _ev("kernel", "a", 500.0 + 8.0 * i, 3.0, tid=7, correlation=10 + 2 * i),
                   _ev("kernel", "b", 504.0 + 8.0 * i, 2.0, tid=7, correlation=11 + 2 * i)]
    times, gaps = rep_times(events, 3)
    assert times == pytest.approx([6e-6] * 3)
    assert gaps == pytest.approx([2e-6] * 2)  # each rep's first kernel 2 us after the previous rep's last
    with pytest.raises(ValueError, match="no device work for 1 of 4 repetitions"):
        rep_times(events, 4)
    # a fourth rep launched only after the third had ended: its gap is the host's, not the GPU's
    events += [_ev("user_annotation", f"{TAG}3", 590.0, 15.0),
               _ev("cuda_runtime", "cudaLaunchKernel", 599.0, 1.0, correlation=30),
               _ev("kernel", "a", 601.0, 3.0, tid=7, correlation=30)]
    times, gaps = rep_times(events, 4)
    assert times[3] == pytest.approx(3e-6) and gaps == pytest.approx([2e-6] * 2)


def test_calibrate_timer_is_checked_and_not_mixed_on_resume(tmp_path):
    """--timer takes events or cupti; a profile begun with one timer is not resumed with another."""
    import yaml

    from hw.calibrate import calibrate
    from sim.errors import LigerSimError

    with pytest.raises(LigerSimError, match="--timer 'clock'"):
        calibrate(tmp_path / "p.yaml", device="cpu", timer="clock")
    with pytest.raises(SystemExit):
        main(["calibrate", "-o", str(tmp_path / "p.yaml"), "--timer", "clock"])
    torch = pytest.importorskip("torch")
    from hw.calibrate import device_info

    out = tmp_path / "cupti.yaml"
    device = device_info(torch, "cpu")
    out.write_text(yaml.safe_dump({"format": "ligersim-profile", "version": 1, "status": "partial", "device": device,
                                   "date": "2026-11-22", "command": "x", "settings": {"timer": "cupti"}}))
    with pytest.raises(LigerSimError, match="holds kernels timed with cupti, not events"):
        calibrate(out, device="cpu", progress=False)
