"""Writing a run's results, the same files for simulated and measured runs, and reading them back."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from sim import ir
from sim.errors import LigerSimError
from sim.metrics import (
    generative_requests_frame,
    generative_summary,
    handoff_summary,
    requests_frame,
    summarise,
)

TRACE_CHUNK = 20_000  # trace events per json.dumps call (json.dump streams through the pure-Python encoder)
# Kernels a trace holds by default: about 230 MB of JSON. Perfetto's in-browser UI has about 2 GB for a
# trace's parsed form, several times its size (perfetto.dev, "Visualising large traces"), and a 900 MB
# JSON trace crashed it (google/perfetto#99); a 50-request generative run of LLaMA-2-70B is 5.8M kernels.
TRACE_KERNELS = 1_000_000


# The events-table columns its readers use (plots, validation); every run writes them (`sim.eventlog.COLUMNS`).
EVENT_COLUMNS = ("rank", "stream", "kernel_id", "request_id", "layer", "kind", "name", "cls", "fraction",
                 "start_s", "end_s")
RUN_WRITERS = "`ligersim run` or `ligersim hw run` writes one"
VALIDATE_WRITES = "`ligersim validate` writes it"
# A validation folder's own runs (beside its meta.json): its predictions and the runs it measured.
VALIDATION_RUNS = ("closed_loop", "replay", "measured", "measured_cupti")


def writer_of(path: Path, elsewhere: str = RUN_WRITERS) -> str:
    """The command that writes a results file where it is, for an error's hint: `ligersim validate`
    for a validation folder's own runs, else `elsewhere`."""
    run = Path(path).parent
    return VALIDATE_WRITES if run.name in VALIDATION_RUNS and (run.parent / "meta.json").is_file() else elsewhere


def read_results(path: Path, kind: str, columns: Sequence[str], writer: str | None = None) -> pd.DataFrame:
    """A results table (.parquet, else CSV) from a folder the user names, or a one-line error naming
    the file: one that is corrupt, cut off or not a table at all raises deep in pyarrow or pandas,
    and one without the `columns` its reader uses would fail later with a bare KeyError. `writer`:
    the hint at the end (default: `writer_of` the file)."""
    writer = writer or writer_of(path)
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except (OSError, ValueError, pa.ArrowException) as e:  # ValueError: pandas' parse errors, UnicodeDecodeError
        why = re.sub(r"^Could not open Parquet input source '[^']*': ", "", str(e).splitlines()[0] if str(e) else
                     type(e).__name__)
        raise LigerSimError(f"not {kind} table ({why}); {writer}", file=str(path)) from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise LigerSimError(f"not {kind} table: no column {', '.join(missing)}; {writer}", file=str(path))
    return df


def read_events(path: Path) -> pd.DataFrame:
    """A run's events.parquet (`read_results`)."""
    return read_results(path, "an events", EVENT_COLUMNS)


_JSON_TYPES = ((bool, "true or false"), (int, "an integer"), (float, "a number"), (str, "a string"),
               (list, "an array"), (dict, "an object"), (type(None), "null"))


def _json_type(value) -> str:
    return next(name for t, name in _JSON_TYPES if isinstance(value, t))


def read_json(path: Path, writer: str | None = None, needs: Mapping[str, type | tuple[type, ...]] | None = None,
              may: Mapping[str, type | tuple[type, ...]] | None = None) -> dict:
    """A JSON object from a folder the user names (a run's summary.json, a validation's meta.json),
    or a one-line error naming the file: text that is not JSON (or cut off) raises deep in json, and
    JSON of another type (an array) or without a key its reader uses fails later, as an
    AttributeError or KeyError far from the read. `needs`: the keys its reader needs and their
    types; `may`: keys it reads when there, and their types (true and false are not numbers).
    `writer`: the hint at the end (default: `writer_of` the file)."""
    writer = writer or writer_of(path)
    try:
        text = Path(path).read_text()
        data = json.loads(text)
    except OSError as e:
        raise LigerSimError(f"cannot read it ({e.strerror or e})", file=str(path)) from None
    except UnicodeDecodeError as e:
        raise LigerSimError(f"not JSON (not UTF-8 text: byte {e.start}); {writer}", file=str(path)) from None
    except json.JSONDecodeError as e:
        cut = e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string")  # it ends mid-value
        why = "empty" if not text.strip() else f"{'cut off: ' * cut}{e.msg}: line {e.lineno} column {e.colno}"
        raise LigerSimError(f"not JSON ({why}); {writer}", file=str(path)) from None
    if not isinstance(data, dict):
        raise LigerSimError(f"must be a JSON object, not {_json_type(data)}; {writer}", file=str(path))
    needs, may = needs or {}, may or {}
    for key, types in {**may, **needs}.items():
        types = types if isinstance(types, tuple) else (types,)
        if key not in data:
            if key in needs:
                raise LigerSimError(f"missing; {writer}", file=str(path), field=key)
        elif not isinstance(data[key], types) or (isinstance(data[key], bool) and bool not in types):
            allowed = " or ".join(dict.fromkeys(name for t, name in _JSON_TYPES if t in types))
            raise LigerSimError(f"must be {allowed}, not {_json_type(data[key])}; {writer}", file=str(path),
                                field=key)
    return data


def trace_window(events: pd.DataFrame, limit: int | None) -> tuple[pd.DataFrame, float | None]:
    """The kernels a trace of at most `limit` kernels holds (None or 0: all): every kernel that
    started before a cut-off time, so the trace shows the run's beginning whole, on every stream.
    Returns them, in the table's order, and the cut-off (None when nothing was cut)."""
    if not limit or len(events) <= limit:
        return events, None
    start = events["start_s"].to_numpy()
    cut = float(np.partition(start, limit)[limit])  # the (limit + 1)-th earliest start
    keep = start < cut
    if not keep.any():  # more than `limit` kernels start at the very first instant
        keep = np.zeros(len(start), dtype=bool)
        keep[np.argsort(start, kind="stable")[:limit]] = True
    return events[keep], cut


def chrome_trace(events: pd.DataFrame, path: Path, title: str = "ligersim",
                 limit: int | None = None) -> tuple[int, float] | None:
    """A Chrome trace (opens in Perfetto / chrome://tracing): a process per rank, a thread per stream.
    Written in chunks of events, each by the C JSON encoder (json.dump of the whole goes through the
    pure-Python one: 2 minutes and GBs of dicts for 1.6M kernels), as the same text. With `limit`,
    only the run's beginning (`trace_window`); if it was cut, returns the kernels written and the cut-off."""
    events, cut = trace_window(events, limit)
    head: list[dict] = []
    for rank in sorted(events["rank"].unique()):
        head.append({"ph": "M", "name": "process_name", "pid": int(rank), "args": {"name": f"rank {rank}"}})
        for sid in sorted(events.loc[events["rank"] == rank, "stream"].unique()):
            head.append({"ph": "M", "name": "thread_name", "pid": int(rank), "tid": int(sid),
                         "args": {"name": f"stream {sid}"}})
    cols = ["rank", "stream", "name", "cls", "request_id", "layer", "kernel_id", "start_s", "end_s", "solo_s",
            "fraction"]
    with open(path, "w") as f:
        f.write('{"traceEvents": [' + json.dumps(head)[1:-1])
        for i in range(0, len(events), TRACE_CHUNK):
            part = events.iloc[i:i + TRACE_CHUNK]
            chunk = [{"ph": "X", "pid": int(r), "tid": int(s), "name": name, "cat": cls, "ts": t0 * 1e6,
                      "dur": (t1 - t0) * 1e6, "args": {"request": int(req), "layer": int(layer),
                                                        "kernel_id": int(kid), "solo_us": solo * 1e6,
                                                        "fraction": frac}}
                     for r, s, name, cls, req, layer, kid, t0, t1, solo, frac in zip(*(part[c].tolist() for c in cols))]
            f.write((", " if head or i else "") + json.dumps(chunk)[1:-1])
        other: dict = {"title": title}
        if cut is not None:
            other["kernels_before_s"] = cut
        f.write('], "displayTimeUnit": "ms", "otherData": ' + json.dumps(other) + "}")
    return None if cut is None else (len(events), cut)


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


# The files `write_run` writes, some only for some runs (kv.csv: generative ones; trace.json and ir.jsonl: when
# asked; ir.jsonl.gz stands in for a missing ir.jsonl). It removes them all first: a folder written over keeps
# none of an earlier run's (a generative run's kv.csv beside an encoder run's tables, an IR it did not record).
RUN_FILES = ("events.parquet", "requests.csv", "summary.json", "kv.csv", "trace.json", "ir.jsonl", "ir.jsonl.gz")


def write_run(out: Path, events: pd.DataFrame, jobs, schedule: ir.Schedule | None, policy: str,
              sim_wall_s: float | None, extra: dict | None = None, trace: bool = True,
              trace_kernels: int | None = TRACE_KERNELS, progress: bool = False) -> dict:
    """Write a run's files. The trace holds at most `trace_kernels` kernels (None or 0: all); when it
    was cut, summary.json says where (`trace_until_s`, `trace_kernels`). With `progress`, a bar
    names the file being written (a run of millions of kernels writes for tens of seconds)."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    steps = 2 + trace + (schedule is not None)
    with tqdm(total=steps, desc="writing", unit="file", leave=False, disable=not progress) as bar:
        bar.set_postfix_str("events.parquet")
        events.to_parquet(out / "events.parquet", index=False)
        bar.update()
        bar.set_postfix_str("requests.csv")
        meta = schedule.meta if schedule is not None else (extra or {}).get("meta", {})
        requests, summary = run_tables(events, jobs, meta, policy, sim_wall_s)
        requests.to_csv(out / "requests.csv", index=False)
        if meta.get("kv_log"):
            pd.DataFrame(meta["kv_log"], columns=["time_s", "kv_tokens"]).to_csv(out / "kv.csv", index=False)
        summary.update({k: v for k, v in (extra or {}).items() if k != "meta"})
        bar.update()
        if trace:
            bar.set_postfix_str("trace.json")
            cut = chrome_trace(events, out / "trace.json", str((extra or {}).get("scenario", policy)), trace_kernels)
            if cut is not None:
                summary.update(trace_kernels=cut[0], trace_until_s=cut[1])
            bar.update()
        (out / "summary.json").write_text(json.dumps(_clean(summary), indent=2) + "\n")
        if schedule is not None:
            bar.set_postfix_str("ir.jsonl")
            ir.save(schedule, out / "ir.jsonl")
            bar.update()
    return summary


def simulated_ranks(meta: dict) -> int | None:
    """With data-parallel replicas, how many GPUs the run simulated (one per replica when rank-
    folded), so that a replica that served nothing counts as idle; otherwise None (the ranks in
    the events table, which on the CUDA backend may be one emulated rank of a group)."""
    pol = meta.get("scenario", {}).get("policy", {})
    dp = pol.get("dp", 1) if isinstance(pol, dict) else 1
    if not isinstance(dp, int) or dp <= 1:
        return None
    return dp if meta.get("folded_ranks") else meta["scenario"].get("hardware", {}).get("count")


def run_tables(events: pd.DataFrame, jobs, meta: dict, policy: str, sim_wall_s: float | None):
    """requests.csv and summary.json of a run, encoder or generative (its IR meta says)."""
    rejected = int(meta.get("rejected_requests", 0))
    ranks = simulated_ranks(meta)
    if "iterations" not in meta:
        requests = requests_frame(events, jobs)
        summary = summarise(events, requests, policy, sim_wall_s, ranks)
    else:
        requests = generative_requests_frame(events, meta["iterations"], jobs)
        summary = summarise(events, requests, policy, sim_wall_s, ranks)
        serving = meta.get("scenario", {}).get("serving", {})
        replicas = meta.get("replica_requests", [])
        # occupancy is over every replica's cache: their capacity, or per GPU times their number
        total = meta.get("kv_capacity_total_tokens")
        summary.update(generative_summary(requests, meta.get("kv_log", []), meta.get("kv_capacity_tokens"),
                                          summary["makespan_s"], serving.get("slo_ttft_s"), serving.get("slo_tpot_s"),
                                          rejected, max(1, len(replicas)), total))
        if replicas:
            summary["replica_requests"] = replicas
        if total:
            summary["kv_capacity_total_tokens"] = total
        if "handoffs" in meta:
            summary.update(handoff_summary(meta["handoffs"], meta["scenario"]["policy"]["prefill_replicas"]))
    if rejected:
        summary["rejected"] = rejected
    return requests, summary


def describe(summary: dict) -> str:
    """A short human summary of a run."""
    ms = 1e3
    lines = [
        f"policy {summary['policy']}: {summary['completed']}/{summary['jobs']} jobs"
        + (f" ({summary['rejected']} more rejected)" if summary.get("rejected") else "")
        + f", {summary['kernels']:,} kernels",
        f"  JCT mean {summary['jct_mean_s'] * ms:.2f} ms  p50 {summary['jct_p50_s'] * ms:.2f}  "
        f"p90 {summary['jct_p90_s'] * ms:.2f}  p99 {summary['jct_p99_s'] * ms:.2f} ms",
        f"  throughput {summary['throughput_jobs_s']:.2f} jobs/s (offered {summary['offered_rate_jobs_s']:.2f}), "
        f"makespan {summary['makespan_s']:.3f} s",
    ]
    if "ttft_mean_s" in summary:
        lines.append(f"  TTFT mean {summary['ttft_mean_s'] * ms:.1f} ms  p99 {summary['ttft_p99_s'] * ms:.1f} ms; "
                     f"TPOT mean {summary['tpot_mean_s'] * ms:.2f} ms  p99 {summary['tpot_p99_s'] * ms:.2f} ms; "
                     f"{summary['tokens_per_s']:,.0f} tokens/s")
        if "kv_occupancy_mean" in summary:
            held = (f"{summary['kv_capacity_total_tokens']:,} tokens over all replicas"
                    if summary.get("kv_capacity_total_tokens") else f"{summary['kv_capacity_tokens']:,} tokens/GPU")
            lines.append(f"  KV cache {held}, occupancy mean {summary['kv_occupancy_mean']:.1%} max "
                         f"{summary['kv_occupancy_max']:.1%}")
        if "slo_attainment" in summary:
            lines.append(f"  SLO attainment {summary['slo_attainment']:.1%}, goodput {summary['goodput_jobs_s']:.2f} "
                         "jobs/s")
    if "replica_requests" in summary:
        served, pf = summary["replica_requests"], summary.get("prefill_replicas", 0)
        lines.append(f"  {len(served)} replicas served " + " / ".join(f"{n:,}" for n in served) + " requests"
                     + (f" ({pf} prefill, then {len(served) - pf} decode)" if pf else ""))
    if summary.get("handoffs"):
        lines.append(f"  {summary['handoffs']:,} handed on to decode: waited for room mean "
                     f"{summary['decode_wait_mean_s'] * ms:.2f} ms (p99 {summary['decode_wait_p99_s'] * ms:.2f}), KV "
                     f"arrived mean {summary['kv_transfer_mean_s'] * ms:.2f} ms (p99 {summary['kv_transfer_p99_s'] * ms:.2f}) "
                     "after")
    if "gpu_busy_frac" in summary:
        lines.append(f"  GPU busy {summary['gpu_busy_frac']:.1%}, compute/comm overlap {summary['overlap_frac']:.1%}")
    if "trace_until_s" in summary:
        lines.append(f"  trace.json: the run's first {summary['trace_until_s'] * ms:,.2f} ms, {summary['trace_kernels']:,}"
                     f" of {summary['kernels']:,} kernels (--trace-kernels 0 writes every one)")
    if summary.get("sim_wall_s"):
        lines.append(f"  simulated in {summary['sim_wall_s']:.2f} s "
                     f"({summary['kernels'] / summary['sim_wall_s']:,.0f} kernels/s)")
    return "\n".join(lines)
