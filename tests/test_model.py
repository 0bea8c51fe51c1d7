"""Kernel lists, FLOPs, weights, costs and links against formulas one can check by hand."""

from __future__ import annotations

import math

import pytest

from sim.costs import RooflineCost
from sim.kernels import gemm, split_gemm
from sim.layers import decoder_layer, encoder_layer, layer_params, weight_bytes_per_gpu
from sim.links import build_topology
from sim.presets import GPUS, INTERCONNECTS
from sim.scenario import ModelSpec


def shape(name, **kw):
    return ModelSpec.model_validate({"preset": name, **kw}).shape()


def test_encoder_layer_is_the_16_kernels_of_design():
    ks = encoder_layer(shape("liger-encoder"), tp=4, batch=2, seq=64)
    assert [k.name for k in ks] == ["q_proj", "k_proj", "v_proj", "bias_transpose", "qk_bmm", "softmax", "sv_bmm",
                                    "transpose", "out_proj", "attn_all_reduce", "layernorm_1", "mlp_up", "bias_act",
                                    "mlp_down", "mlp_all_reduce", "layernorm_2"]
    assert sum(k.is_collective for k in ks) == 2
    assert all(not k.is_collective for k in encoder_layer(shape("liger-encoder"), 1, 2, 64))


def test_sharded_gemm_flops_add_up_to_unsharded():
    m = shape("liger-encoder")
    def sharded(tp):  # layer norms run replicated on every rank; everything else is split
        return sum(k.flops for k in encoder_layer(m, tp, 2, 100) if k.kind != "layernorm")

    for tp in (2, 4, 8):
        assert sharded(tp) * tp == pytest.approx(sharded(1), rel=1e-12)
    t, h = 200, 12288
    gemms = 2 * t * (4 * h * h + 2 * h * 4 * h)
    attn = 2 * 2 * 128 * 100 * 100 * 96 * 2
    assert sum(k.flops for k in encoder_layer(m, 1, 2, 100) if k.kind in ("gemm", "bgemm")) == gemms + attn


def test_decoder_layer_gqa_shapes():
    ks = {k.name: k for k in decoder_layer(shape("llama2-70b"), tp=4, batch=1, seq=10)}
    # 64 query heads / 4 = 16, 8 KV heads / 4 = 2, head_dim 128
    assert ks["qkv_proj"].dims == {"m": 10, "n": (16 + 2 * 2) * 128, "k": 8192}
    assert ks["gate_up_proj"].dims["n"] == 2 * 28672 // 4
    assert [k.name for k in decoder_layer(shape("llama2-7b"), 2, 1, 4)] == [
        "input_norm", "qkv_proj", "rope", "attention", "o_proj", "attn_all_reduce", "post_attn_norm",
        "gate_up_proj", "silu_mul", "down_proj", "mlp_all_reduce"]


@pytest.mark.parametrize("name,params", [("llama2-7b", 6.74e9), ("llama2-13b", 13.0e9), ("llama2-70b", 69.0e9),
                                          ("opt-66b", 66.0e9), ("glm-130b", 130e9)])
def test_parameter_counts_match_published(name, params):
    m = shape(name)
    total = weight_bytes_per_gpu(m, 1) / m.dtype_bytes
    assert total == pytest.approx(params, rel=0.04)
    assert layer_params(m) > 0


def test_split_pieces_add_up_exactly():
    g = gemm("x", 100, 1001, 256)
    a, rest = split_gemm(g, 3 / 8)
    b, c = split_gemm(rest, 2 / 8)
    assert a.flops + b.flops + c.flops == g.flops
    assert a.dims["n0"] == 0 and b.dims["n0"] == a.dims["n"] and c.dims["n0"] == a.dims["n"] + b.dims["n"]
    assert a.fraction + b.fraction + c.fraction == pytest.approx(1.0)
    # a biased GEMM's pieces read their slices of the bias: beyond each re-reading the input, the
    # pieces' bytes add up to the whole's
    g = gemm("x", 100, 1001, 256, bias=True)
    a, rest = split_gemm(g, 3 / 8)
    b, c = split_gemm(rest, 2 / 8)
    reread = 2 * 100 * 256 * 2  # the input (m x k) read by the two extra pieces
    assert a.bytes + b.bytes + c.bytes == g.bytes + reread


def cost(gpu="H100-SXM", link="nvswitch-h100", n=4):
    g = GPUS[gpu]
    return RooflineCost(g["peak_flops"], g["hbm_bw"], g["sms"], 0.0, build_topology(INTERCONNECTS[link], n))


def test_roofline_bounds():
    c = cost()
    big = gemm("big", 8192, 8192, 8192)
    waves = math.ceil(64 * 64 / 132)  # 4096 tiles of 128 x 128 over 132 SMs: the last wave is partial
    assert c.spec_solo(big) == pytest.approx(big.flops / 989.4e12 * waves / (4096 / 132), rel=1e-9)
    thin = gemm("thin", 1, 8192, 8192)  # a GEMV reads the whole weight: memory bound
    assert c.spec_solo(thin) == pytest.approx(thin.bytes / 3.35e12, rel=1e-9)
    small = gemm("small", 16, 16, 64)  # one tile on one SM of 132, K too short to split
    assert c.spec_solo(small) == pytest.approx(2 * 16 * 16 * 64 / (989.4e12 / 132), rel=1e-9)
    # few output tiles but a long K: split-K spreads it over the SMs (here 16 slices of 512)
    tall = gemm("tall", 128, 1024, 8192)
    assert c._gemm_waves(tall) == pytest.approx(2 * 128 * 128 * 512 / (989.4e12 / 132), rel=1e-9)
    assert c.spec_solo(tall) == pytest.approx(tall.bytes / 3.35e12, rel=1e-9)  # and then memory bound


def test_ring_bandwidths_per_topology():
    sw = build_topology(INTERCONNECTS["nvswitch-h100"], 8)
    assert sw.best_ring(tuple(range(8)))[1] == 450e9
    pcie = build_topology(INTERCONNECTS["pcie4"], 4)
    assert pcie.best_ring((0, 1, 2, 3))[1] == pytest.approx(31.5e9 / 4)  # bridge shared by 4 flows
    mesh = build_topology(INTERCONNECTS["nvlink-v100-cube-mesh"], 8)
    assert mesh.best_ring((0, 1, 2, 3))[1] == 25e9  # no 4-ring of double links exists in a DGX-1 quad
    assert mesh.best_ring((0, 3))[1] == 50e9


def test_all_reduce_alpha_beta():
    topo = build_topology(INTERCONNECTS["nvswitch-a100"], 4)
    s = 64 * 2**20
    expected = 8.4e-6 + 6 * 3.4e-6 + 2 * 3 / 4 * s / 300e9
    assert topo.collective_time("all_reduce", (0, 1, 2, 3), s) == pytest.approx(expected, rel=1e-12)
    assert topo.collective_time("send", (0, 1), s) == pytest.approx(8.4e-6 + 3.4e-6 + s / 300e9)
