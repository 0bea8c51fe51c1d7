"""The unsharded layers in plain torch: what the sharded kernels must reproduce.

Written independently of `hw.kernels` (textbook formulas over the full weights of
`hw.weights.full_weights`), so agreement is evidence that the kernels compute the layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sim.layers import ModelShape

LN_EPS, RMS_EPS = 1e-5, 1e-6


def _norm(m: ModelShape, x: torch.Tensor, g: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    if m.arch == "decoder" and m.norm == "rmsnorm":
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + RMS_EPS) * g
    return F.layer_norm(x, (x.shape[-1],), g, b, LN_EPS)


def rope_tables(seq: int, past: int, d: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [seq, d] of rotary embedding (rotate-half form, base 10000), computed on `device`
    (on a GPU no host-to-device copy, which would block the host until the stream drains)."""
    inv = 1.0 / 10000 ** (torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)
    ang = torch.arange(past, past + seq, dtype=torch.float64, device=device)[:, None] * inv[None]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [..., seq, heads, d]."""
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None, :] + rot * sin[:, None, :]


def encoder_layer(m: ModelShape, w: dict[str, torch.Tensor], x: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    """Post-LN BERT/GLM-style layer over x [batch*seq, hidden] (bidirectional attention)."""
    d, nh, nkv = m.head_dim, m.heads, m.kv_heads
    q = (x @ w["wq"] + w["bq"]).view(batch, seq, nh, d).transpose(1, 2)
    k = (x @ w["wk"] + w["bk"]).view(batch, seq, nkv, d).transpose(1, 2).repeat_interleave(nh // nkv, 1)
    v = (x @ w["wv"] + w["bv"]).view(batch, seq, nkv, d).transpose(1, 2).repeat_interleave(nh // nkv, 1)
    p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    ctx = (p @ v).transpose(1, 2).reshape(batch * seq, nh * d)
    y1 = _norm(m, x + ctx @ w["wo"] + w["bo"], w["ln1_g"], w["ln1_b"])
    fc = y1 @ w["w_fc"] + w["b_fc"]
    a = F.gelu(y1 @ w["w_gate"] + w["b_gate"]) * fc if m.gated else F.gelu(fc)
    return _norm(m, y1 + a @ w["w_down"] + w["b_down"], w["ln2_g"], w["ln2_b"])


def decoder_layer(m: ModelShape, w: dict[str, torch.Tensor], x: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    """Pre-norm LLaMA/OPT-style layer over x [batch*seq, hidden], causal, no KV cache."""
    d, nh, nkv = m.head_dim, m.heads, m.kv_heads
    n1 = _norm(m, x, w["norm1_g"], w.get("norm1_b"))
    q = (n1 @ w["wq"]).view(batch, seq, nh, d)
    k = (n1 @ w["wk"]).view(batch, seq, nkv, d)
    v = (n1 @ w["wv"]).view(batch, seq, nkv, d)
    if m.rope:
        cos, sin = rope_tables(seq, 0, d)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    k, v = k.repeat_interleave(nh // nkv, 1), v.repeat_interleave(nh // nkv, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(d)
    s = s.masked_fill(torch.ones(seq, seq, dtype=torch.bool).triu(1), float("-inf"))
    ctx = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(batch * seq, nh * d)
    h1 = x + ctx @ w["wo"]
    n2 = _norm(m, h1, w["norm2_g"], w.get("norm2_b"))
    fc = n2 @ w["w_fc"]
    a = F.silu(n2 @ w["w_gate"]) * fc if m.gated else torch.relu(fc)
    return h1 + a @ w["w_down"]


def forward(m: ModelShape, w: dict[str, torch.Tensor], x: torch.Tensor, batch: int, seq: int, layers: int
            ) -> torch.Tensor:
    """`layers` layers sharing the weights `w`, as the hw backend runs them."""
    layer = encoder_layer if m.arch == "encoder" else decoder_layer
    for _ in range(layers):
        x = layer(m, w, x, batch, seq)
    return x


def logits(m: ModelShape, w: dict[str, torch.Tensor], y: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    """The epilogue: final norm of each sequence's last token, then the LM head [batch, vocab]."""
    last = y.view(batch, seq, -1)[:, -1]
    return _norm(m, last, w["normf_g"], w.get("normf_b")) @ w["w_lm"]


def cached_decoder_layer(m: ModelShape, w: dict[str, torch.Tensor], x: torch.Tensor, cache: list[torch.Tensor],
                         past: int) -> torch.Tensor:
    """The decoder layer over one sequence's tokens at positions past .. past+n-1 (x [n, hidden]),
    attending to the `past` cached keys/values and to themselves; appends its K/V to `cache`
    ([K, V], each [kv_heads, tokens, d])."""
    n, d, nh, nkv = x.shape[0], m.head_dim, m.heads, m.kv_heads
    n1 = _norm(m, x, w["norm1_g"], w.get("norm1_b"))
    q, k, v = (n1 @ w["wq"]).view(n, nh, d), (n1 @ w["wk"]).view(n, nkv, d), (n1 @ w["wv"]).view(n, nkv, d)
    if m.rope:
        cos, sin = rope_tables(n, past, d)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    cache[0] = torch.cat([cache[0], k.transpose(0, 1)], dim=1)
    cache[1] = torch.cat([cache[1], v.transpose(0, 1)], dim=1)
    kk, vv = cache[0].repeat_interleave(nh // nkv, 0), cache[1].repeat_interleave(nh // nkv, 0)
    s = q.transpose(0, 1) @ kk.transpose(-1, -2) / math.sqrt(d)  # [heads, n, past + n]
    later = torch.arange(past + n)[None, :] > past + torch.arange(n)[:, None]
    s = s.masked_fill(later, float("-inf"))
    ctx = (torch.softmax(s, -1) @ vv).transpose(0, 1).reshape(n, nh * d)
    h1 = x + ctx @ w["wo"]
    n2 = _norm(m, h1, w["norm2_g"], w.get("norm2_b"))
    fc = n2 @ w["w_fc"]
    a = F.silu(n2 @ w["w_gate"]) * fc if m.gated else torch.relu(fc)
    return h1 + a @ w["w_down"]


def generate(m: ModelShape, w: dict[str, torch.Tensor], embed: torch.Tensor, tokens: torch.Tensor, prompt: int,
             output: int) -> torch.Tensor:
    """One request served alone, as textbook autoregressive decoding: prefill the `prompt`
    tokens, then feed tokens[prompt], tokens[prompt+1], ... one at a time over a growing
    per-layer KV cache. Returns the logits [output, vocab] of each emitted token (the last
    position of the prefill, then of each decode step)."""
    caches = [[torch.zeros(m.kv_heads, 0, m.head_dim), torch.zeros(m.kv_heads, 0, m.head_dim)]
              for _ in range(m.layers)]
    out = []
    for step in range(output):
        past = 0 if step == 0 else prompt + step - 1
        x = embed[tokens[past:prompt if step == 0 else past + 1]]
        for layer in range(m.layers):
            x = cached_decoder_layer(m, w, x, caches[layer], past)
        out.append(_norm(m, x[-1:], w["normf_g"], w.get("normf_b")) @ w["w_lm"])
    return torch.cat(out)
