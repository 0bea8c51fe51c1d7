"""Measures computed from the events table, identically for simulated and measured runs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sim.jobs import Job


def _spans(events: pd.DataFrame, first: str, last: str) -> pd.DataFrame:
    """Per request id ≥ 0: its first kernel's start and last kernel's end. Grouped over the whole
    table, negatives dropped after (no filtered copy of a table of tens of millions of rows)."""
    span = events.groupby("request_id").agg(**{first: ("start_s", "min"), last: ("end_s", "max")})
    return span[span.index >= 0]


def requests_frame(events: pd.DataFrame, jobs: list[Job]) -> pd.DataFrame:
    """One row per job: arrival, first kernel start, last kernel end, JCT = end − arrival."""
    span = _spans(events, "start_s", "end_s")
    arrivals = pd.DataFrame({"request_id": [j.request_id for j in jobs],
                             "arrival_s": [j.arrival_s for j in jobs]}).set_index("request_id")
    df = arrivals.join(span, how="left").reset_index()
    df["jct_s"] = df["end_s"] - df["arrival_s"]
    return df[["request_id", "arrival_s", "start_s", "end_s", "jct_s"]]


def _union_length(starts: np.ndarray, ends: np.ndarray) -> float:
    if len(starts) == 0:
        return 0.0
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], np.maximum.accumulate(ends[order])
    # a new busy period begins where a start exceeds every earlier end
    new = np.empty(len(s), dtype=bool)
    new[0] = True
    new[1:] = s[1:] > e[:-1]
    idx = np.flatnonzero(new)
    period_end = np.append(e[idx[1:] - 1], e[-1])
    return float(np.sum(period_end - s[idx]))


def _intervals(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return df["start_s"].to_numpy(float), df["end_s"].to_numpy(float)


def utilisation(events: pd.DataFrame, window: float, ranks: int | None = None) -> dict:
    """GPU busy fraction, overlap fraction (compute and communication at once) and
    per-stream occupancy, each as a fraction of `window` seconds, averaged over the ranks in the
    table (a rank with nothing on a stream counts 0 for it: a pipeline's first stage receives nothing),
    or over `ranks` when more GPUs were simulated (a data-parallel replica that served nothing)."""
    busy, overlap, streams = [], [], {}
    for _rank, ev in events.groupby("rank"):
        comm = ev["cls"] == "collective"
        b = _union_length(*_intervals(ev))
        c = _union_length(*_intervals(ev[~comm]))
        m = _union_length(*_intervals(ev[comm]))
        busy.append(b / window)
        overlap.append(max(0.0, c + m - b) / window)  # |C ∩ M| = |C| + |M| − |C ∪ M|
        for sid, es in ev.groupby("stream"):
            streams.setdefault(int(sid), []).append(_union_length(*_intervals(es)) / window)
    n = max(len(busy), ranks or 0)
    return {
        "gpu_busy_frac": float(np.sum(busy)) / n if n else 0.0,
        "overlap_frac": float(np.sum(overlap)) / n if n else 0.0,
        "stream_occupancy": {str(k): float(np.sum(v)) / n for k, v in sorted(streams.items())},
    }


def summarise(events: pd.DataFrame, requests: pd.DataFrame, policy: str, sim_wall_s: float | None,
              ranks: int | None = None) -> dict:
    """A run's JCT, throughput and utilisation (over `ranks` simulated GPUs, see `utilisation`)."""
    done = requests.dropna(subset=["end_s"])
    jct = done["jct_s"].to_numpy(float)
    first = float(requests["arrival_s"].min())
    last = float(events["end_s"].max()) if len(events) else first
    makespan = last - first
    q = (lambda p: float(np.percentile(jct, p))) if len(jct) else (lambda p: float("nan"))
    out = {
        "policy": policy,
        "jobs": int(len(requests)),
        "completed": int(len(done)),
        "jct_mean_s": float(jct.mean()) if len(jct) else float("nan"),
        "jct_p50_s": q(50),
        "jct_p90_s": q(90),
        "jct_p99_s": q(99),
        # departure rate between the first and the last completion: at light load it equals
        # the arrival rate, at saturation the service rate (counting from the first arrival
        # instead would charge one job's latency to the rate of a short run)
        "throughput_jobs_s": (len(done) - 1) / (done["end_s"].max() - done["end_s"].min())
        if len(done) > 1 and done["end_s"].max() > done["end_s"].min() else float("nan"),
        "offered_rate_jobs_s": (len(requests) - 1) / (float(requests["arrival_s"].max()) - first)
        if len(requests) > 1 and requests["arrival_s"].max() > first else float("nan"),
        "makespan_s": makespan,
        "kernels": int(len(events)),
        "sim_wall_s": sim_wall_s,
    }
    out.update(utilisation(events, makespan, ranks) if makespan > 0 else {})
    return out


def generative_requests_frame(events: pd.DataFrame, iterations: list[list], jobs: list[Job]) -> pd.DataFrame:
    """One row per request of generative serving: every output token is emitted when the
    iteration that produced it ends (its last kernel on any rank)."""
    span = _spans(events, "t0", "t1")
    it = pd.DataFrame(iterations, columns=["iteration", "group", "request_id", "tokens_in", "emits"])
    it = it.join(span, on="iteration")
    first = it.groupby("request_id")["t0"].min()
    tok = it[it["emits"] == 1].groupby("request_id")["t1"].agg(["min", "max", "count"])
    df = pd.DataFrame({"request_id": [j.request_id for j in jobs], "arrival_s": [j.arrival_s for j in jobs],
                       "prompt_tokens": [j.prompt for j in jobs],
                       "output_tokens": [j.output_tokens for j in jobs]}).set_index("request_id")
    df["start_s"] = first
    df["first_token_s"] = tok["min"]
    df["end_s"] = tok["max"]
    df["tokens"] = tok["count"].reindex(df.index).fillna(0).astype(int)
    df["jct_s"] = df["end_s"] - df["arrival_s"]
    df["ttft_s"] = df["first_token_s"] - df["arrival_s"]
    df["tpot_s"] = (df["end_s"] - df["first_token_s"]) / (df["tokens"] - 1).where(df["tokens"] > 1)
    cols = ["arrival_s", "start_s", "end_s", "jct_s", "ttft_s", "tpot_s", "tokens", "prompt_tokens", "output_tokens"]
    return df.reset_index()[["request_id", *cols]]


def generative_summary(requests: pd.DataFrame, kv_log: list, kv_capacity: int | None, makespan: float,
                       slo_ttft_s: float | None, slo_tpot_s: float | None, rejected: int = 0,
                       replicas: int = 1, kv_total: float | None = None) -> dict:
    """TTFT, TPOT, tokens/s, KV-cache occupancy (time-weighted, from the first allocation to the
    last token; `kv_log` sums `replicas` data-parallel replicas of `kv_capacity` tokens per GPU, or
    of `kv_total` tokens together when their capacities differ)
    and SLO attainment (goodput). `rejected` requests (turned away before the run,
    `serving.over_context: enforce`) count as missing the SLOs, as a client sees them."""
    out: dict = {}
    for col in ("ttft_s", "tpot_s"):
        v = requests[col].dropna().to_numpy(float)
        name = col.removesuffix("_s")
        out.update({f"{name}_mean_s": float(v.mean()) if len(v) else float("nan"),
                    **{f"{name}_p{p}_s": float(np.percentile(v, p)) if len(v) else float("nan") for p in (50, 90, 99)}})
    out["tokens"] = int(requests["tokens"].sum())
    out["tokens_per_s"] = out["tokens"] / makespan if makespan > 0 else float("nan")
    if kv_log and kv_capacity:
        t = np.array([x for x, _ in kv_log], dtype=float)
        used = np.array([u for _, u in kv_log], dtype=float) / (kv_total or kv_capacity * replicas)
        end = max(float(requests["end_s"].max()) if len(requests) else t[-1], t[-1])
        span = np.diff(np.append(t, end))  # each level holds until the next change
        mean = float((used * span).sum() / (end - t[0])) if end > t[0] else float(used.mean())
        out.update(kv_capacity_tokens=int(kv_capacity), kv_occupancy_mean=mean, kv_occupancy_max=float(used.max()))
    if slo_ttft_s or slo_tpot_s:
        ok = requests["tokens"] == requests["output_tokens"]
        if slo_ttft_s:
            ok &= requests["ttft_s"] <= slo_ttft_s
        if slo_tpot_s:
            ok &= requests["tpot_s"].fillna(0.0) <= slo_tpot_s
        out["slo_attainment"] = float(ok.sum() / (len(ok) + rejected)) if len(ok) + rejected else float("nan")
        out["goodput_jobs_s"] = float(ok.sum()) / makespan if makespan > 0 else float("nan")
    return out


def handoff_summary(handoffs: list[list[float]], prefill_replicas: int) -> dict:
    """Disaggregated serving: how long prefilled requests waited for room on a decode replica and
    how long after that (and after their prefill) their KV cache arrived (`handoffs`: request,
    prefilled, placed, arrived, simulated s; an interrupted run's last ones may be unfinished, NaN)."""
    t = np.array([row[1:] for row in handoffs], dtype=float).reshape(-1, 3)
    # placed before its prefill ended (`kv_transfer: layerwise`): no wait, and the transfer counts
    # from the prefill's end, the part of it a request sees
    wait, move = np.maximum(t[:, 1] - t[:, 0], 0.0), np.maximum(t[:, 2] - np.maximum(t[:, 0], t[:, 1]), 0.0)
    out: dict = {"prefill_replicas": prefill_replicas, "handoffs": len(t)}
    for name, v in (("decode_wait", wait), ("kv_transfer", move)):
        v = v[np.isfinite(v)]
        out.update({f"{name}_mean_s": float(v.mean()) if len(v) else float("nan"),
                    f"{name}_p99_s": float(np.percentile(v, 99)) if len(v) else float("nan")})
    return out
