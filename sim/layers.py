"""A model's layers as sharded kernel lists, and what the model weighs per GPU.

Tensor parallelism follows Megatron-LM (Shoeybi et al. 2019): Q/K/V and the MLP's first
GEMM are column-parallel (each rank holds heads/t heads and ffn/t columns), the attention
output and the MLP's second GEMM are row-parallel, and each is followed by an all-reduce
of the layer's activations. A mixture-of-experts model's MLP is a router and its experts,
sharded as `sim.moe` says; the all-reduce after it is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim import kernels as K
from sim.moe import expert_load


@dataclass(frozen=True, slots=True)
class ModelShape:
    """The fields of a model the kernel lists need (see `sim.presets.MODELS`)."""

    name: str
    arch: str  # encoder | decoder
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    gated: bool
    vocab: int
    norm: str  # layernorm | rmsnorm
    rope: bool
    dtype_bytes: int
    context: int = 0  # tokens per sequence the model was trained for (0: not given)
    experts: int = 0  # routed experts per MoE layer (0: a dense FFN); `ffn` is then each expert's width
    experts_per_token: int = 0  # top-k experts each token is routed to
    expert_parallel: bool = False  # the policy's: each TP rank holds experts/tp whole experts (sim.moe)

    @property
    def moe(self) -> bool:
        return self.experts > 0


def tp_errors(m: ModelShape, tp: int) -> str | None:
    """Why `tp` cannot shard `m` (None if it can)."""
    if m.heads % tp:
        ok = [d for d in range(1, m.heads + 1) if m.heads % d == 0 and d <= 64]
        return f"tp={tp} does not divide the model's {m.heads} attention heads; allowed: {ok}"
    if m.kv_heads % tp and tp % m.kv_heads:
        return f"tp={tp} and the model's {m.kv_heads} KV heads divide neither way"
    if m.moe and m.expert_parallel:
        if m.experts % tp:
            ok = [d for d in range(1, m.experts + 1) if m.experts % d == 0 and m.heads % d == 0]
            return (f"expert parallelism over tp={tp} ranks does not divide the model's {m.experts} experts; "
                    f"allowed: {ok}")
    elif m.ffn % tp:
        what = "each expert's FFN width" if m.moe else "the model's FFN width"
        return f"tp={tp} does not divide {what} {m.ffn}" + (" (policy.expert_parallel shards whole experts)"
                                                             if m.moe else "")
    return None


def _local_heads(m: ModelShape, tp: int) -> tuple[int, int]:
    # GQA with tp > kv_heads replicates KV heads so each rank still holds one (Megatron/vLLM).
    return m.heads // tp, max(1, m.kv_heads // tp)


def layer_kernels(m: ModelShape, tp: int, batch: int, seq: int) -> list[K.KernelSpec]:
    """The kernels one rank runs for one layer of one job of `batch` × `seq` tokens."""
    if m.arch == "encoder":
        return encoder_layer(m, tp, batch, seq)
    return decoder_layer(m, tp, batch, seq)


def encoder_layer(m: ModelShape, tp: int, batch: int, seq: int) -> list[K.KernelSpec]:
    """The Liger artifact's 16-kernel encoder layer (DESIGN.md), sharded over `tp` ranks."""
    db, t, h = m.dtype_bytes, batch * seq, m.hidden
    nh, nkv = _local_heads(m, tp)
    q_w, kv_w = nh * m.head_dim, nkv * m.head_dim
    f = m.ffn // tp * (2 if m.gated else 1)
    ks = [
        K.gemm("q_proj", t, q_w, h, db, bias=True),
        K.gemm("k_proj", t, kv_w, h, db, bias=True),
        K.gemm("v_proj", t, kv_w, h, db, bias=True),
        K.pointwise("elementwise", "bias_transpose", t * (q_w + 2 * kv_w), 1, 1, 1.0, db),
        K.bgemm("qk_bmm", batch * nh, seq, seq, m.head_dim, db),
        K.pointwise("softmax", "softmax", batch * nh * seq * seq, 1, 1, 5.0, db),
        K.bgemm("sv_bmm", batch * nh, seq, m.head_dim, seq, db),
        K.pointwise("elementwise", "transpose", t * q_w, 1, 1, 0.0, db),
        K.gemm("out_proj", t, h, q_w, db, bias=True),
    ]
    if tp > 1:
        ks.append(K.collective("all_reduce", "attn_all_reduce", t * h * db))
    ks += [
        K.pointwise("layernorm", "layernorm_1", t * h, 2, 1, 8.0, db),
        K.gemm("mlp_up", t, f, h, db, bias=True),
        K.pointwise("elementwise", "bias_act", t * m.ffn // tp, 2 if m.gated else 1, 1, 8.0, db),
        K.gemm("mlp_down", t, h, m.ffn // tp, db, bias=True),
    ]
    if tp > 1:
        ks.append(K.collective("all_reduce", "mlp_all_reduce", t * h * db))
    ks.append(K.pointwise("layernorm", "layernorm_2", t * h, 2, 1, 8.0, db))
    return ks


def decoder_layer(m: ModelShape, tp: int, batch: int, seq: int, past: int = 0) -> list[K.KernelSpec]:
    """A LLaMA/OPT-style decoder layer over `seq` new tokens per sequence with `past` cached."""
    nh, nkv = _local_heads(m, tp)
    attn = K.attention("attention", batch, nh, seq, past + seq, m.head_dim, nkv, causal=True, dtype_bytes=m.dtype_bytes)
    return _decoder_head(m, tp, batch * seq) + [attn] + _decoder_tail(m, tp, batch * seq)


def _decoder_head(m: ModelShape, tp: int, t: int) -> list[K.KernelSpec]:
    """A decoder layer before attention, over `t` tokens: norm, fused QKV projection, RoPE."""
    db, h = m.dtype_bytes, m.hidden
    nh, nkv = _local_heads(m, tp)
    q_w, kv_w = nh * m.head_dim, nkv * m.head_dim
    norm = "rmsnorm" if m.norm == "rmsnorm" else "layernorm"
    ks = [K.pointwise(norm, "input_norm", t * h, 2, 1, 6.0, db), K.gemm("qkv_proj", t, q_w + 2 * kv_w, h, db)]
    if m.rope:
        ks.append(K.pointwise("rope", "rope", t * (q_w + kv_w), 1, 1, 6.0, db))
    return ks


def _decoder_tail(m: ModelShape, tp: int, t: int) -> list[K.KernelSpec]:
    """A decoder layer after attention, over `t` tokens: O-proj, all-reduce, norm, MLP, all-reduce."""
    db, h, f = m.dtype_bytes, m.hidden, m.ffn // tp
    ks = [K.gemm("o_proj", t, h, _local_heads(m, tp)[0] * m.head_dim, db)]
    if tp > 1:
        ks.append(K.collective("all_reduce", "attn_all_reduce", t * h * db))
    ks.append(K.pointwise("rmsnorm" if m.norm == "rmsnorm" else "layernorm", "post_attn_norm", t * h, 2, 1, 6.0, db))
    if m.moe:
        ks += _moe_mlp(m, tp, t)
    else:
        ks += [
            K.gemm("gate_up_proj" if m.gated else "fc1", t, f * (2 if m.gated else 1), h, db),
            K.pointwise("elementwise", "silu_mul" if m.gated else "relu", t * f, 2 if m.gated else 1, 1, 5.0, db),
            K.gemm("down_proj" if m.gated else "fc2", t, h, f, db),
        ]
    if tp > 1:
        ks.append(K.collective("all_reduce", "mlp_all_reduce", t * h * db))
    return ks


def _moe_mlp(m: ModelShape, tp: int, t: int) -> list[K.KernelSpec]:
    """A mixture-of-experts MLP over `t` tokens on one rank, as vLLM's fused MoE (Triton) runs it:
    the router (replicated on every rank), softmax and top-k, the experts' gate/up and down
    projections as grouped GEMMs over the rows this rank's experts get, the activation over every
    routed row, and the sum of each token's expert outputs weighted by the router. Under expert
    parallelism the GEMMs write zeros for the rows routed to other ranks' experts, and the
    activation and the sum still run over all t × k rows (vLLM's expert_map)."""
    db, h, e, k = m.dtype_bytes, m.hidden, m.experts, m.experts_per_token
    if m.expert_parallel:
        load, width = expert_load(t, e, k, tp), m.ffn
    else:
        load, width = expert_load(t, e, k, 1), m.ffn // tp
    up, routed = width * (2 if m.gated else 1), t * k
    elsewhere = routed - load.rows  # rows routed to other ranks' experts: written as zeros
    gate_up = K.grouped_gemm("experts_gate_up", load.active, load.rows, up, h, db, elsewhere)
    down = K.grouped_gemm("experts_down", load.active, load.rows, h, width, db, elsewhere)
    topk = K.KernelSpec("softmax", "router_topk", {"elems": t * e}, 5.0 * t * e, float((t * e + 2 * routed) * db), db)
    moe_sum = K.KernelSpec("elementwise", "moe_sum", {"elems": t * h}, 2.0 * routed * h, float((routed + t) * h * db),
                           db)
    return [
        K.gemm("router", t, e, h, db),
        topk,
        gate_up,
        K.pointwise("elementwise", "silu_mul" if m.gated else "relu", routed * width, 2 if m.gated else 1, 1, 5.0, db),
        down,
        moe_sum,
    ]


def ffn_activation_elems(m: ModelShape, tp: int) -> int:
    """Elements of FFN activations per token on one rank: the up projection's output and the
    activation's (2 × ffn/tp); for a mixture of experts, vLLM's fused-MoE buffers for each of the
    token's k rows: max(gate/up width, hidden) shared by the gate/up and down outputs, plus the
    activation's (width: the expert's FFN, or its 1/tp slice with tensor-parallel experts)."""
    if not m.moe:
        return 2 * m.ffn // tp
    width = m.ffn if m.expert_parallel else m.ffn // tp
    return m.experts_per_token * (max(width * (2 if m.gated else 1), m.hidden) + width)


def layer_params(m: ModelShape) -> int:
    """Weights of one layer (unsharded), biases and norms included; every expert and the router
    for a mixture of experts."""
    h, d = m.hidden, m.head_dim
    attn = h * (m.heads + 2 * m.kv_heads) * d + m.heads * d * h
    experts = max(1, m.experts)
    mlp = experts * h * m.ffn * (3 if m.gated else 2) + m.experts * h
    small = 4 * h + (m.heads + 2 * m.kv_heads) * d + experts * m.ffn * (2 if m.gated else 1)
    return attn + mlp + small


def weight_bytes_per_gpu(m: ModelShape, tp: int, pp: int = 1) -> float:
    """Bytes of weights each GPU holds when sharded `tp` ways inside `pp` pipeline stages.

    The embedding and LM head (vocab × hidden each) are split across the TP ranks of the
    first and last stage; counting both on every stage keeps the check conservative. With more
    TP ranks than KV heads each rank holds a whole KV head (`_local_heads`), not a fraction.
    """
    per_layer = layer_params(m) / tp
    if tp > m.kv_heads:  # K and V projections (weights and biases) replicated, as the kernels run them
        per_layer += 2 * m.head_dim * (m.hidden + 1) * (_local_heads(m, tp)[1] - m.kv_heads / tp)
    layers = -(-m.layers // pp)
    embed = 2 * m.vocab * m.hidden / tp
    return (per_layer * layers + embed) * m.dtype_bytes


def activation_bytes_per_gpu(m: ModelShape, tp: int, batch: int, seq: int) -> float:
    """Peak live activations of one layer of one job on one rank (largest buffers at once)."""
    nh, _ = _local_heads(m, tp)
    t = batch * seq
    scores = batch * nh * seq * seq if m.arch == "encoder" else 0
    return (4 * t * m.hidden + t * ffn_activation_elems(m, tp) + 2 * scores) * m.dtype_bytes


def prologue_kernels(m: ModelShape, tp: int, batch: int, seq: int) -> list[K.KernelSpec]:
    """Work before the first layer: the embedding lookup (none for a bare encoder stack)."""
    if not m.vocab:
        return []
    return [K.pointwise("elementwise", "embedding", batch * seq * m.hidden, 1, 1, 0.0, m.dtype_bytes)]


def epilogue_kernels(m: ModelShape, tp: int, batch: int, seq: int) -> list[K.KernelSpec]:
    """Work after the last layer: final norm and the LM head for each sequence's last token
    (column-parallel over the vocabulary, as Megatron shards it)."""
    if not m.vocab:
        return []
    norm = "rmsnorm" if m.norm == "rmsnorm" else "layernorm"
    return [K.pointwise(norm, "final_norm", batch * m.hidden, 2, 1, 6.0, m.dtype_bytes),
            K.gemm("lm_head", batch, -(-m.vocab // tp), m.hidden, m.dtype_bytes)]


def iteration_layer(m: ModelShape, tp: int, prefills: list[tuple[int, int]], decodes: list[int]) -> list[K.KernelSpec]:
    """One decoder layer of a continuous-batching iteration: `prefills` are (new tokens,
    cached tokens) of prompts or prompt chunks, `decodes` the context length of each decoding
    sequence (its new token included). GEMMs, norms and all-reduces run over all the
    iteration's tokens at once; attention is one varlen prefill kernel and one paged decode
    kernel."""
    db = m.dtype_bytes
    t = sum(c for c, _ in prefills) + len(decodes)
    nh, nkv = _local_heads(m, tp)
    ks = _decoder_head(m, tp, t)
    if prefills:
        ks.append(K.prefill_attention("prefill_attention", nh, nkv, m.head_dim, prefills, db))
    if decodes:
        ks.append(K.decode_attention("decode_attention", nh, nkv, m.head_dim, decodes, db))
    return ks + _decoder_tail(m, tp, t)
