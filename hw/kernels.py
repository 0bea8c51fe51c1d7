"""Executing the simulator's kernels for real: the layer math, at its real shapes.

Kernels of a model layer (`sim.layers`) are dispatched by name and compute their part of
the real layer: each reads its inputs from and writes its outputs to named buffers of the
request's state (`hw.activations`), so the output of `q_proj` is what `qk_bmm` reads and a
tensor-parallel run reproduces the unsharded layer. A piece of a GEMM split along N
computes exactly its slice of the output columns, [n0, n0 + n) as `sim.kernels.split_gemm`
records it (a piece of a split all-reduce likewise reduces bytes [b0, b0 + nbytes)); for
IRs without offsets a per-(request, layer, name) cursor hands out the next columns, which
still covers the whole GEMM in any launch order.
Any other kernel (no request, unknown name) runs at its shape on scratch tensors.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from hw.activations import ActivationStore, BufferPool, RequestState
from hw.collectives import Collectives
from hw.generative import (
    STANDIN_VOCAB,
    Composition,
    IterData,
    PagedKV,
    build_iter_data,
    embedding_table,
    token_ids,
)
from hw.reference import LN_EPS, RMS_EPS, rope_tables
from hw.weights import Shard, layer_weights
from sim.errors import LigerSimError
from sim.kernels import Kernel
from sim.layers import ModelShape, layer_kernels

Op = Callable[["KernelLibrary", RequestState, Kernel], None]
TOKEN_TRIPS = ("send_tokens", "recv_tokens")  # generative pipelines: sampled tokens back to stage 0, no activations


class KernelLibrary:
    """All kernels one rank runs: the model's layer kernels plus a generic fallback."""

    def __init__(self, model: ModelShape, shard: Shard, device: str, dtype: torch.dtype, comm: Collectives,
                 seed: int = 0, shape_of: Callable[[int], tuple[int, int] | None] | None = None,
                 inputs: str = "per_request", keep: bool = False, generative: Composition | None = None,
                 collect_logits: bool = False):
        self.m, self.shard, self.device, self.dtype, self.comm = model, shard, device, dtype, comm
        self.w = layer_weights(model, shard, device, dtype, seed)
        self._w_by_layer: dict[int, dict[str, torch.Tensor]] = {}  # `own_weights`
        self.pool = BufferPool(device, dtype)
        self.input_name = "x" if model.arch == "encoder" else "resid"
        self.store = ActivationStore(self.pool, model.hidden, shape_of or (lambda _r: None), seed, inputs, keep)
        self.d = model.head_dim
        q0, q1 = shard.q_heads(model)
        k0, k1 = shard.kv_heads(model)
        self.nh, self.nkv = q1 - q0, k1 - k0
        self.ops = ENCODER_OPS if model.arch == "encoder" else DECODER_OPS
        self.last_name = layer_kernels(model, shard.tp, 1, 1)[-1].name
        self.generic = GenericKernels(device, dtype, comm)
        self._consts: dict[tuple, torch.Tensor] = {}
        self._ln_out_ok = True
        self.seed = seed
        self.gen = generative
        if generative is not None:
            self._init_generative(generative, collect_logits)

    def own_weights(self, layers: list[int]) -> None:
        """Give each of `layers` its own copy of the layer's GEMM weights (the same values, so
        results are unchanged). A real model reads another weight at each layer, so none comes
        back while it is still in L2; with one set shared by all layers, the generative H100 runs'
        GEMMs found part of theirs there (LLaMA-2-7B at TP 4: 8-45 MB weights, 50 MB of L2) and
        were predicted long by a median 5-23% from calibration's weights read from HBM. The
        memory is what the simulator's memory model counts already: every layer's weights."""
        gemm = [name for name, t in self.w.items() if t.dim() == 2 and name != "w_lm"]
        self._w_by_layer = {}
        for i, layer in enumerate(sorted(set(layers))):
            w = dict(self.w)  # the norms' vectors and the LM head stay shared
            if i:
                w.update({name: self.w[name].clone() for name in gemm})
            self._w_by_layer[layer] = w

    # ------------------------------------------------------------------ dispatch
    def use_layer(self, layer: int) -> None:
        """Make `layer`'s weights the ones the ops read (`own_weights`; else the shared set)."""
        w = self._w_by_layer.get(layer)
        if w is not None:
            self.w = w

    def run(self, k: Kernel) -> None:
        self.use_layer(k.layer)
        if self.gen is not None and k.request_id >= 0:
            self._run_generative(k)
            return
        op = self._op(k)
        if op is None or k.request_id < 0:
            self.generic.run(k)
            return
        st = self.store.get(k.request_id, self._tokens(k), self.input_name)
        op(self, st, k)
        if self._finished(st, k):
            self.store.release(k.request_id, self._fence())

    def _op(self, k: Kernel) -> Op | None:
        """The library's op for `k` (sends and receives by kind, the rest by name), if any."""
        kind = k.spec.kind
        return self.ops.get(kind if kind in ("send", "recv") else k.spec.name)

    def prepare(self, k: Kernel) -> None:
        """Create the state of `k`'s request (its input) or iteration (KV blocks, index tensors)
        if it has none yet. The runtime calls this before it starts timing `k`: that set-up is
        the host's and the input's work, not the kernel's."""
        if k.request_id < 0 or k.request_id in self.store.states or self._op(k) is None:
            return
        if self.gen is not None:
            if k.spec.name not in TOKEN_TRIPS:
                self._gen_state(k.request_id)
        else:
            self.store.get(k.request_id, self._tokens(k), self.input_name)

    def output(self, request_id: int, name: str | None = None) -> torch.Tensor:
        """The request's current layer output, or buffer `name` (the state must still be
        held: `keep=True`)."""
        st = self.store.states[request_id]
        if name is not None:
            return st.bufs[name]
        x = st.bufs[self.input_name]
        return x + st.bufs["mlp"] if st.fold else x

    def _tokens(self, k: Kernel) -> int:
        d, kind, h = k.spec.dims, k.spec.kind, self.m.hidden
        if kind == "gemm":
            return d["m"]
        if kind == "bgemm":
            return d["b"] // self.nh * d["m"]
        if kind == "attention":
            return d["b"] * d["sq"]
        if k.spec.is_collective:
            return d["nbytes"] // (h * k.spec.dtype_bytes)
        return d["elems"] // h

    def _finished(self, st: RequestState, k: Kernel) -> bool:
        """After the request's last kernel on this rank: a pipeline send, the LM head, or the
        last kernel of the last layer (all pieces of it, when it was split)."""
        if k.spec.kind == "send":
            return True
        last = k.spec.name == "lm_head" if self.m.vocab else (
            k.layer == self.m.layers - 1 and k.spec.name == self.last_name)
        return last and (k.layer, k.spec.name) not in st.cursor

    def _fence(self) -> object | None:
        if self.device == "cpu":
            return None
        ev = torch.cuda.Event()
        ev.record(torch.cuda.current_stream())
        return ev

    # ------------------------------------------------------------------ generative iterations
    def _init_generative(self, comp: Composition, collect: bool) -> None:
        m = self.m
        if m.arch != "decoder":
            raise LigerSimError(f"generative serving on the hw backend needs a decoder model; {m.name} is an "
                                f"{m.arch}")
        self.ops = GEN_OPS
        self.vocab = m.vocab or STANDIN_VOCAB
        self.embed = embedding_table(self.vocab, m.hidden, self.seed, self.device).to(self.dtype)
        self.kv = PagedKV(comp.block, comp.capacity_tokens, self.nkv, self.d, self.device, self.dtype)
        self.rope_table: tuple[torch.Tensor, torch.Tensor] | None = None
        if m.rope:
            cos, sin = rope_tables(comp.max_len, 0, self.d, self.device)
            self.rope_table = (cos.to(self.dtype), sin.to(self.dtype))
        self._token_lists: dict[int, np.ndarray] = {}
        self.collect = collect
        self.logits: list[tuple[list[tuple[int, int]], torch.Tensor]] = []
        self._graves: deque[tuple[object, IterData]] = deque()

    def tokens_of(self, rid: int) -> np.ndarray:
        """Request `rid`'s prompt + output token ids (host)."""
        t = self._token_lists.get(rid)
        if t is None:
            assert self.gen is not None
            n = self.gen.prompt[rid] + self.gen.output[rid]
            t = self._token_lists[rid] = token_ids(self.seed, rid, n, self.vocab).numpy()
        return t

    def _run_generative(self, k: Kernel) -> None:
        """A kernel of iteration `k.request_id`: its state holds the iteration's token rows."""
        op = self._op(k)
        if op is None or k.spec.name in TOKEN_TRIPS:
            self.generic.run(k)  # the sampled tokens' trip back to the first stage carries no activations
            return
        st = self.store.states.get(k.request_id)
        if st is None:
            st = self._gen_state(k.request_id)
        op(self, st, k)
        if self._gen_finished(st, k):
            self._gen_release(st)

    def _gen_state(self, index: int) -> RequestState:
        assert self.gen is not None
        batch = self.gen.get(index)
        st = self.store.states[index] = RequestState(index, 1, batch.tokens)
        st.gen = build_iter_data(batch, self.kv, self.tokens_of, self.rope_table, self.device)
        if not self.m.vocab:  # no embedding kernel: the first layer reads the table lookup itself
            torch.index_select(self.embed, 0, st.gen.tokens, out=self.buf(st, "resid", batch.tokens, self.m.hidden))
        return st

    def _gen_finished(self, st: RequestState, k: Kernel) -> bool:
        """After the iteration's last kernel on this rank: a pipeline send, the LM head, or (an
        iteration that emits nothing) the last layer's last kernel, all pieces of it."""
        if k.spec.kind == "send":
            return True
        done = (k.layer, k.spec.name) not in st.cursor
        if k.spec.name == "lm_head":
            return done
        emits = bool(self.m.vocab) and bool(st.gen.batch.emitting)
        return not emits and done and k.layer == self.m.layers - 1 and k.spec.name == self.last_name

    def _gen_release(self, st: RequestState) -> None:
        fence = self._fence()
        for rid in st.gen.batch.finishing:
            self.kv.drop(rid, fence)
            self._token_lists.pop(rid, None)
        if fence is not None:  # its index tensors may still be read on another stream
            self._graves.append((fence, st.gen))
            while self._graves and self._graves[0][0].query():  # type: ignore[attr-defined]
                self._graves.popleft()
        self.store.release(st.request_id, fence)

    def collected_logits(self) -> dict[tuple[int, int], torch.Tensor]:
        """(request, position) -> this rank's vocabulary shard of the logits there (float32, CPU)."""
        out: dict[tuple[int, int], torch.Tensor] = {}
        for keys, t in getattr(self, "logits", []):
            t = t.float().cpu()
            for j, key in enumerate(keys):
                out[key] = t[j]
        return out

    # ------------------------------------------------------------------ building blocks
    def buf(self, st: RequestState, name: str, *shape: int) -> torch.Tensor:
        return self.store.buf(st, name, tuple(shape))

    def piece(self, st: RequestState, k: Kernel, offset: int | None, size: int, full: int) -> int:
        """First unit (column, element) of a split kernel's piece, and mark it covered.

        The piece's own offset (`n0`, `b0`) when the IR carries it, else the first columns
        no earlier piece took: weight and output slices move together, so any order of
        pieces still computes the whole GEMM."""
        key = (k.layer, k.spec.name)
        covered = st.cursor.pop(key, 0)
        start = covered if offset is None else offset
        if start + size > full or covered + size > full:
            raise LigerSimError(f"pieces of {k.spec.name} (request {k.request_id}, layer {k.layer}) cover more "
                                f"than its {full} columns/elements")
        if covered + size < full:
            st.cursor[key] = covered + size
        return start

    def gemm(self, st: RequestState, k: Kernel, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> None:
        """out = x @ w, or only this piece's columns of it."""
        d = k.spec.dims
        n, full = d["n"], w.shape[1]
        if d["m"] != x.shape[0] or d["k"] != x.shape[1] or n > full:
            raise LigerSimError(f"kernel {k.spec.name} (m={d['m']}, n={n}, k={d['k']}) does not match the "
                                f"model's {tuple(x.shape)} x {tuple(w.shape)} GEMM; is the IR from another model?")
        if n == full:
            torch.mm(x, w, out=out)
            return
        off = self.piece(st, k, d.get("n0"), n, full)
        torch.mm(x, w[:, off:off + n], out=out[:, off:off + n])

    def norm(self, x: torch.Tensor, out: torch.Tensor, prefix: str) -> None:
        g, b = self.w[f"{prefix}_g"], self.w.get(f"{prefix}_b")
        if self.m.arch == "decoder" and self.m.norm == "rmsnorm":
            # one fused kernel on CUDA (torch >= 2.8; fp32 accumulation) and the kernel calibration
            # times; the unfused form was seven launches, ~100 us of host time per norm on an H100
            out.copy_(F.rms_norm(x, (x.shape[-1],), g, RMS_EPS))
            return
        if self._ln_out_ok:  # writes straight into `out`: no extra copy kernel
            try:
                stats = torch.empty(0, device=x.device, dtype=torch.float32)
                torch.ops.aten.native_layer_norm.out(x, [x.shape[-1]], g, b, LN_EPS, out0=out, out1=stats,
                                                     out2=torch.empty_like(stats))
                return
            except RuntimeError:
                self._ln_out_ok = False
        out.copy_(F.layer_norm(x, (x.shape[-1],), g, b, LN_EPS))

    def zeros(self, *shape: int) -> torch.Tensor:
        """A read-only zero tensor (stand-in for KV-cache entries this run never computed)."""
        key = ("zeros", shape)
        if key not in self._consts:
            self._consts[key] = torch.zeros(shape, device=self.device, dtype=self.dtype)
        return self._consts[key]

    def rope(self, seq: int, past: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows past..past+seq of one cos/sin table, built on the device and doubled when a
        longer position is asked for: no per-shape host-to-device copy (a pageable copy blocks
        the host until the GPU has drained the stream; on an H100 RoPE's host time per op had a
        median of 0.2 ms and a mean of 1 ms, the first layer of each new length stalling)."""
        t = self._consts.get(("rope",))
        if t is None or t.shape[1] < past + seq:
            if t is not None:  # a kernel queued on another stream may still read the old table
                self._consts[("rope", t.shape[1])] = t
            n = max(past + seq, 2 * (0 if t is None else t.shape[1]), 256)
            cos, sin = rope_tables(n, 0, self.d, self.device)
            t = self._consts[("rope",)] = torch.stack([cos, sin]).to(self.dtype)
        return t[0, past:past + seq], t[1, past:past + seq]

    # ------------------------------------------------------------------ communication
    def all_reduce(self, st: RequestState, k: Kernel, name: str) -> None:
        """All-reduce the buffer, or the slice [b0, b0 + nbytes) of it a split piece covers."""
        t, d, db = st.bufs[name].view(-1), k.spec.dims, k.spec.dtype_bytes
        n = d["nbytes"] // db
        full = d.get("nbytes_full", d["nbytes"]) // db
        if full != t.numel():
            raise LigerSimError(f"{k.spec.name} reduces {full * db} bytes but buffer {name} holds {t.numel()} "
                                f"elements of {db} bytes")
        if n < full:
            b0 = d.get("b0")
            off = self.piece(st, k, None if b0 is None else b0 // db, n, full)
            t = t[off:off + n]
        self.comm.all_reduce(t, k.group or ())

    def send(self, st: RequestState, k: Kernel) -> None:
        if st.fold:
            _fold(self, st)
        self.comm.send(st.bufs[self.input_name], k.group or ())

    def recv(self, st: RequestState, k: Kernel) -> None:
        x = self.buf(st, self.input_name, st.tokens, self.m.hidden)
        self.comm.recv(x, k.group or ())
        st.fold = False


# ---------------------------------------------------------------------- prologue / epilogue
def _embedding(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
    """The embedding lookup, standing in as a copy of the request's seeded input. The source is
    the store's input, not the buffer it was copied into: repeated (as calibration repeats it),
    a copy of the buffer onto itself launched nothing, and the H100 profile timed 71-81 MB copies
    at 1.25-1.28 us."""
    src = lib.store.input(st.request_id, (st.tokens, lib.m.hidden))
    lib.buf(st, lib.input_name, st.tokens, lib.m.hidden).copy_(src)


def _final_norm(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
    """The norm of each sequence's last token, the residual add pending from the last layer
    folded in for those rows only: the simulator's kernel covers batch x hidden elements, so its
    time must not depend on the sequence length (the H100 prefill runs, which added the residual
    over every token first, took 2.1-2.8x the time calibration measured at another length)."""
    last = st.bufs[lib.input_name].view(st.batch, st.seq, -1)[:, -1]
    if st.fold:  # the state keeps `fold` set: `output` still adds the rest
        last = last + st.bufs["mlp"].view(st.batch, st.seq, -1)[:, -1]
    lib.norm(last, lib.buf(st, "final", st.batch, lib.m.hidden), "normf")


def _lm_head(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
    w = lib.w["w_lm"]
    lib.gemm(st, k, st.bufs["final"], w, lib.buf(st, "logits", st.batch, w.shape[1]))


EDGE_OPS: dict[str, Op] = {"embedding": _embedding, "final_norm": _final_norm, "lm_head": _lm_head,
                           "send": lambda lib, st, k: lib.send(st, k), "recv": lambda lib, st, k: lib.recv(st, k)}


# ---------------------------------------------------------------------- encoder (Liger)
def _proj(out_name: str, w_name: str) -> Op:
    def op(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
        w = lib.w[w_name]
        lib.gemm(st, k, st.bufs["x"], w, lib.buf(st, out_name, st.tokens, w.shape[1]))

    return op


def _bias_transpose(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
    """q, k, v [t, heads*d] + bias -> [b*heads, s, d]; KV heads repeated for GQA groups."""
    b, s, nh, nkv, d = st.batch, st.seq, lib.nh, lib.nkv, lib.d
    qh = lib.buf(st, "qh", b * nh, s, d)
    torch.add(st.bufs["q"].view(b, s, nh, d).transpose(1, 2), lib.w["bq"].view(1, nh, 1, d), out=qh.view(b, nh, s, d))
    g = nh // nkv
    for dst, src, bias in (("kh", "k", "bk"), ("vh", "v", "bv")):
        out = lib.buf(st, dst, b * nh, s, d).view(b, nkv, g, s, d)
        inp = st.bufs[src].view(b, s, nkv, 1, d).permute(0, 2, 3, 1, 4).expand(b, nkv, g, s, d)
        torch.add(inp, lib.w[bias].view(1, nkv, 1, 1, d), out=out)


def _qk_bmm(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
    scores = lib.buf(st, "scores", st.batch * lib.nh, st.seq, st.seq)
    torch.baddbmm(scores, st.bufs["qh"], st.bufs["kh"].transpose(1, 2), beta=0.0, alpha=lib.d ** -0.5, out=scores)


def _softmax(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
    torch.softmax(st.bufs["scores"], -1, out=lib.buf(st, "probs", *st.bufs["scores"].shape))


def _sv_bmm(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
    torch.bmm(st.bufs["probs"], st.bufs["vh"], out=lib.buf(st, "ctx", st.batch * lib.nh, st.seq, lib.d))


def _transpose(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
    b, s, nh, d = st.batch, st.seq, lib.nh, lib.d
    out = lib.buf(st, "ctx_t", st.tokens, nh * d)
    out.view(b, s, nh, d).copy_(st.bufs["ctx"].view(b, nh, s, d).transpose(1, 2))


def _layernorm_1(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
    """Post-LN with the residual and the row-parallel GEMM's bias (added once, after the all-reduce)."""
    s = torch.add(st.bufs["x"], st.bufs["attn"]).add_(lib.w["bo"])
    lib.norm(s, lib.buf(st, "y1", st.tokens, lib.m.hidden), "ln1")


def _bias_act(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
    up, b_up = st.bufs["up"], lib.w["b_up"]
    f = lib.w["w_down"].shape[0]
    act = lib.buf(st, "act", st.tokens, f)
    torch.add(up[:, :f], b_up[:f], out=act)
    torch.ops.aten.gelu_(act)
    if lib.m.gated:
        act.mul_(up[:, f:] + b_up[f:])


def _layernorm_2(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
    s = torch.add(st.bufs["y1"], st.bufs["mlp"]).add_(lib.w["b_down"])
    lib.norm(s, lib.buf(st, "x", st.tokens, lib.m.hidden), "ln2")


def _mlp_gemm(in_name: str, w_name: str, out_name: str, fold: bool = False) -> Op:
    def op(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
        w = lib.w[w_name]
        lib.gemm(st, k, st.bufs[in_name], w, lib.buf(st, out_name, st.tokens, w.shape[1]))
        if fold:
            st.fold = True

    return op


def _all_reduce(name: str) -> Op:
    return lambda lib, st, k: lib.all_reduce(st, k, name)


ENCODER_OPS: dict[str, Op] = {
    "q_proj": _proj("q", "wq"), "k_proj": _proj("k", "wk"), "v_proj": _proj("v", "wv"),
    "bias_transpose": _bias_transpose, "qk_bmm": _qk_bmm, "softmax": _softmax, "sv_bmm": _sv_bmm,
    "transpose": _transpose, "out_proj": _mlp_gemm("ctx_t", "wo", "attn"),
    "attn_all_reduce": _all_reduce("attn"), "layernorm_1": _layernorm_1,
    "mlp_up": _mlp_gemm("y1", "w_up", "up"), "bias_act": _bias_act,
    "mlp_down": _mlp_gemm("act", "w_down", "mlp"), "mlp_all_reduce": _all_reduce("mlp"),
    "layernorm_2": _layernorm_2, **EDGE_OPS,
}


# ---------------------------------------------------------------------- decoder (LLaMA/OPT)
# Ops that first add the previous layer's MLP output into the residual when `st.fold` says it is
# pending: in a run, every layer's input norm but the first one's, and the final norm.
FOLDING = frozenset({"input_norm", "final_norm"})


def _fold(lib: KernelLibrary, st: RequestState) -> None:
    """resid += mlp (the previous layer's residual add, fused into the next norm as vLLM does)."""
    x = st.bufs["resid"]
    torch.add(x, st.bufs["mlp"], out=lib.buf(st, "resid", *x.shape))
    st.fold = False


def _input_norm(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
    if st.fold:
        _fold(lib, st)
    lib.norm(st.bufs["resid"], lib.buf(st, "n1", st.tokens, lib.m.hidden), "norm1")


def _qkv(lib: KernelLibrary, st: RequestState) -> torch.Tensor:
    return st.bufs["qkv"].view(st.batch, st.seq, lib.nh + 2 * lib.nkv, lib.d)


def _rope(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
    past = st.kv[k.layer][0].shape[2] if k.layer in st.kv else 0
    cos, sin = lib.rope(st.seq, past)
    qk = _qkv(lib, st)[:, :, :lib.nh + lib.nkv]
    half = lib.d // 2
    rot = torch.cat([-qk[..., half:], qk[..., :half]], dim=-1)
    qk.copy_(qk * cos[:, None, :] + rot * sin[:, None, :])


def _attention(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
    """Causal fused attention over `skv` = past + new tokens (past from the cache, or zeros)."""
    b, s, nh, nkv, d = st.batch, st.seq, lib.nh, lib.nkv, lib.d
    qkv = _qkv(lib, st)
    q = qkv[:, :, :nh].transpose(1, 2)
    kk = qkv[:, :, nh:nh + nkv].transpose(1, 2)
    vv = qkv[:, :, nh + nkv:].transpose(1, 2)
    past = k.spec.dims["skv"] - s
    mask = None
    if past > 0:
        cached = st.kv.get(k.layer)
        pk, pv = cached if cached is not None and cached[0].shape[2] >= past else (lib.zeros(b, nkv, past, d),) * 2
        kk, vv = torch.cat([pk[:, :, :past], kk], 2), torch.cat([pv[:, :, :past], vv], 2)
        if s > 1:  # bottom-right causal: new token i sees the past and new tokens 0..i
            mask = torch.arange(past + s, device=q.device)[None] <= past + torch.arange(s, device=q.device)[:, None]
    o = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, is_causal=past == 0,
                                       enable_gqa=nkv != nh)
    out = lib.buf(st, "attn_o", st.tokens, nh * d)
    out.view(b, s, nh, d).copy_(o.transpose(1, 2))


def _post_attn_norm(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
    x = st.bufs["resid"]
    h1 = lib.buf(st, "resid", *x.shape)
    torch.add(x, st.bufs["attn"], out=h1)
    lib.norm(h1, lib.buf(st, "n2", st.tokens, lib.m.hidden), "norm2")


def _silu_mul(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
    up, f = st.bufs["up"], lib.w["w_down"].shape[0]
    torch.mul(F.silu(up[:, :f]), up[:, f:], out=lib.buf(st, "act", st.tokens, f))


def _relu(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
    up = st.bufs["up"]
    torch.clamp(up, min=0, out=lib.buf(st, "act", *up.shape))


DECODER_OPS: dict[str, Op] = {
    "input_norm": _input_norm, "qkv_proj": _mlp_gemm("n1", "w_qkv", "qkv"), "rope": _rope,
    "attention": _attention, "o_proj": _mlp_gemm("attn_o", "wo", "attn"),
    "attn_all_reduce": _all_reduce("attn"), "post_attn_norm": _post_attn_norm,
    "gate_up_proj": _mlp_gemm("n2", "w_up", "up"), "fc1": _mlp_gemm("n2", "w_up", "up"),
    "silu_mul": _silu_mul, "relu": _relu,
    "down_proj": _mlp_gemm("act", "w_down", "mlp", fold=True), "fc2": _mlp_gemm("act", "w_down", "mlp", fold=True),
    "mlp_all_reduce": _all_reduce("mlp"), **EDGE_OPS,
}


# ---------------------------------------------------------------------- generative iterations
# An iteration's state holds all its tokens as rows: prompt chunks first, then one row per
# decoding sequence (`hw.generative.IterData` says which request and position each row is).
def _gen_embedding(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
    torch.index_select(lib.embed, 0, st.gen.tokens, out=lib.buf(st, "resid", st.tokens, lib.m.hidden))


def _gen_rope(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
    g = st.gen
    qk = st.bufs["qkv"].view(st.tokens, lib.nh + 2 * lib.nkv, lib.d)[:, :lib.nh + lib.nkv]
    half = lib.d // 2
    rot = torch.cat([-qk[..., half:], qk[..., :half]], dim=-1)
    qk.copy_(qk * g.cos[:, None, :] + rot * g.sin[:, None, :])


def _check_attention(st: RequestState, k: Kernel, b: int, what: str, n: int) -> None:
    d = k.spec.dims
    if d["b"] != b or d.get("sq", n) != n:
        raise LigerSimError(f"{k.spec.name} of iteration {k.request_id} batches {d['b']} sequences but the iteration "
                            f"has {b} {what}; is the IR's meta.iterations from another run?")


def _write_kv(lib: KernelLibrary, st: RequestState, layer: int, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """Store the new tokens' K and V (rows of the fused qkv) in the layer's pools."""
    nh, nkv, d = lib.nh, lib.nkv, lib.d
    qkv = st.bufs["qkv"].view(st.tokens, nh + 2 * nkv, d)
    kp, vp = lib.kv.layer(layer)
    slots = st.gen.slots[rows]
    kp.view(-1, nkv, d).index_copy_(0, slots, qkv[rows, nh:nh + nkv])
    vp.view(-1, nkv, d).index_copy_(0, slots, qkv[rows, nh + nkv:])
    return kp, vp


def _prefill_attention(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
    """Causal attention of each prompt chunk over its cached past and itself."""
    g, nh, nkv, d = st.gen, lib.nh, lib.nkv, lib.d
    n = g.batch.prefill_tokens
    _check_attention(st, k, len(g.prefill), "prompt chunks", n)
    kp, vp = _write_kv(lib, st, k.layer, slice(0, n))
    qkv = st.bufs["qkv"].view(st.tokens, nh + 2 * nkv, d)
    out = lib.buf(st, "attn_o", st.tokens, nh * d)
    gqa = nkv != nh
    for row, c, past, blocks in g.prefill:
        q = qkv[row:row + c, :nh].transpose(0, 1)[None]
        if blocks is None:  # a whole prompt, or its first chunk: its own K/V, causal
            kk = qkv[row:row + c, nh:nh + nkv].transpose(0, 1)[None]
            vv = qkv[row:row + c, nh + nkv:].transpose(0, 1)[None]
            o = F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=gqa)
        else:  # a later chunk: past + chunk from the cache, bottom-right causal
            L = past + c
            kk = kp.index_select(0, blocks).view(-1, nkv, d)[:L].transpose(0, 1)[None]
            vv = vp.index_select(0, blocks).view(-1, nkv, d)[:L].transpose(0, 1)[None]
            ar = torch.arange(L, device=q.device)
            mask = ar[None] <= past + ar[:c, None]
            o = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, enable_gqa=gqa)
        out[row:row + c].view(c, nh, d).copy_(o[0].transpose(0, 1))


def _decode_attention(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
    """One new token per decoding sequence over its whole cached context: the sequences'
    blocks gathered at once, one masked SDPA over the batch."""
    g, nh, nkv, d = st.gen, lib.nh, lib.nkv, lib.d
    n0, b = g.batch.prefill_tokens, len(g.batch.decodes)
    _check_attention(st, k, b, "decoding sequences", b)
    kp, vp = _write_kv(lib, st, k.layer, slice(n0, st.tokens))
    qkv = st.bufs["qkv"].view(st.tokens, nh + 2 * nkv, d)
    L = g.dec_mask.shape[-1]
    idx = g.dec_blocks.view(-1)
    kk = kp.index_select(0, idx).view(b, L, nkv, d).transpose(1, 2)
    vv = vp.index_select(0, idx).view(b, L, nkv, d).transpose(1, 2)
    o = F.scaled_dot_product_attention(qkv[n0:, :nh].unsqueeze(2), kk, vv, attn_mask=g.dec_mask,
                                       enable_gqa=nkv != nh)
    lib.buf(st, "attn_o", st.tokens, nh * d)[n0:].view(b, nh, d).copy_(o[:, :, 0])


def _gen_final_norm(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
    """Final norm of each emitting sequence's last token, the pending residual add folded in for
    those rows only (as `_final_norm`)."""
    x = st.bufs["resid"].index_select(0, st.gen.emit_rows)
    if st.fold:
        x += st.bufs["mlp"].index_select(0, st.gen.emit_rows)
    lib.norm(x, lib.buf(st, "final", x.shape[0], lib.m.hidden), "normf")


def _gen_lm_head(lib: KernelLibrary, st: RequestState, k: Kernel) -> None:
    w, x = lib.w["w_lm"], st.bufs["final"]
    out = lib.buf(st, "logits", x.shape[0], w.shape[1])
    lib.gemm(st, k, x, w, out)
    if lib.collect and (k.layer, k.spec.name) not in st.cursor:
        lib.logits.append((st.gen.emit_keys, out.detach().clone()))


GEN_OPS: dict[str, Op] = {**DECODER_OPS, "embedding": _gen_embedding, "rope": _gen_rope,
                          "prefill_attention": _prefill_attention, "decode_attention": _decode_attention,
                          "final_norm": _gen_final_norm, "lm_head": _gen_lm_head}


# ---------------------------------------------------------------------- any kernel, by kind
def _row_width(elems: int) -> int:
    """A row length for pointwise kernels given only an element count (power of two ≤ 4096)."""
    w = 4096
    while w > 1 and elems % w:
        w //= 2
    return w


class GenericKernels:
    """Runs a kernel of any kind at its shape on scratch tensors allocated once per shape.

    For kernels outside the model's layer (calibration, future policies): the cost is real,
    the data is not.
    """

    def __init__(self, device: str, dtype: torch.dtype, comm: Collectives):
        self.device, self.dtype, self.comm = device, dtype, comm
        self._scratch: dict[tuple, torch.Tensor] = {}

    def t(self, tag: str, *shape: int) -> torch.Tensor:
        key = (tag, shape)
        if key not in self._scratch:
            self._scratch[key] = torch.rand(shape, device=self.device, dtype=self.dtype) * 0.1
        return self._scratch[key]

    def prepare(self, k: Kernel) -> None:
        """Nothing to set up: scratch tensors are made on first use (the runtime's hook)."""

    def run(self, k: Kernel) -> None:
        d, kind = k.spec.dims, k.spec.kind
        if kind == "gemm":
            torch.mm(self.t("a", d["m"], d["k"]), self.t("b", d["k"], d["n"]), out=self.t("c", d["m"], d["n"]))
        elif kind == "bgemm":
            b, m, n, kk = d["b"], d["m"], d["n"], d["k"]
            torch.bmm(self.t("a", b, m, kk), self.t("b", b, kk, n), out=self.t("c", b, m, n))
        elif kind == "attention":
            b, h, sq, skv, hd, kvh = d["b"], d["h"], d["sq"], d["skv"], d["d"], d.get("kv_h", d["h"])
            if k.spec.name == "prefill_attention":  # varlen: sq and skv sum over the b prompts
                b = 1
            F.scaled_dot_product_attention(self.t("q", b, h, sq, hd), self.t("k", b, kvh, skv, hd),
                                           self.t("v", b, kvh, skv, hd), is_causal=sq == skv, enable_gqa=kvh != h)
        elif kind == "decode_attention":  # one query per sequence over ctx / b cached tokens each
            b, h, hd, kvh = d["b"], d["h"], d["d"], d.get("kv_h", d["h"])
            ctx = d.get("ctx_max") or max(1, d["ctx"] // max(1, b))  # padded to the longest, as the hw op
            F.scaled_dot_product_attention(self.t("q", b, h, 1, hd), self.t("k", b, kvh, ctx, hd),
                                           self.t("v", b, kvh, ctx, hd), enable_gqa=kvh != h)
        elif k.spec.is_collective:
            buf = self.t("comm", max(1, d["nbytes"] // k.spec.dtype_bytes))
            getattr(self.comm, kind)(buf, k.group or ())
        else:
            w = _row_width(d["elems"])
            x, y = self.t("x", d["elems"] // w, w), self.t("y", d["elems"] // w, w)
            if kind == "softmax":
                torch.softmax(x, -1, out=y)
            elif kind in ("layernorm", "rmsnorm"):
                y.copy_(F.layer_norm(x, (w,)) if kind == "layernorm" else F.rms_norm(x, (w,)))
            elif kind == "copy":
                y.copy_(x)
            else:  # elementwise, rope: one read, one write
                torch.mul(x, 1.0, out=y)
