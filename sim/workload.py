"""Workloads: the `workload:` section of a scenario, turned into a list of `Job`s.

Two kinds: `generate` draws arrivals and job shapes from distributions (seeded, so a
scenario is reproducible), `trace` replays a CSV/Parquet file (e.g. the Azure LLM traces in
`traces/`). `write_trace` saves any job list in the `ligersim` layout so a generated or
trimmed workload can be replayed exactly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import (
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sim.errors import LigerSimError
from sim.jobs import Job
from sim.schema import Float, StrictModel

JOB_COLUMNS = ("request_id", "arrival_s", "batch", "seq_len", "prompt_tokens", "output_tokens")
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
# pandas < 3 parses CSV floats inexactly unless asked; pandas 3 is exact and deprecates the flag.
_CSV_EXACT = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}
# Smallest value each job-shape field may take.
_SHAPE_MIN = {"batch": 1, "seq_len": 1, "prompt_tokens": 0, "output_tokens": 0}


# ---------------------------------------------------------------- arrival processes


class PoissonArrival(StrictModel):
    process: Literal["poisson"] = Field(description="Poisson arrivals: exponential inter-arrival times.")
    rate: Float = Field(gt=0, description="Mean arrival rate, jobs/s.")


class GammaArrival(StrictModel):
    process: Literal["gamma"] = Field(
        description="Renewal process with gamma inter-arrival times (burstiness knob)."
    )
    rate: Float = Field(gt=0, description="Mean arrival rate, jobs/s.")
    cv: Float = Field(
        1.0,
        gt=0,
        description="Coefficient of variation of inter-arrival times (dimensionless); 1 = Poisson, >1 = bursty.",
    )


class ConstantArrival(StrictModel):
    process: Literal["constant"] = Field(description="Evenly spaced arrivals, exactly 1/rate apart.")
    rate: Float = Field(gt=0, description="Arrival rate, jobs/s.")


class OnOffArrival(StrictModel):
    process: Literal["onoff"] = Field(
        description="Poisson at `rate` during on periods, silent during off periods; starts with an on period at t=0."
    )
    rate: Float = Field(
        gt=0,
        description="Arrival rate during on periods, jobs/s (long-run mean is rate·on_s/(on_s+off_s)).",
    )
    on_s: Float = Field(gt=0, description="Length of each on period, s.")
    off_s: Float = Field(gt=0, description="Length of each off period, s.")


Arrival = Annotated[
    PoissonArrival | GammaArrival | ConstantArrival | OnOffArrival, Field(discriminator="process")
]


# ---------------------------------------------------------------- job-shape distributions


class UniformDist(StrictModel):
    dist: Literal["uniform"] = Field(description="Integer uniform distribution.")
    low: int = Field(description="Smallest value (inclusive).")
    high: int = Field(description="Largest value (inclusive).")

    @model_validator(mode="after")
    def _ordered(self) -> UniformDist:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        return self


class EmpiricalDist(StrictModel):
    dist: Literal["empirical"] = Field(description="Pick among given values.")
    values: list[int] = Field(min_length=1, description="Values to pick from.")
    weights: list[Float] | None = Field(
        None, description="Relative weights, one per value, >= 0 (need not sum to 1); default equal."
    )

    @model_validator(mode="after")
    def _weights_ok(self) -> EmpiricalDist:
        w = self.weights
        if w is not None:
            if len(w) != len(self.values):
                raise ValueError(f"weights has {len(w)} entries but values has {len(self.values)}")
            if any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
                raise ValueError("weights must be finite, >= 0 and not all 0")
        return self


Dist = Annotated[UniformDist | EmpiricalDist, Field(discriminator="dist")]
_SHAPE_FORMS = "an integer, {dist: uniform, low, high} or {dist: empirical, values[, weights]}"


def _shape_form(value: Any) -> str | None:
    """Pick the branch from the value's type, so a bad mapping reports the distribution's own problem
    (unknown dist, missing low) and not the int branch's "should be a valid integer"; None (neither:
    a string, a float, `true`) gets the custom error listing the forms allowed."""
    if isinstance(value, int) and not isinstance(value, bool):
        return "int"
    return "distribution" if isinstance(value, dict | UniformDist | EmpiricalDist) else None


# The tag "distribution" must not be a field name: the scenario's error formatter drops tags from paths.
Shape = Annotated[
    Annotated[int, Tag("int")] | Annotated[Dist, Tag("distribution")],
    Discriminator(_shape_form, custom_error_type="shape_form", custom_error_message=f"must be {_SHAPE_FORMS}"),
]


def _shape_min(spec: Shape) -> int:
    if isinstance(spec, int):
        return spec
    return spec.low if isinstance(spec, UniformDist) else min(spec.values)


def _draw(spec: Shape, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` integer draws from a shape spec (a fixed int draws nothing, so the stream is unchanged)."""
    if isinstance(spec, int):
        return np.full(n, spec, dtype=np.int64)
    if isinstance(spec, UniformDist):
        return rng.integers(spec.low, spec.high, size=n, endpoint=True, dtype=np.int64)
    p = None if spec.weights is None else np.asarray(spec.weights) / sum(spec.weights)
    return rng.choice(np.asarray(spec.values, dtype=np.int64), size=n, p=p)


# ---------------------------------------------------------------- workload configs


class GenerateWorkload(StrictModel):
    """Synthetic jobs; the first job arrives at t=0 and later ones follow the drawn gaps."""

    kind: Literal["generate"] = Field(description="Draw arrivals and job shapes from distributions.")
    arrival: Arrival = Field(
        description="Arrival process (poisson | gamma | constant | onoff) and its rate, jobs/s."
    )
    jobs: int = Field(100, gt=0, le=100_000_000, description="Number of jobs to generate.")
    batch: Shape = Field(
        1, description="Sequences per job (encoder-style jobs): int, {dist: uniform} or {dist: empirical}."
    )
    seq_len: Shape = Field(
        128, description="Sequence length per job, tokens: int, {dist: uniform} or {dist: empirical}."
    )
    prompt_tokens: Shape | None = Field(
        None, description="Prompt (prefill) length, tokens; default: equal to each job's seq_len."
    )
    output_tokens: Shape = Field(0, description="Generated (decode) tokens per job; 0 = encoder-style job.")

    @field_validator(*_SHAPE_MIN)
    @classmethod
    def _minimum(cls, spec: Shape | None, info: ValidationInfo) -> Shape | None:
        """Each shape field's smallest possible value, checked per field so the error names it."""
        lo = _SHAPE_MIN[info.field_name]
        if spec is not None and _shape_min(spec) < lo:
            raise ValueError(f"must be >= {lo}" if isinstance(spec, int)
                             else f"must be >= {lo}, but the distribution can draw {_shape_min(spec)}")
        return spec


class TraceColumns(StrictModel):
    """Column names in the file; a name you set must exist, a default one is used only if present."""

    arrival_s: str = Field(
        "arrival_s", description="Column with arrival times (unit: `time_unit`); required."
    )
    request_id: str = Field("request_id", description="Column with integer request ids; default 0..N-1.")
    batch: str = Field("batch", description="Column with sequences per job; default 1.")
    seq_len: str = Field(
        "seq_len", description="Column with sequence length, tokens; default: prompt tokens, else 128."
    )
    prompt_tokens: str = Field(
        "prompt_tokens", description="Column with prompt length, tokens; default: seq_len."
    )
    output_tokens: str = Field("output_tokens", description="Column with output (decode) tokens; default 0.")


class TraceWorkload(StrictModel):
    """Jobs replayed from a file; arrival times are kept as they are in the file (not shifted)."""

    kind: Literal["trace"] = Field(description="Replay a request trace file.")
    path: Path = Field(  # YAML gives text: a path is the one field that takes text for another type
        strict=False,
        description="CSV or Parquet file (by extension: .csv, .parquet, .pq); relative to the scenario's folder, then to the working dir."
    )
    format: Literal["azure", "columns", "ligersim"] = Field(
        "azure",
        description="azure: columns arrived_at (s), num_prefill_tokens, num_decode_tokens; "
        "ligersim: the layout write_trace produces; columns: names given in `columns`.",
    )
    columns: TraceColumns | None = Field(None, description="Column mapping, only with format: columns.")
    time_unit: Literal["s", "ms", "us"] = Field("s", description="Unit of the arrival column: s, ms or us (a "
                                                "column of timestamps is read as seconds since its first).")
    rate: Float | None = Field(
        None,
        gt=0,
        description="Time-scale arrivals so the mean rate, (N-1)/(last-first), is this many jobs/s (after `jobs`); default: as recorded.",
    )
    jobs: int | None = Field(None, gt=0, description="Keep only the first N jobs; default all.")
    batch: int | None = Field(None, ge=1, description="Override every job's batch (sequences per job).")
    seq_len: int | None = Field(
        None, ge=1, description="Override every job's seq_len, tokens (encoder-style use of a token trace)."
    )

    @model_validator(mode="after")
    def _columns_only_for_columns(self) -> TraceWorkload:
        if self.columns is not None and self.format != "columns":
            raise ValueError(f"columns applies only to format: columns (format is {self.format})")
        return self


WorkloadConfig = Annotated[GenerateWorkload | TraceWorkload, Field(discriminator="kind")]


# ---------------------------------------------------------------- building jobs


def build_jobs(cfg: GenerateWorkload | TraceWorkload, seed: int, base_dir: Path | None = None) -> list[Job]:
    """The workload's jobs, sorted by arrival; the same seed always gives the same jobs."""
    if isinstance(cfg, GenerateWorkload):
        return _generate(cfg, np.random.default_rng(seed))
    return _load_trace(cfg, base_dir)


def with_rate(cfg: GenerateWorkload | TraceWorkload, rate: float) -> GenerateWorkload | TraceWorkload:
    """A copy offering `rate` jobs/s, for latency–throughput sweeps (trace: time-scaled)."""
    try:
        r = float(rate)
    except (TypeError, ValueError):
        r = math.nan
    if not (math.isfinite(r) and r > 0):
        raise LigerSimError(f"rate must be a finite number > 0 jobs/s, got {rate!r}", field="workload.rate")
    if isinstance(cfg, GenerateWorkload):
        return cfg.model_copy(update={"arrival": cfg.arrival.model_copy(update={"rate": r})})
    return cfg.model_copy(update={"rate": r})


def _arrivals(
    a: PoissonArrival | GammaArrival | ConstantArrival | OnOffArrival, n: int, rng: np.random.Generator
) -> np.ndarray:
    if isinstance(a, ConstantArrival):
        return np.arange(n, dtype=np.float64) / a.rate
    if isinstance(a, GammaArrival):
        k = 1.0 / a.cv**2  # gamma shape; CV of a gamma variable is 1/sqrt(k)
        gaps = rng.gamma(k, 1.0 / (a.rate * k), size=n - 1)
    else:
        gaps = rng.exponential(1.0 / a.rate, size=n - 1)
    t = np.concatenate(([0.0], np.cumsum(gaps)))
    if isinstance(a, OnOffArrival):
        # t is time spent "on"; insert an off period after every full on period.
        t = t + np.floor(t / a.on_s) * a.off_s
    return t


def _generate(cfg: GenerateWorkload, rng: np.random.Generator) -> list[Job]:
    n = cfg.jobs
    t = _arrivals(cfg.arrival, n, rng)
    batch = _draw(cfg.batch, n, rng)
    seq = _draw(cfg.seq_len, n, rng)
    prompt = seq if cfg.prompt_tokens is None else _draw(cfg.prompt_tokens, n, rng)
    out = _draw(cfg.output_tokens, n, rng)
    return _jobs(np.arange(n), t, batch, seq, prompt, out)


def _jobs(*cols: np.ndarray) -> list[Job]:
    rows = zip(*(c.tolist() for c in cols), strict=True)
    return [Job(int(i), float(t), int(b), int(s), int(p), int(o)) for i, t, b, s, p, o in rows]


def _resolve(path: Path, base_dir: Path | None) -> Path:
    tried = [path] if path.is_absolute() else [p / path for p in (base_dir, Path.cwd()) if p is not None]
    for p in tried:
        if p.is_file():
            return p
    where = " or ".join(str(p) for p in tried)
    raise LigerSimError(f"trace file not found (looked at {where})", file=str(path), field="workload.path")


def _read(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise LigerSimError(
            f"unknown trace extension {path.suffix!r}; allowed: .csv, .parquet, .pq",
            file=str(path),
            field="workload.path",
        )
    try:
        if suffix == ".csv":
            return pd.read_csv(path, **_CSV_EXACT)
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise LigerSimError(
            "trace is empty (no header, no rows)", file=str(path), field="workload.path"
        ) from None
    except Exception as e:  # noqa: BLE001 - any reader failure is the file's fault, not ours
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LigerSimError(
            f"cannot read as {suffix[1:]}: {msg}", file=str(path), field="workload.path"
        ) from None


def _numeric(df: pd.DataFrame, col: str, path: Path, integer: bool, minimum: float, line0: int) -> np.ndarray:
    """Column `col` as numbers, rejecting NaNs, text, fractions and values below `minimum`."""

    def fail(i: int, what: str) -> LigerSimError:
        where = f"row {i + 1}" + (f" (line {i + line0})" if line0 else "")
        return LigerSimError(f"{where}: {what}", file=str(path), field=col)

    raw = df[col]
    missing = np.flatnonzero(raw.isna().to_numpy())
    if missing.size:
        raise fail(int(missing[0]), "missing value (NaN/empty); every row needs one")
    try:
        vals = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        vals = np.full(len(raw), np.nan)
    bad = np.flatnonzero(~np.isfinite(vals))
    if bad.size:
        raise fail(int(bad[0]), f"{raw.iloc[bad[0]]!r} is not a finite number")
    if integer:
        frac = np.flatnonzero(vals != np.round(vals))
        if frac.size:
            raise fail(int(frac[0]), f"{float(vals[frac[0]])!r} is not an integer")
    low = np.flatnonzero(vals < minimum)
    if low.size:
        raise fail(int(low[0]), f"{vals[low[0]]:g} is below the allowed minimum {minimum:g}")
    return vals.astype(np.int64) if integer else vals


def _load_trace(cfg: TraceWorkload, base_dir: Path | None) -> list[Job]:
    path = _resolve(cfg.path, base_dir)
    df = _read(path)
    if cfg.format == "azure":
        names = {
            "arrival_s": "arrived_at",
            "prompt_tokens": "num_prefill_tokens",
            "output_tokens": "num_decode_tokens",
        }
        required = set(names)
    elif cfg.format == "ligersim":
        names = {c: c for c in JOB_COLUMNS}
        required = set(names)
    else:
        cols = cfg.columns or TraceColumns()
        names = cols.model_dump()
        required = {"arrival_s"} | cols.model_fields_set
    for key, col in names.items():
        if key in required and col not in df.columns:
            field = f"workload.columns.{key}" if cfg.format == "columns" else col
            raise LigerSimError(
                f"column {col!r} not in the file (format: {cfg.format}); columns present: {', '.join(map(str, df.columns))}",
                file=str(path),
                field=field,
            )
    present = {k: c for k, c in names.items() if c in df.columns}
    if cfg.jobs is not None:
        df = df.iloc[: cfg.jobs]
    if len(df) == 0:
        raise LigerSimError("trace has no rows; need at least one job", file=str(path), field="workload.path")

    line0 = 2 if path.suffix.lower() == ".csv" else 0  # data row 1 is line 2 after the header
    n = len(df)

    def col(key: str, integer: bool = True) -> np.ndarray | None:
        return (
            _numeric(df, present[key], path, integer, _SHAPE_MIN.get(key, 0), line0)
            if key in present
            else None
        )

    stamps = df[present["arrival_s"]]
    if pd.api.types.is_datetime64_any_dtype(stamps):  # timestamps (parquet): seconds since the first
        if stamps.isna().any():
            raise LigerSimError(f"row {int(np.flatnonzero(stamps.isna().to_numpy())[0]) + 1}: missing timestamp",
                                file=str(path), field=present["arrival_s"])
        t = (stamps - stamps.min()).dt.total_seconds().to_numpy(dtype=np.float64)
    else:
        t = col("arrival_s", integer=False) * _TIME_UNITS[cfg.time_unit]
    back = np.flatnonzero(np.diff(t) < 0)
    if back.size:
        i = int(back[0]) + 1
        where = f"row {i + 1}" + (f" (line {i + line0})" if line0 else "")
        raise LigerSimError(
            f"arrival times must be sorted ascending; {where} ({t[i]:g}) is earlier than the row before ({t[i - 1]:g})",
            file=str(path),
            field=present["arrival_s"],
        )
    ids = col("request_id")
    if ids is None:
        ids = np.arange(n)
    elif len(np.unique(ids)) != n:
        raise LigerSimError("request ids must be unique", file=str(path), field=present["request_id"])
    prompt, seq = col("prompt_tokens"), col("seq_len")
    if seq is None:
        seq = np.full(n, 128, dtype=np.int64) if prompt is None else prompt
        if seq.min() < 1:  # seq_len came from prompt tokens, which may be 0
            raise LigerSimError(
                f"row {int(np.argmin(seq)) + 1}: prompt tokens give seq_len, which must be >= 1",
                file=str(path),
                field=present["prompt_tokens"],
            )
    if prompt is None:
        prompt = seq
    batch, out = col("batch"), col("output_tokens")
    if cfg.batch is not None or batch is None:
        batch = np.full(n, cfg.batch or 1, dtype=np.int64)
    if cfg.seq_len is not None:
        seq = np.full(n, cfg.seq_len, dtype=np.int64)
    if out is None:
        out = np.zeros(n, dtype=np.int64)
    if cfg.rate is not None:
        span = t[-1] - t[0]
        if n < 2 or span <= 0:
            raise LigerSimError(
                "rate needs at least two jobs with different arrival times to time-scale",
                file=str(path),
                field="workload.rate",
            )
        t = t * (((n - 1) / span) / cfg.rate)
    return _jobs(ids, t, batch, seq, prompt, out)


# ---------------------------------------------------------------- writing traces


def jobs_frame(jobs: list[Job]) -> pd.DataFrame:
    """Jobs as a table in the `ligersim` trace layout (one row per job)."""
    df = pd.DataFrame([[getattr(j, c) for c in JOB_COLUMNS] for j in jobs], columns=list(JOB_COLUMNS))
    return df.astype({c: ("float64" if c == "arrival_s" else "int64") for c in JOB_COLUMNS})


def write_trace(jobs: list[Job], path: Path | str) -> Path:
    """Save jobs (CSV or Parquet by extension) so `format: ligersim` replays them exactly."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise LigerSimError(
            f"unknown trace extension {path.suffix!r}; allowed: .csv, .parquet, .pq", file=str(path)
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    df = jobs_frame(jobs)
    if suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return path
