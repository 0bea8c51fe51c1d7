"""Mixture-of-experts layers: the rows each GPU's experts compute in an iteration.

A router sends each token to its top `k` of `E` experts. Two ways to shard the experts over a
TP group of `tp` ranks, as vLLM offers them:

- tensor-parallel experts (vLLM's default): every rank holds a 1/tp slice of every expert's FFN
  and computes it for every routed token, t × k rows, so the ranks are balanced;
- expert parallelism (vLLM's `enable_expert_parallel`, over the TP group): rank r holds E/tp
  whole experts and computes the tokens routed to them. The all-reduce after the experts waits
  for the busiest rank, so every rank is charged its rows: the expected maximum over the ranks.

Routing is taken as uniform: each token's k experts are a uniformly random k-subset of the E,
which is what the load-balancing losses of Switch Transformer (Fedus et al. 2022) and Mixtral
train the router towards. Real routers are skewed beyond that, so the imbalance here is a floor.
Expected values are computed once per (tokens, k, E, ranks): exactly by sampling the routing
(fixed seed, `SAMPLES` draws) while a rank's mean load is small, and from the normal limit of
the ranks' loads beyond (`NORMAL_FROM` rows per rank), where sampling thousands of tokens would
cost more than the simulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np

SAMPLES = 512
NORMAL_FROM = 48.0  # mean rows per rank from which the normal limit is used
CHUNK_DRAWS = 2_000_000  # random numbers drawn at once while sampling
_SEED = 20240101  # fixed: the same routing expectation in every run


@dataclass(frozen=True, slots=True)
class ExpertLoad:
    """What the busiest rank of an iteration's MoE layer computes, in expectation: `rows`
    token-expert pairs (the most any rank gets) over `active` of its experts (the most experts
    with at least one token any rank has: what a memory-bound decode step reads)."""

    rows: float
    active: float


@cache
def _expected_max_normal(n: int) -> float:
    """E[max] of n independent standard normals: the integral of x n φ(x) Φ(x)^(n-1) on a fine
    grid over [-9, 9] (n = 2 gives 1/sqrt(pi) = 0.5642 to 1e-9)."""
    step = 18.0 / 7200
    xs = np.linspace(-9.0, 9.0, 7201)
    cdf = np.array([0.5 * (1.0 + math.erf(x / math.sqrt(2.0))) for x in xs])
    pdf = np.exp(-0.5 * xs * xs) / math.sqrt(2.0 * math.pi)
    return float((xs * n * pdf * cdf ** (n - 1)).sum() * step)


def _active(tokens: int, experts: int, top_k: int, local: int) -> float:
    """Expected experts of `local` that get at least one of `tokens` tokens: an expert misses a
    token's k-subset with probability 1 - k/E."""
    return local * (1.0 - (1.0 - top_k / experts) ** tokens)


def _most_active(tokens: int, experts: int, top_k: int, local: int, ranks: int) -> float:
    """Expected most active experts on any of `ranks` ranks of `local` experts each: a rank's
    count is Binomial(local, p), p = 1 - (1 - k/E)^t, taken independent across ranks (within 0.1
    expert of sampling): E[max] = sum over a < local of 1 - F(a)^ranks."""
    p = 1.0 - (1.0 - top_k / experts) ** tokens
    cdf, out = 0.0, 0.0
    for a in range(local):
        cdf += math.comb(local, a) * p**a * (1.0 - p) ** (local - a)
        out += 1.0 - min(1.0, cdf) ** ranks
    return out


@lru_cache(maxsize=4096)
def expert_load(tokens: int, experts: int, top_k: int, ranks: int) -> ExpertLoad:
    """The busiest of `ranks` ranks, each holding experts/ranks experts, when `tokens` tokens
    each pick `top_k` of `experts` (ranks = 1: the whole routed load, t × k rows)."""
    local = experts // ranks
    if tokens <= 0:
        return ExpertLoad(0.0, 0.0)
    if ranks == 1:
        return ExpertLoad(float(tokens * top_k), _active(tokens, experts, top_k, local))
    mean = tokens * top_k / ranks
    if mean >= NORMAL_FROM:
        # A token's picks among one rank's experts are hypergeometric; the ranks' loads sum to t × k,
        # so they are exchangeable normals with correlation -1/(n-1): E[max] = mean + s × E[max of n
        # standard normals], with s the per-rank deviation over sqrt(1 - 1/n).
        g = local / experts
        var = tokens * top_k * g * (1 - g) * (experts - top_k) / (experts - 1)
        s = math.sqrt(var / (1.0 - 1.0 / ranks))
        rows = min(tokens * min(top_k, local), mean + s * _expected_max_normal(ranks))
        return ExpertLoad(rows, _most_active(tokens, experts, top_k, local, ranks))
    rng = np.random.default_rng(_SEED)
    counts = np.zeros((SAMPLES, experts), dtype=np.int64)
    chunk = max(1, CHUNK_DRAWS // (tokens * experts))  # samples drawn at once, to bound memory
    for lo in range(0, SAMPLES, chunk):
        n = min(chunk, SAMPLES - lo)
        picks = np.argpartition(rng.random((n, tokens, experts)), top_k - 1, axis=-1)[..., :top_k]
        np.add.at(counts[lo:lo + n], (np.arange(n)[:, None, None], picks), 1)
    per_rank = counts.reshape(SAMPLES, ranks, local)
    return ExpertLoad(float(per_rank.sum(-1).max(-1).mean()), float((per_rank > 0).sum(-1).max(-1).mean()))
