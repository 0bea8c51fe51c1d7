"""Generative serving on the hw backend: what each iteration batches, the tokens it feeds,
and the paged KV cache its attention kernels read and write.

A generative run's kernels carry the *iteration* index as `request_id` (sim.policies.generative).
`Composition` says which requests an iteration runs and how many tokens each, with their
cached (past) lengths:

- live (`ligersim hw run`): read off the run's own `sim.serving.BatchScheduler`, which every
  rank drives identically (the policies plan on rank 0's clock), so the pasts are exact;
- replay (`ligersim hw replay`): rebuilt from the IR header's `iterations` rows
  ([iteration, group, request, new tokens, emits]) and job list. Rows come prefills first,
  then decodes (as `sim.simulate.iteration_table` writes them); the IR's own attention
  kernels give how many are prefills (`prefill_attention` b) and pin the pasts down
  (its skv − sq is the sum of the prefills' pasts, `decode_attention` ctx the decodes'
  contexts), which resolves the one case the rows leave open: a sequence preempted in
  mid-prompt and re-admitted, whose recompute restarts at 0.

Tokens: request r's sequence (prompt, then outputs) is a fixed pseudo-random token list
(`token_ids`, seeded by the scenario's seed and r). Decoding is teacher-forced: the token
fed at position p is that list's token p, not the arg-max of the logits at p − 1, because
the logits are sharded over the vocabulary across tensor-parallel ranks and the schedule
has no collective to gather them (a `sample` kernel in the epilogue would add one).
Everything else — embedding, the KV cache, chunked prefill, continuous batching — is what a
real server computes, so logits can be compared with an unbatched reference.

KV cache: paged, as vLLM. Each layer a rank holds has a K and a V pool of
[blocks, kv_block_tokens, local KV heads, head_dim]; a request owns a block table, grown as
its tokens are written (past + new) and freed after the iteration that emits its last token
(on GPU its blocks are reused only after a fence recorded then). Pools hold the simulator's
KV capacity (`kv_capacity_tokens`, what the scheduler admits against), capped by what the
workload can use at once; they grow (after a device sync) only if the hw run holds more than
that, which happens only with `on_kv_full: preempt` (a victim's blocks are freed here when
its recompute starts, later than the scheduler frees them). Attention reads through the
tables: a decode gathers its sequences' blocks in one `index_select` and runs one masked
SDPA over the batch; a prompt chunk with a cached past gathers its blocks and runs SDPA with
a bottom-right causal mask; a fresh prompt runs causal SDPA on its own K/V.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from sim.errors import LigerSimError
from sim.jobs import Job

STANDIN_VOCAB = 1024  # token ids for models without a vocabulary (their input is a table lookup too)


@dataclass(frozen=True, slots=True)
class Seg:
    """One request's part of an iteration: `new` tokens at positions past .. past+new-1."""

    rid: int
    new: int
    past: int
    emits: bool
    decode: bool


@dataclass
class IterBatch:
    """One iteration's composition, in token order: its prefills, then its decodes."""

    index: int
    prefills: list[Seg]
    decodes: list[Seg]
    finishing: tuple[int, ...] = ()  # requests whose last token this iteration emits

    @property
    def segs(self) -> list[Seg]:
        return self.prefills + self.decodes

    @property
    def tokens(self) -> int:
        return sum(s.new for s in self.prefills) + len(self.decodes)

    @property
    def prefill_tokens(self) -> int:
        return sum(s.new for s in self.prefills)

    @property
    def emitting(self) -> list[Seg]:
        return [s for s in self.segs if s.emits]


def _raw_from_iteration(it) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]], set[int]]:
    return list(it.prefills), list(it.decodes), set(it.emits)


class Composition:
    """Iteration index -> `IterBatch`, for a live run (`live`) or a recorded IR (`replay`)."""

    def __init__(self, jobs: list[Job], block: int, capacity_tokens: int, scheduler=None):
        self.jobs = {j.request_id: j for j in jobs}
        self.prompt = {j.request_id: j.prompt for j in jobs}
        self.output = {j.request_id: j.output_tokens for j in jobs}
        self.block = block
        # what the workload can hold at once, at most: every request at prompt + output
        need = sum(-(-(self.prompt[r] + self.output[r]) // block) for r in self.prompt) * block
        self.capacity_tokens = max(block, min(int(capacity_tokens), need))
        self.max_len = max((self.prompt[r] + self.output[r] for r in self.prompt), default=1)
        self.scheduler = scheduler
        self._raw: list[tuple[list, list, set]] = []
        self._batches: list[IterBatch] = []
        self._emitted: dict[int, int] = {}

    # ------------------------------------------------------------------ sources
    @classmethod
    def live(cls, jobs: list[Job], scheduler) -> Composition:
        return cls(jobs, scheduler.block, scheduler.total_blocks * scheduler.block, scheduler)

    @classmethod
    def replay(cls, jobs: list[Job] | None, meta: dict, ops: Iterable, block: int, file: str = "<IR>") -> Composition:
        if not jobs:
            raise LigerSimError("a generative IR needs its job list (meta.job_list) to be replayed on the hw "
                                "backend", file=file, field="meta.job_list")
        if "iterations" not in meta:
            raise LigerSimError("a generative IR needs meta.iterations (which requests each iteration ran) to be "
                                "replayed on the hw backend; record it with `ligersim run`", file=file,
                                field="meta.iterations")
        capacity = meta.get("kv_capacity_tokens") or sum(j.prompt + j.output_tokens
                                                         for j in jobs)
        comp = cls(jobs, block, int(capacity))
        comp._raw = reconstruct(meta["iterations"], comp.prompt, attention_dims(ops), file)
        return comp

    # ------------------------------------------------------------------ lookup
    def get(self, index: int) -> IterBatch:
        while len(self._batches) <= index:
            i = len(self._batches)
            if self.scheduler is not None:
                its = self.scheduler.iterations
                if i >= len(its):
                    raise LigerSimError(f"kernel of iteration {index} launched before the scheduler planned it")
                raw = _raw_from_iteration(its[i])
            elif i < len(self._raw):
                raw = self._raw[i]
            else:
                raise LigerSimError(f"the IR launches kernels of iteration {index} but its meta.iterations lists "
                                    f"{len(self._raw)} iterations")
            self._batches.append(self._convert(i, *raw))
        return self._batches[index]

    def _convert(self, index: int, prefills, decodes, emits: set[int]) -> IterBatch:
        pre = [Seg(r, c, p, r in emits, False) for r, c, p in prefills]
        dec = [Seg(r, 1, ctx - 1, r in emits, True) for r, ctx in decodes]
        finishing = []
        for s in pre + dec:
            if s.emits:
                n = self._emitted[s.rid] = self._emitted.get(s.rid, 0) + 1
                if n >= self.output.get(s.rid, 0):
                    finishing.append(s.rid)
        return IterBatch(index, pre, dec, tuple(finishing))


def attention_dims(ops: Iterable) -> dict[int, dict[str, dict[str, int]]]:
    """iteration -> {"prefill": dims of its prefill_attention, "decode": dims of its decode_attention},
    from the first such kernel of each iteration in the IR."""
    out: dict[int, dict[str, dict[str, int]]] = {}
    for op in ops:
        k = getattr(op, "kernel", None)
        if k is None or k.request_id < 0:
            continue
        kind = "decode" if k.spec.kind == "decode_attention" else "prefill" if k.spec.kind == "attention" else None
        if kind is not None:
            out.setdefault(k.request_id, {}).setdefault(kind, k.spec.dims)
    return out


def reconstruct(rows: list[list], prompt: dict[int, int], attn: dict[int, dict[str, dict[str, int]]],
                file: str = "<IR>") -> list[tuple[list, list, set]]:
    """(prefills [(rid, chunk, past)], decodes [(rid, context)], emits) of every iteration, in
    index order, from the IR's iteration rows, replaying the scheduler's per-request state:
    prompt chunks continue where the last one stopped; a request seen again after it finished
    its prefill (or whose chunk no longer fits) was preempted and is recomputed from 0 over
    prompt + generated tokens; a decode's context is prompt + generated."""
    by_it: dict[int, list[list]] = {}
    for row in rows:
        by_it.setdefault(int(row[0]), []).append(row)
    state: dict[int, list[int]] = {}  # rid -> [prefilled, target, generated]
    out: list[tuple[list, list, set]] = []
    for i in range(max(by_it, default=-1) + 1):
        rws = by_it.get(i, [])
        dims = attn.get(i, {})
        npre = dims["prefill"]["b"] if "prefill" in dims else 0
        ndec = dims["decode"]["b"] if "decode" in dims else 0
        if npre + ndec != len(rws):
            raise LigerSimError(f"iteration {i}: meta.iterations lists {len(rws)} requests but its attention "
                                f"kernels batch {npre} prefills and {ndec} decodes", file=file,
                                field="meta.iterations")
        prefills: list[list[int]] = []
        for _, _, rid, c, e in rws[:npre]:
            rid, c = int(rid), int(c)
            if rid not in prompt:
                raise LigerSimError(f"iteration {i} runs request {rid}, which is not in meta.job_list", file=file,
                                    field="meta.iterations")
            s = state.get(rid)
            if s is None:
                s = state[rid] = [0, prompt[rid], 0]
            elif s[0] == s[1] or s[0] + c > s[1] or (e and s[0] + c != s[1]):
                s[0], s[1] = 0, prompt[rid] + s[2]  # preempted: recomputed from scratch
            prefills.append([rid, c, s[0]])
            s[0] += c
        if npre:
            d = dims["prefill"]
            extra = sum(p + c for _, c, p in prefills) - d["skv"]
            if sum(c for _, c, _ in prefills) != d["sq"] or extra < 0:
                raise LigerSimError(f"iteration {i}: its prefill_attention kernel (sq={d['sq']}, skv={d['skv']}) "
                                    "does not match meta.iterations", file=file, field="meta.iterations")
            if extra:  # a sequence preempted in mid-prompt restarted at 0: its past is what it had prefilled
                cand = [x for x in prefills if x[2] == extra]
                if len(cand) != 1:
                    raise LigerSimError(f"iteration {i}: cannot tell which prompt chunk restarted after a "
                                        "preemption from meta.iterations", file=file, field="meta.iterations")
                x = cand[0]
                s = state[x[0]]
                s[0], s[1], x[2] = x[1], prompt[x[0]] + s[2], 0
        decodes = []
        for _, _, rid, _c, _e in rws[npre:]:
            s = state.get(int(rid))
            if s is None or s[0] != s[1]:
                raise LigerSimError(f"iteration {i}: request {rid} decodes before its prompt is prefilled",
                                    file=file, field="meta.iterations")
            decodes.append((int(rid), prompt[int(rid)] + s[2]))
        if ndec and sum(ctx for _, ctx in decodes) != dims["decode"]["ctx"]:
            raise LigerSimError(f"iteration {i}: its decode_attention kernel (ctx={dims['decode']['ctx']}) does not "
                                "match meta.iterations", file=file, field="meta.iterations")
        emits = {int(r[2]) for r in rws if int(r[4])}
        for rid in emits:
            state[rid][2] += 1
        out.append(([tuple(x) for x in prefills], decodes, emits))
    return out


def token_ids(seed: int, rid: int, length: int, vocab: int) -> torch.Tensor:
    """Request `rid`'s token sequence (prompt, then outputs): int64 [length], on the CPU."""
    gen = torch.Generator()
    gen.manual_seed(seed * 1_000_033 + 7 * rid + 11)
    return torch.randint(0, vocab, (length,), generator=gen, dtype=torch.int64)


def embedding_table(vocab: int, hidden: int, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    """The token embedding [vocab, hidden] (float32; replicated on every rank, as the schedule's
    embedding kernel has no collective)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed * 1_000_003 + 424242)
    return torch.randn((vocab, hidden), generator=gen, device=device, dtype=torch.float32)


# ---------------------------------------------------------------------- the paged KV cache
class PagedKV:
    """K and V pools per layer ([blocks, block, kv_heads, head_dim]) and a block table per request."""

    def __init__(self, block: int, capacity_tokens: int, kv_heads: int, head_dim: int, device: str,
                 dtype: torch.dtype):
        self.block, self.kv_heads, self.head_dim = block, kv_heads, head_dim
        self.device, self.dtype, self.cuda = device, dtype, device != "cpu"
        self.blocks = max(1, -(-capacity_tokens // block))
        self.free: list[int] = list(range(self.blocks - 1, -1, -1))
        self.fenced: deque[tuple[list[int], object]] = deque()  # freed on GPU, reusable after the fence
        self.tables: dict[int, list[int]] = {}
        self.pools: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.grown = 0

    @property
    def bytes_per_layer(self) -> int:
        return 2 * self.blocks * self.block * self.kv_heads * self.head_dim * torch.finfo(self.dtype).bits // 8

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        pool = self.pools.get(layer)
        if pool is None:
            shape = (self.blocks, self.block, self.kv_heads, self.head_dim)
            # zeros: a decode's padded gather reads unwritten slots (masked out, but NaN * 0 is NaN)
            pool = self.pools[layer] = (torch.zeros(shape, device=self.device, dtype=self.dtype),
                                        torch.zeros(shape, device=self.device, dtype=self.dtype))
        return pool

    def reserve(self, layers: Iterable[int]) -> None:
        """Allocate the pools of `layers` now (before the clock starts)."""
        for layer in layers:
            self.layer(layer)

    def used_blocks(self) -> int:
        return sum(len(t) for t in self.tables.values())

    def ensure(self, rid: int, tokens: int) -> list[int]:
        """Request `rid`'s block table, grown to hold `tokens` tokens."""
        table = self.tables.setdefault(rid, [])
        need = -(-tokens // self.block) - len(table)
        if need > 0:
            table.extend(self._take(need))
        return table

    def drop(self, rid: int, fence: object | None) -> None:
        table = self.tables.pop(rid, None)
        if not table:
            return
        if fence is None:
            self.free.extend(table)
        else:
            self.fenced.append((table, fence))

    def _take(self, n: int) -> list[int]:
        while len(self.free) < n and self.fenced:
            blocks, fence = self.fenced.popleft()
            if not fence.query():  # type: ignore[attr-defined]
                torch.cuda.current_stream().wait_event(fence)  # type: ignore[arg-type]
            self.free.extend(blocks)
        if len(self.free) < n:
            self._grow(n - len(self.free))
        out = self.free[-n:]
        del self.free[-n:]
        return out

    def _grow(self, at_least: int) -> None:
        """More blocks: every pool is copied into a larger one (after a device sync, so no
        kernel still reads the old pools)."""
        new = max(self.blocks, at_least)
        if self.cuda:
            torch.cuda.synchronize()
        for layer, (k, v) in list(self.pools.items()):
            pad = (new, *k.shape[1:])
            self.pools[layer] = (torch.cat([k, torch.zeros(pad, device=k.device, dtype=k.dtype)]),
                                 torch.cat([v, torch.zeros(pad, device=v.device, dtype=v.dtype)]))
        self.free.extend(range(self.blocks + new - 1, self.blocks - 1, -1))
        self.blocks += new
        self.grown += 1


# ---------------------------------------------------------------------- one iteration on one rank
@dataclass
class IterData:
    """An iteration's index tensors on the device, built once per rank and shared by its layers."""

    batch: IterBatch
    tokens: torch.Tensor  # [T] token ids
    slots: torch.Tensor  # [T] KV-pool slot (block * block_size + offset) of each new token
    cos: torch.Tensor | None  # [T, head_dim] rotary tables at each token's position
    sin: torch.Tensor | None
    prefill: list[tuple[int, int, int, torch.Tensor | None]]  # (row, new, past, blocks if past > 0)
    dec_blocks: torch.Tensor | None  # [b, max blocks] block tables of the decodes (padded)
    dec_mask: torch.Tensor | None  # [b, 1, 1, max blocks * block] which positions are context
    emit_rows: torch.Tensor  # [E] row of each emitting request's last token
    emit_keys: list[tuple[int, int]]  # (request, position) of each emitted token's logits
    keep: list[torch.Tensor] = field(default_factory=list)  # everything to hold until the fence


def build_iter_data(batch: IterBatch, kv: PagedKV, tokens_of, rope: tuple[torch.Tensor, torch.Tensor] | None,
                    device: str) -> IterData:
    """Allocate the iteration's KV blocks and move its indices to the device in one copy
    (host work in numpy: a few microseconds per request, not per token)."""
    B, segs = kv.block, batch.segs
    n, npre = len(segs), len(batch.prefills)
    new = np.fromiter((s.new for s in segs), np.int64, n)
    past = np.fromiter((s.past for s in segs), np.int64, n)
    tables = [kv.ensure(s.rid, s.past + s.new) for s in segs]
    tbl = np.zeros((n, max(len(t) for t in tables)), np.int64)  # block tables, padded with block 0
    for i, t in enumerate(tables):
        tbl[i, :len(t)] = t
    ends = np.cumsum(new)
    starts, T = ends - new, int(ends[-1])
    seg_of = np.repeat(np.arange(n), new)
    pos = past[seg_of] + np.arange(T) - starts[seg_of]
    slots = tbl[seg_of, pos // B] * B + pos % B
    tok = np.concatenate([tokens_of(s.rid)[s.past:s.past + s.new] for s in segs])
    emits = np.fromiter((s.emits for s in segs), bool, n)
    pieces = [tok, pos, slots, ends[emits] - 1]
    with_past = [i for i in range(npre) if segs[i].past]
    pieces += [tbl[i, :-(-(past[i] + new[i]) // B)] for i in with_past]
    ndec, nb = n - npre, 0
    if ndec:
        ctx = past[npre:] + 1
        nb = int(-(-ctx.max() // B))
        pieces += [tbl[npre:, :nb].ravel(), ctx]
    flat = torch.from_numpy(np.concatenate(pieces))
    if device != "cpu":
        flat = flat.pin_memory().to(device, non_blocking=True)
    parts = list(torch.split(flat, [len(x) for x in pieces]))
    tokens_d, pos_d, slots_d, emit_d = parts[:4]
    past_blocks = dict(zip(with_past, parts[4:4 + len(with_past)], strict=True))
    prefill = [(int(starts[i]), int(new[i]), int(past[i]), past_blocks.get(i)) for i in range(npre)]
    dec_blocks = dec_mask = None
    if ndec:
        dec_blocks = parts[-2].view(ndec, nb)
        dec_mask = (torch.arange(nb * B, device=flat.device)[None] < parts[-1][:, None]).view(ndec, 1, 1, nb * B)
    cos = sin = None
    if rope is not None:
        cos, sin = rope[0].index_select(0, pos_d), rope[1].index_select(0, pos_d)
    keys = [(s.rid, s.past + s.new - 1) for s in segs if s.emits]
    return IterData(batch, tokens_d, slots_d, cos, sin, prefill, dec_blocks, dec_mask, emit_d, keys, keep=[flat])


def merge_logits(shards: list[tuple[int, dict[tuple[int, int], torch.Tensor]]], tp: int, vocab: int
                 ) -> dict[tuple[int, int], torch.Tensor] | None:
    """Full-vocabulary logits per (request, position) from the tensor-parallel shards
    [(shard index, {key: logits shard})]; None if some shard is missing (emulated ranks)."""
    by_shard: dict[int, dict] = {}
    for idx, d in shards:
        if d:
            by_shard.setdefault(idx, {}).update(d)
    if sorted(by_shard) != list(range(tp)):
        return None
    keys = set(by_shard[0])
    return {key: torch.cat([by_shard[i][key] for i in range(tp)])[:vocab] for key in sorted(keys)}
