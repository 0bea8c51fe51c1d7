"""Deterministic layer weights, whole and as one tensor-parallel rank's shard.

Every rank generates the same full matrices from the seed and keeps its Megatron slice
(columns for Q/K/V and the first MLP GEMM, rows for the output and second MLP GEMM), so
the shards of all ranks add up to exactly the unsharded layer the reference computes.
One layer's values serve every layer of the model (only the shapes, not the values, matter for
timing), but a run gives each layer its own copy (`KernelLibrary.own_weights`), so that its
memory traffic is a real model's.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from sim.layers import ModelShape


@dataclass(frozen=True, slots=True)
class Shard:
    """Which slice of the model one rank holds: `index` of `tp` tensor-parallel ranks."""

    tp: int
    index: int

    def q_heads(self, m: ModelShape) -> tuple[int, int]:
        per = m.heads // self.tp
        return self.index * per, (self.index + 1) * per

    def kv_heads(self, m: ModelShape) -> tuple[int, int]:
        """KV heads serving this rank's query heads (one, replicated, when tp > kv_heads)."""
        q0, q1 = self.q_heads(m)
        group = m.heads // m.kv_heads
        return q0 // group, max(q0 // group + 1, q1 // group)

    def ffn(self, m: ModelShape) -> tuple[int, int]:
        per = m.ffn // self.tp
        return self.index * per, (self.index + 1) * per


def _randn(name: str, shape: tuple[int, ...], scale: float, seed: int, device: str) -> torch.Tensor:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * scale


def full_weights(m: ModelShape, seed: int = 0, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The unsharded weights of one layer (float32), laid out as (in, out) for x @ W."""
    h, d, f = m.hidden, m.head_dim, m.ffn
    qw, kvw = m.heads * d, m.kv_heads * d

    def w(name: str, shape: tuple[int, ...], scale: float) -> torch.Tensor:
        return _randn(name, shape, scale, seed, device)

    def norm(prefix: str) -> dict[str, torch.Tensor]:
        out = {f"{prefix}_g": 1.0 + w(f"{prefix}_g", (h,), 0.1)}
        if m.arch == "encoder" or m.norm == "layernorm":
            out[f"{prefix}_b"] = w(f"{prefix}_b", (h,), 0.1)
        return out

    ws = {"wq": w("wq", (h, qw), h ** -0.5), "wk": w("wk", (h, kvw), h ** -0.5),
          "wv": w("wv", (h, kvw), h ** -0.5), "wo": w("wo", (qw, h), qw ** -0.5),
          "w_fc": w("w_fc", (h, f), h ** -0.5), "w_down": w("w_down", (f, h), f ** -0.5)}
    if m.gated:
        ws["w_gate"] = w("w_gate", (h, f), h ** -0.5)
    if m.arch == "encoder":  # the Liger layer is BERT-like: biases everywhere, post-LN
        ws.update(bq=w("bq", (qw,), 0.02), bk=w("bk", (kvw,), 0.02), bv=w("bv", (kvw,), 0.02),
                  bo=w("bo", (h,), 0.02), b_fc=w("b_fc", (f,), 0.02), b_down=w("b_down", (h,), 0.02))
        if m.gated:
            ws["b_gate"] = w("b_gate", (f,), 0.02)
        ws.update(norm("ln1"), **norm("ln2"))
    else:
        ws.update(norm("norm1"), **norm("norm2"))
    if m.vocab:  # final norm and LM head (the epilogue of models with a vocabulary)
        ws.update(norm("normf"), w_lm=w("w_lm", (h, m.vocab), h ** -0.5))
    return ws


def shard_weights(full: dict[str, torch.Tensor], m: ModelShape, shard: Shard) -> dict[str, torch.Tensor]:
    """One rank's slices, fused the way its kernels consume them.

    `w_up` is [gate | fc] when gated; the decoder's `w_qkv` is [q | k | v]. Biases of
    row-parallel GEMMs (`bo`, `b_down`) stay whole: they are added once, after the all-reduce.
    """
    d = m.head_dim
    q0, q1 = shard.q_heads(m)
    k0, k1 = shard.kv_heads(m)
    f0, f1 = shard.ffn(m)
    qs, kvs, fs = slice(q0 * d, q1 * d), slice(k0 * d, k1 * d), slice(f0, f1)
    out = {name: t for name, t in full.items() if name.startswith(("ln", "norm")) or name in ("bo", "b_down")}
    if "w_lm" in full:  # column-parallel over the vocabulary, padded to a multiple of tp
        per = -(-m.vocab // shard.tp)
        lm = torch.nn.functional.pad(full["w_lm"], (0, per * shard.tp - m.vocab))
        out["w_lm"] = lm[:, shard.index * per:(shard.index + 1) * per]
    out["wo"] = full["wo"][qs]
    out["w_down"] = full["w_down"][fs]
    up = [full["w_gate"][:, fs]] if m.gated else []
    out["w_up"] = torch.cat([*up, full["w_fc"][:, fs]], dim=1)
    if m.arch == "encoder":
        out.update(wq=full["wq"][:, qs], wk=full["wk"][:, kvs], wv=full["wv"][:, kvs],
                   bq=full["bq"][qs], bk=full["bk"][kvs], bv=full["bv"][kvs])
        b_up = [full["b_gate"][fs]] if m.gated else []
        out["b_up"] = torch.cat([*b_up, full["b_fc"][fs]])
    else:
        out["w_qkv"] = torch.cat([full["wq"][:, qs], full["wk"][:, kvs], full["wv"][:, kvs]], dim=1)
    return {name: t.contiguous() for name, t in out.items()}


def layer_weights(m: ModelShape, shard: Shard, device: str, dtype: torch.dtype, seed: int = 0
                  ) -> dict[str, torch.Tensor]:
    """This rank's shard of the (shared) layer weights, on `device` in `dtype`."""
    full = full_weights(m, seed, device)
    return {name: t.to(dtype) for name, t in shard_weights(full, m, shard).items()}
