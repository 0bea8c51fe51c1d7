"""The CUDA paths: skipped cleanly without a GPU; the emulated collective's sizing is pure."""

from __future__ import annotations

import json

import pytest
import yaml

torch = pytest.importorskip("torch")

from hw import spin  # noqa: E402
from hw.collectives import cta_count, ring_bytes  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
triton = pytest.mark.skipif(not spin.HAVE_TRITON, reason="needs Triton")

SCENARIO = {"name": "gpu-tiny", "hardware": {"gpu": "H100-SXM", "count": 4, "interconnect": "nvswitch-h100"},
            "model": {"preset": "liger-encoder", "hidden": 1024, "heads": 8, "kv_heads": 8, "head_dim": 128,
                      "ffn": 4096, "layers": 2},
            "workload": {"kind": "generate", "jobs": 6, "arrival": {"process": "poisson", "rate": 2000},
                         "batch": 2, "seq_len": {"dist": "uniform", "low": 16, "high": 128}}}


def test_ring_bytes_and_cta_count():
    assert ring_bytes(1000, 4) == 1500 and ring_bytes(1000, 1) == 0
    assert cta_count(16, 1e6, 1e-3, sms=132) == 16  # NCCL's channels suffice
    # a GLM-sized all-reduce on NVSwitch: 18.8 MB through HBM in 21 us needs ~0.9 TB/s = 36 CTAs
    assert cta_count(8, 2 * 9.4e6, 21e-6, sms=132) == 36
    assert cta_count(8, 1e10, 1e-3, sms=132) == 132  # never more CTAs than SMs
    assert cta_count(4, 0, 0.0, sms=132) == 4


def test_spin_module_imports_without_triton():
    assert isinstance(spin.HAVE_TRITON, bool)


@cuda
@triton
def test_spin_kernel_lasts_its_target():
    src = torch.zeros(1 << 20, dtype=torch.int32, device="cuda")
    dst = torch.empty_like(src)
    spin.launch(src, dst, 16, 1e-3)  # compile
    torch.cuda.synchronize()
    src.fill_(7)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    spin.launch(src, dst, 16, 2e-3)
    end.record()
    torch.cuda.synchronize()
    assert (dst == 7).all()
    assert 1.9 < start.elapsed_time(end) < 2.3  # ms


@cuda
@pytest.mark.parametrize("policy", ["intra_op", "interleaved"])
def test_emulated_run_on_one_gpu(tmp_path, policy):
    from hw.run import run_scenario

    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({**SCENARIO, "policy": {"name": policy}}))
    summary = run_scenario(p, tmp_path / "out", device="cuda", emulate=True)
    assert summary["completed"] == 6
    info = json.loads((tmp_path / "out" / "hw.json").read_text())
    assert info["mode"] == "emulate" and info["emulated_collectives"]["launches"] > 0


@cuda
def test_cuda_streams_respect_event_waits(tmp_path):
    from hw.collectives import NoCollectives
    from hw.kernels import KernelLibrary
    from hw.runtime import TorchRuntime, drive
    from hw.weights import Shard
    from sim.kernels import Kernel, gemm
    from sim.layers import ModelShape

    m = ModelShape("t", "encoder", 1, 256, 4, 4, 64, 1024, False, 0, "layernorm", False, 2)
    lib = KernelLibrary(m, Shard(1, 0), "cuda", torch.float16, NoCollectives())
    big, small = gemm("big", 4096, 4096, 4096), gemm("small", 64, 64, 64)

    def prog(rt):
        a, b = rt.new_stream(-1), rt.new_stream(0)
        rt.launch(Kernel(big, 0), a)
        e = rt.new_event()
        rt.record(e, a)
        rt.wait(b, e)
        rt.launch(Kernel(small, 0), b)
        rt.record(f := rt.new_event(), b)
        yield rt.sync(f)

    rt = TorchRuntime(0, 1, lambda _k: 0.0, lib, "cuda")
    drive(prog(rt), rt)
    rows = {r[6]: r for r in rt.rows()}
    assert rows["small"][12] >= rows["big"][13] - 5e-6  # start of small after end of big
    assert rt.sync_times[0][2] >= rows["small"][13] - 5e-6


@cuda
def test_fp16_masked_and_gqa_attention_match_the_math_backend():
    """The generative ops' SDPA calls (a bool-masked, GQA decode over padded contexts; a chunk
    behind its cached past with a bottom-right causal mask) on whatever backend torch picks on
    this GPU (cuDNN first on Hopper in recent releases, which ligersim turns off unless
    LIGERSIM_CUDNN_SDPA=1) against the math backend."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator(device="cuda").manual_seed(0)
    dev, dt = "cuda", torch.float16
    b, nh, nkv, d, L = 6, 8, 2, 128, 272
    q = torch.randn(b, nh, 1, d, device=dev, dtype=dt, generator=g)
    k = torch.randn(b, nkv, L, d, device=dev, dtype=dt, generator=g)
    v = torch.randn(b, nkv, L, d, device=dev, dtype=dt, generator=g)
    ctx = torch.tensor([17, 272, 100, 1, 64, 200], device=dev)
    mask = (torch.arange(L, device=dev)[None] < ctx[:, None]).view(b, 1, 1, L)
    c, past = 48, 160
    qc = torch.randn(1, nh, c, d, device=dev, dtype=dt, generator=g)
    kc = torch.randn(1, nkv, past + c, d, device=dev, dtype=dt, generator=g)
    vc = torch.randn(1, nkv, past + c, d, device=dev, dtype=dt, generator=g)
    ar = torch.arange(past + c, device=dev)
    cmask = ar[None] <= past + ar[:c, None]
    calls = [(q, k, v, mask), (qc, kc, vc, cmask)]
    got = [F.scaled_dot_product_attention(a, b_, c_, attn_mask=m, enable_gqa=True) for a, b_, c_, m in calls]
    with sdpa_kernel(SDPBackend.MATH):
        want = [F.scaled_dot_product_attention(a.float(), b_.float(), c_.float(), attn_mask=m, enable_gqa=True)
                for a, b_, c_, m in calls]
    for x, y in zip(got, want):
        assert torch.isfinite(x).all()
        assert (x.float() - y).norm() / y.norm() < 5e-3


@cuda
@triton
def test_emulated_send_lasts_the_link_models_time_for_one_flow():
    """An emulated pipeline send copies its bytes through HBM and spins to the link model's time
    for one flow (not a PCIe copy to the host)."""
    from hw.collectives import EmulatedCollectives
    from sim.links import build_topology
    from sim.presets import INTERCONNECTS

    topo = build_topology(INTERCONNECTS["nvswitch-h100"], 2)
    comm = EmulatedCollectives(0, topo)
    t = torch.zeros(1 << 22, dtype=torch.float16, device="cuda")  # 8 MB
    comm.send(t, (0, 1))  # compile, size the scratch
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(2_000_000)  # hold the GPU while the send's launches queue: time the GPU, not Python
    start.record()
    comm.send(t, (0, 1))
    end.record()
    torch.cuda.synchronize()
    ctas, nbytes, target = comm.launched[-1]
    assert nbytes == 8 << 20 and target == pytest.approx(topo.collective_time("send", (0, 1), 8 << 20))
    assert target * 1e3 <= start.elapsed_time(end) < target * 1e3 * 1.5 + 0.02  # ms


@cuda
def test_calibration_measures_the_gpu_time_of_a_pair_of_timing_events():
    """The pair of events an events-timed run records around each op costs the GPU a little time
    between queued kernels; calibration measures it with the host out of the way (a gated queue)."""
    from hw.calibrate import Calibration, Settings, Timer

    cal = Calibration.__new__(Calibration)  # only the timer and the settings are needed
    cal.s = Settings.make("cuda", quick=True, scenarios=None)
    cal.timer, cal.torch = Timer(torch, cal.s), torch
    pair = cal._event_pair(n=100, passes=3)
    assert 0.0 <= pair < 20e-6


@cuda
@pytest.mark.parametrize("timer", ["events", "cupti"])
def test_a_sequence_is_timed_kernel_by_kernel_in_order(timer):
    """`Timer.each` (in-context calibration): a large and a small multiply queued in turn, three
    passes; each call's time is its own, in the order called."""
    from hw.calibrate import Settings, Timer

    s = Settings.make("cuda", quick=True, scenarios=None)
    s.timer = timer
    big = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    small = torch.randn(64, 64, device="cuda", dtype=torch.float16)
    rows = Timer(torch, s).each([lambda: big @ big, lambda: small @ small], passes=3)
    assert len(rows) == 3 and all(len(r) == 2 for r in rows)
    assert all(r[0] > 5 * r[1] > 0 for r in rows)  # ~0.1 ms beside a few microseconds
