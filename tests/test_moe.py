"""Mixture-of-experts models: routing expectations, the MoE layer's kernels under tensor-parallel
and expert-parallel experts, weights, end-to-end runs, and clear errors."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest

import sim.moe as moe
from sim.costs import RooflineCost
from sim.errors import LigerSimError
from sim.layers import decoder_layer, iteration_layer, layer_params
from sim.links import build_topology
from sim.presets import GPUS, INTERCONNECTS
from sim.scenario import ModelSpec, parse_scenario
from sim.simulate import load_jobs, simulate

ZERO_HOST = {"preset": "default", "launch_s": 0.0, "sync_wakeup_s": 0.0}


def shape(name: str, **over):
    return ModelSpec.model_validate({"preset": name, **over}).shape()


def scenario(model: dict | str = None, count: int = 4, **pol) -> dict:
    return copy.deepcopy({
        "name": "moe", "seed": 1,
        "hardware": {"gpu": "H100-SXM", "count": count, "interconnect": "nvswitch-h100", "host": dict(ZERO_HOST)},
        "model": model or {"preset": "mixtral-8x7b", "layers": 2},
        "workload": {"kind": "generate", "jobs": 10, "arrival": {"process": "poisson", "rate": 200.0}, "batch": 1,
                     "prompt_tokens": {"dist": "uniform", "low": 16, "high": 400},
                     "output_tokens": {"dist": "uniform", "low": 1, "high": 12}},
        "serving": {"mode": "generative"},
        "policy": {"name": "intra_op", **pol},
    })


# ------------------------------------------------------------------ routing expectations
def test_expected_max_of_normals_is_the_known_value():
    assert moe._expected_max_normal(2) == pytest.approx(1 / math.sqrt(math.pi), abs=1e-8)
    assert moe._expected_max_normal(8) == pytest.approx(1.42360, abs=1e-4)  # order statistics tables


def test_one_rank_computes_every_routed_row():
    for t in (1, 7, 300, 5000):
        load = moe.expert_load(t, 128, 8, 1)
        assert load.rows == t * 8
        assert load.active == pytest.approx(128 * (1 - (1 - 8 / 128) ** t))


@pytest.mark.parametrize("tokens,experts,k,ranks", [(1, 8, 2, 8), (4, 8, 2, 4), (40, 128, 8, 8), (3000, 128, 8, 8),
                                                    (10, 64, 6, 2)])
def test_busiest_rank_is_between_the_mean_and_every_token(tokens, experts, k, ranks):
    load = moe.expert_load(tokens, experts, k, ranks)
    local = experts // ranks
    assert tokens * k / ranks <= load.rows <= tokens * min(k, local)
    assert 1 <= load.active <= local


def test_one_token_over_mixtrals_experts():
    """Mixtral over 8 ranks: a token's two experts are on two ranks, so the busiest computes one row;
    over 4 ranks of two experts each, both are on one rank with probability 1/7."""
    assert moe.expert_load(1, 8, 2, 8) == moe.ExpertLoad(1.0, 1.0)
    two = moe.expert_load(1, 8, 2, 4)
    assert two.rows == pytest.approx(1 + 1 / 7, abs=0.03) and two.active == pytest.approx(1 + 1 / 7, abs=0.03)


def test_sampled_and_normal_limits_meet_where_they_switch(monkeypatch):
    for args in [(192, 8, 2, 8), (48, 128, 8, 8), (24, 128, 8, 4), (12, 128, 8, 2)]:
        monkeypatch.setattr(moe, "NORMAL_FROM", 1e9)
        moe.expert_load.cache_clear()
        sampled = moe.expert_load(*args)
        monkeypatch.setattr(moe, "NORMAL_FROM", 0.0)
        moe.expert_load.cache_clear()
        normal = moe.expert_load(*args)
        assert normal.rows == pytest.approx(sampled.rows, rel=0.03), args
        assert normal.active == pytest.approx(sampled.active, rel=0.01), args
    moe.expert_load.cache_clear()


def test_imbalance_shrinks_as_tokens_grow():
    ratios = [moe.expert_load(t, 128, 8, 8).rows / (t * 8 / 8) for t in (8, 64, 512, 8192)]
    assert ratios == sorted(ratios, reverse=True)
    assert ratios[0] > 1.3 and ratios[-1] < 1.03


# ------------------------------------------------------------------ the layer's kernels and weights
def test_published_parameter_counts():
    def total(m):
        return layer_params(m) * m.layers + 2 * m.vocab * m.hidden

    assert total(shape("mixtral-8x7b")) / 1e9 == pytest.approx(46.7, abs=0.1)
    assert total(shape("qwen3-30b-a3b")) / 1e9 == pytest.approx(30.5, abs=0.2)
    assert total(shape("qwen3-235b-a22b")) / 1e9 == pytest.approx(235.1, abs=0.5)


def test_dense_layers_are_unchanged_by_the_moe_fields():
    m = shape("llama2-70b")
    assert not m.moe
    assert [s.name for s in decoder_layer(m, 4, 1, 16)] == [
        "input_norm", "qkv_proj", "rope", "attention", "o_proj", "attn_all_reduce", "post_attn_norm",
        "gate_up_proj", "silu_mul", "down_proj", "mlp_all_reduce"]


def expert_flops(m, tp, tokens):
    ks = iteration_layer(m, tp, [(tokens, 0)], [])
    return sum(s.flops for s in ks if s.kind == "grouped_gemm")


def test_tensor_parallel_experts_split_every_routed_row_evenly():
    m = shape("qwen3-30b-a3b")
    t = 512
    whole = 2 * t * m.experts_per_token * 3 * m.hidden * m.ffn  # gate, up and down of every routed row
    assert expert_flops(m, 1, t) == pytest.approx(whole)
    assert expert_flops(m, 4, t) == pytest.approx(whole / 4)


def test_expert_parallel_charges_the_busiest_rank():
    m = replace(shape("qwen3-30b-a3b"), expert_parallel=True)
    t = 64
    load = moe.expert_load(t, m.experts, m.experts_per_token, 4)
    assert expert_flops(m, 4, t) == pytest.approx(2 * load.rows * 3 * m.hidden * m.ffn)
    assert load.rows > t * m.experts_per_token / 4  # above the even share
    ks = {s.name: s for s in iteration_layer(m, 4, [(t, 0)], [])}
    routed = t * m.experts_per_token  # vLLM's expert_map: activation and sum over every routed row
    assert ks["silu_mul"].dims["elems"] == routed * m.ffn
    assert ks["moe_sum"].bytes == (routed + t) * m.hidden * 2
    weights_and_rows = (load.active * m.hidden * 2 * m.ffn + load.rows * (m.hidden + 2 * m.ffn)) * 2
    assert ks["experts_gate_up"].bytes == pytest.approx(weights_and_rows + (routed - load.rows) * 2 * m.ffn * 2)
    names = [s.name for s in iteration_layer(m, 4, [(t, 0)], [])]
    assert names[names.index("post_attn_norm") + 1:] == [
        "router", "router_topk", "experts_gate_up", "silu_mul", "experts_down", "moe_sum", "mlp_all_reduce"]


def test_moe_activations_are_fused_moes_buffers():
    """Per token, k rows of max(gate/up width, hidden) plus the activation's width: for Qwen3-235B
    on TP 8 the hidden-wide output rows dominate. The KV cache gives up that much room for each
    token of the iteration's budget."""
    from sim.layers import ffn_activation_elems
    from sim.serving import ServingSpec, kv_bytes_per_token, kv_capacity_tokens

    m = shape("qwen3-235b-a22b")
    assert ffn_activation_elems(m, 8) == 8 * (4096 + 192)
    assert ffn_activation_elems(replace(m, expert_parallel=True), 8) == 8 * (4096 + 1536)  # the hidden-wide rows still the larger
    small, large = (kv_capacity_tokens(m, 8, 1, 80e9, ServingSpec(max_batch_tokens=n, kv_block_tokens=1), "f")
                    for n in (2048, 10240))
    per_token = (4 * 4096 + 8 * (4096 + 192)) * 2
    assert small - large == pytest.approx(8192 * per_token / kv_bytes_per_token(m, 8, 1), abs=2)


def roofline():
    g = GPUS["H100-SXM"]
    return RooflineCost(g["peak_flops"], g["hbm_bw"], g["sms"], 2e-6, build_topology(INTERCONNECTS["nvswitch-h100"], 8))


def test_decode_reads_the_weights_of_the_experts_it_touches():
    """Small decode batches read only the experts their tokens touch: cost grows with the batch until
    every expert is read, then stays."""
    m, cost = shape("qwen3-235b-a22b"), roofline()

    def experts_time(b):
        return sum(cost.spec_solo(s) for s in iteration_layer(m, 8, [], [500] * b) if s.kind == "grouped_gemm")

    times = [experts_time(b) for b in (1, 4, 16, 64, 256)]
    assert times == sorted(times)
    assert times[1] > 2 * times[0]
    assert times[-1] < 1.15 * times[-2]


def test_expert_parallel_decode_cost_grows_smoothly_across_the_switch():
    """Where the routing expectation switches from sampling to the normal limit (48 rows per
    rank: 48 tokens on Qwen3's 8 ranks), the busiest rank's experts cost no less for more tokens."""
    m, cost = replace(shape("qwen3-235b-a22b"), expert_parallel=True), roofline()
    times = [sum(cost.spec_solo(s) for s in iteration_layer(m, 8, [], [500] * b) if s.kind == "grouped_gemm")
             for b in range(40, 57)]
    assert times == sorted(times)


def test_grouped_gemm_pads_each_experts_rows():
    """Each expert's rows fill whole row tiles: 129 rows per expert take two 128-row tiles each, so
    twice the waves of 128 rows per expert; the same rows as one dense GEMM take about as many
    waves as 128 rows per expert."""
    from sim import kernels as K

    cost = roofline()
    whole = cost._grouped_waves(K.grouped_gemm("g", 128, 128 * 128, 1536, 4096))
    padded = cost._grouped_waves(K.grouped_gemm("g", 128, 128 * 129, 1536, 4096))
    dense = cost._gemm_waves(K.gemm("d", 128 * 129, 1536, 4096))
    assert padded == pytest.approx(2 * whole, rel=0.02)
    assert dense < 0.6 * padded


# ------------------------------------------------------------------ runs
def test_expert_parallel_folds_exactly_and_replays(tmp_path):
    """Every rank is charged the busiest rank's experts, so the ranks stay alike: folding is exact,
    and the IR file (grouped GEMMs with expected rows) replays to the same events."""
    from sim import ir
    from sim.simulate import replay

    scn = parse_scenario(scenario(expert_parallel=True))
    jobs = load_jobs(scn, None)
    full = simulate(scn, jobs)
    folded = simulate(scn, jobs, fold_ranks=True)
    assert full.events["end_s"].max() == pytest.approx(folded.events["end_s"].max(), rel=1e-12)
    assert (full.events["name"] == "experts_down").any()
    ir.save(full.result.schedule, tmp_path / "ir.jsonl")
    again = replay(ir.load(tmp_path / "ir.jsonl"))
    assert again.events["end_s"].max() == pytest.approx(full.events["end_s"].max(), rel=1e-12)


def test_expert_parallel_changes_only_the_experts():
    """One request alone runs the same iterations either way: only the expert kernels differ."""
    from sim.jobs import Job

    jobs = [Job(0, 0.0, 1, 300, 300, 8)]
    ev = {ep: simulate(parse_scenario(scenario(expert_parallel=ep)), jobs, fold_ranks=True).events
          for ep in (False, True)}
    for name in ("qkv_proj", "decode_attention", "router"):
        a, b = (ev[ep].loc[ev[ep]["name"] == name, "end_s"].sub(ev[ep].loc[ev[ep]["name"] == name, "start_s"])
                for ep in (False, True))
        assert a.sum() == pytest.approx(b.sum(), rel=1e-9), name
    dur = {ep: (e["end_s"] - e["start_s"])[e["name"] == "experts_gate_up"].sum() for ep, e in ev.items()}
    assert dur[True] != pytest.approx(dur[False], rel=1e-3)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("model,pol,field,words", [
    ({"preset": "llama2-7b", "layers": 2}, {"expert_parallel": True}, "policy.expert_parallel", "has none"),
    ({"preset": "mixtral-8x7b", "layers": 2}, {"tp": 16, "expert_parallel": True}, "policy.tp", "8 experts"),
    ({"preset": "mixtral-8x7b", "layers": 2, "ffn": 14330}, {}, "hardware.count", "expert_parallel"),
    ({"preset": "mixtral-8x7b", "experts_per_token": 9}, {}, "model", "1 to experts=8"),
    ({"preset": "llama2-7b", "experts_per_token": 2}, {}, "model", "without experts"),
    ({"preset": "liger-encoder", "experts": 8, "experts_per_token": 2}, {}, "model", "decoder"),
])
def test_bad_moe_settings_are_one_clear_error(model, pol, field, words):
    d = scenario(model, **pol)
    if pol.get("tp") == 16:
        d["hardware"].update(count=16, interconnect="dgx-h100-ndr")
    with pytest.raises(LigerSimError) as e:
        parse_scenario(d, "moe.yaml")
    assert "moe.yaml" in str(e.value) and field in str(e.value) and words in str(e.value)


def test_a_profile_without_moe_kernels_says_to_use_the_roofline(tmp_path):
    from pathlib import Path

    prof = Path(__file__).resolve().parents[1] / "profiles" / "h100-sxm.yaml"
    d = scenario()
    d["hardware"]["profile"] = str(prof)
    scn = parse_scenario(d)
    with pytest.raises(LigerSimError, match="grouped_gemm.*roofline"):
        simulate(scn, load_jobs(scn, None))


def test_the_cuda_backend_refuses_moe_models():
    from hw.run import one_replica

    with pytest.raises(LigerSimError, match="mixture of experts"):
        one_replica(parse_scenario(scenario()), "moe.yaml")


def test_calibration_refuses_moe_models_only(tmp_path):
    """Calibration needs one replica's kernels, so a dense scenario of several replicas is fine; a
    mixture of experts has kernels the CUDA backend does not run."""
    import yaml

    from hw.calibrate import Settings, _scenarios

    dense = scenario({"preset": "llama2-7b", "layers": 2}, dp=2)
    paths = {}
    for name, d in (("dense", dense), ("moe", scenario())):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(d))
    assert len(_scenarios(Settings(scenarios=[str(paths["dense"])]))) == 1
    with pytest.raises(LigerSimError, match="mixture of experts") as e:
        _scenarios(Settings(scenarios=[str(paths["moe"])]))
    assert "model.experts" in str(e.value)
