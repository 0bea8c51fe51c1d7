"""Fit the simulator's α–β link model to real NCCL timings measured by Vidur's profiler.

The simulator prices collectives with (α = per-step latency in s, B = bus bandwidth in B/s)

    ring all-reduce of S bytes over n GPUs: T = 2(n-1)·α + 2(n-1)/n · S / B
    send/recv (P2P) of S bytes:             T = α + S / B

and this module finds α and B per topology, collective and group from the measured tables in
`profiles/nccl/`, and says how well one straight line fits them.

Units of the Vidur tables (checked against the data and the profiler's source, not assumed):

* time columns are **milliseconds** per collective: the profiler takes the median over 11
  calls of the `nccl*` kernel durations that the Kineto trace reports in µs, times 1e-3.
  Any other unit is absurd: in µs the 64 MB all-reduce on 8 H100s would move 365 TB/s; in
  seconds the smallest (2 KB) collective would take 7 ms instead of NCCL's ~7 µs.
* `size` is **bytes**, not fp16 elements: the profiler writes `size * 2  # bytes` for a
  buffer of `size` fp16 elements (its size grid starts at 1024 elements; the tables start at
  2048), and Vidur's own predictor divides `size` by 2·hidden bytes per token. Read as fp16
  elements, the data would imply an all-reduce bus bandwidth of 729 GB/s on 8 H100s and
  699 GB/s for an H100 send/recv, far above NVLink4's 450 GB/s per direction; read as bytes
  they are 365 GB/s and 350 GB/s (A100: 174 GB/s all-reduce, 281 GB/s send/recv, under
  NVLink3's 300 GB/s). One table breaks this: `a100_pairwise_nvlink_send_recv.csv` implies
  343 GB/s, above A100 NVLink3 — it is byte-identical to `h100_pairwise_nvlink_send_recv.csv`,
  so it is H100 data shipped under the A100 name (`fit_all` flags it).

How the fit works: least squares on the *relative* error (residuals divided by the measured
time, i.e. weights 1/T²) over every measured size, so the 2 KB points (µs) count as much as
the 64 MB points (ms); α ≥ 0 is enforced by refitting B alone when the free fit gives α < 0.
One line cannot follow NCCL's switch from the LL/LL128 protocols (small messages) to Simple
(large ones), nor its chunking sawtooth, so errors are reported overall and separately for
messages under and over 1 MiB (`SMALL_BYTES`).

Across nodes (`fit_multinode`): the groups of a DGX table that span two nodes are scored with
the simulator's own `multinode` link model (`sim.links`), each group placed as Vidur's profiler
placed it (local GPUs 0..k-1 of each node, microsoft/vidur
`vidur/profiling/collectives/benchmark_runner.py`, `_get_rank`: "pack devices in order"). Inside
a node it takes the 8-GPU single-node fit; it fits the NIC bandwidth and the network step latency
to every 2-node group at once (the same relative least squares) for each possible count of NICs
per node, and keeps the count that fits best.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from sim.errors import LigerSimError
from sim.links import build_topology

COLLECTIVES = ("all_reduce", "send_recv")
# NVLink peak per GPU per direction, bytes/s: the ceiling any measured bus bandwidth must obey.
LINK_PEAK_BPS = {"h100": 450e9, "a100": 300e9}
TIME_UNIT_S = 1e-3  # the tables' time columns are milliseconds (see module docstring)
SMALL_BYTES = 1 << 20  # below this NCCL mostly runs the LL/LL128 protocols
BAD_FIT_MEDIAN = 0.15  # a group whose median relative error exceeds this gets a warning
STATS = ("min", "max", "mean", "median", "std")
_NAME = re.compile(r"^(?P<topology>.+)_(?P<collective>all_reduce|send_recv)$")


@dataclass(frozen=True, slots=True)
class FitResult:
    """α–β parameters of one (collective, group) and how far the line is from the data."""

    collective: str
    n: int
    alpha_s: float
    bandwidth_Bps: float
    median_rel_err: float
    p90_rel_err: float
    max_rel_err: float
    points: int
    devices_per_node: int
    small_median_rel_err: float  # messages < SMALL_BYTES (NaN if none)
    large_median_rel_err: float  # messages >= SMALL_BYTES (NaN if none)
    min_bytes: int
    max_bytes: int


def _model_terms(collective: str, n: int) -> tuple[float, float]:
    """(latency steps, bytes-on-the-wire factor) of a collective: T = steps·α + factor·S/B."""
    if collective == "all_reduce":
        return 2.0 * (n - 1), 2.0 * (n - 1) / n
    if collective == "send_recv":
        return 1.0, 1.0
    raise LigerSimError(
        f"unknown collective {collective!r}, expected one of {COLLECTIVES}", field="collective"
    )


def predict(
    collective: str, n: int, nbytes: float | np.ndarray, alpha_s: float, bandwidth_Bps: float
) -> float | np.ndarray:
    """Seconds the simulator's α–β model gives a collective of `nbytes` over `n` GPUs."""
    steps, factor = _model_terms(collective, n)
    return steps * alpha_s + factor * np.asarray(nbytes, dtype=float) / bandwidth_Bps


def bus_bandwidth(
    collective: str, n: int, nbytes: float | np.ndarray, time_s: float | np.ndarray
) -> float | np.ndarray:
    """Bus bandwidth (B/s) a measurement implies, nccl-tests' convention: comparable to link peak."""
    _, factor = _model_terms(collective, n)
    return factor * np.asarray(nbytes, dtype=float) / np.asarray(time_s, dtype=float)


def link_peak_Bps(topology: str | None) -> float | None:
    """NVLink per-direction peak of the GPU a topology name starts with, if known."""
    gpu = (topology or "").split("_")[0].lower()
    return LINK_PEAK_BPS.get(gpu)


def load_nccl_table(path: str | Path) -> pd.DataFrame:
    """One Vidur collective table, normalised to SI units and one row per measurement.

    Columns: topology (from the file name `<topology>_<collective>.csv`, else None),
    collective, n, devices_per_node, nodes, bytes, time_s (median), time_min_s, time_max_s,
    time_mean_s, time_std_s; sorted by group and size.
    """
    path = Path(path)
    if not path.is_file():
        raise LigerSimError("NCCL table not found", file=str(path))
    try:
        raw = pd.read_csv(path, index_col=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise LigerSimError(f"not a readable CSV table ({e})", file=str(path)) from None
    m = _NAME.match(path.stem)
    for col in ("collective", "num_workers", "size", "devices_per_node"):
        if col not in raw.columns:
            raise LigerSimError("missing column", file=str(path), field=col)
    kinds = raw["collective"].dropna().unique()
    if len(kinds) != 1 or kinds[0] not in COLLECTIVES:
        raise LigerSimError(
            f"expected one collective out of {COLLECTIVES}, found {sorted(map(str, kinds))}",
            file=str(path),
            field="collective",
        )
    collective = str(kinds[0])
    if m and m["collective"] != collective:
        raise LigerSimError(
            f"file name says {m['collective']} but rows say {collective}", file=str(path), field="collective"
        )
    time_cols = {s: f"time_stats.{collective}.{s}" for s in STATS}
    for col in time_cols.values():
        if col not in raw.columns:
            raise LigerSimError("missing column", file=str(path), field=col)
    numeric = ["num_workers", "size", "devices_per_node", *time_cols.values()]
    values = raw[numeric].apply(pd.to_numeric, errors="coerce")
    for col in numeric:
        bad = values[col].isna() | (values[col] < 0) | ((values[col] == 0) & (col != time_cols["std"]))
        if bad.any():
            row = raw.index[bad.to_numpy()][0]
            raise LigerSimError(
                f"row {row}: expected a positive number, got {raw.at[row, col]!r}", file=str(path), field=col
            )
    n = values["num_workers"].astype(int)
    dpn = values["devices_per_node"].astype(int)
    df = pd.DataFrame(
        {
            "topology": m["topology"] if m else None,
            "collective": collective,
            "n": n,
            "devices_per_node": dpn,
            "nodes": np.maximum(1, n // dpn),
            "bytes": values["size"].astype(np.int64),  # already bytes, see module docstring
            "time_s": values[time_cols["median"]] * TIME_UNIT_S,
            **{f"time_{s}_s": values[time_cols[s]] * TIME_UNIT_S for s in ("min", "max", "mean", "std")},
        }
    )
    if (df["n"] < 2).any():
        raise LigerSimError("a collective needs at least 2 GPUs", file=str(path), field="num_workers")
    return df.sort_values(["n", "devices_per_node", "bytes"], kind="stable").reset_index(drop=True)


def fit_alpha_beta(df: pd.DataFrame, min_bytes: int = 0) -> FitResult:
    """Fit α ≥ 0 and B > 0 to one (collective, n, devices_per_node) group, minimising relative error.

    `df` has columns collective, n, bytes, time_s (devices_per_node optional, default n).
    Only sizes ≥ `min_bytes` are fitted and scored. Relative residuals (weights 1/T²) keep
    the µs-scale small messages from being drowned by the ms-scale large ones.
    """
    for col in ("collective", "n", "bytes", "time_s"):
        if col not in df.columns:
            raise LigerSimError("missing column", field=col)
    if "devices_per_node" not in df.columns:
        df = df.assign(devices_per_node=df["n"])
    keys = df[["collective", "n", "devices_per_node"]].drop_duplicates()
    if len(keys) != 1:
        raise LigerSimError(
            f"fit one group at a time, got {len(keys)} (collective, n, devices_per_node) groups"
        )
    collective, n, dpn = keys.iloc[0]
    n, dpn = int(n), int(dpn)
    data = df[df["bytes"] >= min_bytes]
    size = data["bytes"].to_numpy(dtype=float)
    t = data["time_s"].to_numpy(dtype=float)
    where = f"{collective} n={n} devices_per_node={dpn}"
    if np.unique(size).size < 2:
        raise LigerSimError(f"{where}: need at least 2 distinct sizes ≥ {min_bytes} bytes to fit a line")
    if not (np.isfinite(t).all() and (t > 0).all()):
        raise LigerSimError(f"{where}: times must be positive", field="time_s")
    steps, factor = _model_terms(collective, n)
    volume = factor * size  # T = intercept + volume / B
    design = np.column_stack([1.0 / t, volume / t])  # rows divided by T: relative residuals
    (intercept, inv_bw), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    if intercept < 0:  # latency cannot be negative: best pure-bandwidth line instead
        intercept = 0.0
        x = volume / t
        inv_bw = float(x.sum() / (x @ x))
    if inv_bw <= 0:
        raise LigerSimError(f"{where}: time does not grow with size, no bandwidth can be fitted")
    alpha, bw = intercept / steps, 1.0 / inv_bw
    rel = np.abs(predict(collective, n, size, alpha, bw) - t) / t
    small = size < SMALL_BYTES
    return FitResult(
        collective=str(collective),
        n=n,
        alpha_s=float(alpha),
        bandwidth_Bps=float(bw),
        median_rel_err=float(np.median(rel)),
        p90_rel_err=float(np.quantile(rel, 0.9)),
        max_rel_err=float(rel.max()),
        points=int(rel.size),
        devices_per_node=dpn,
        small_median_rel_err=float(np.median(rel[small])) if small.any() else float("nan"),
        large_median_rel_err=float(np.median(rel[~small])) if (~small).any() else float("nan"),
        min_bytes=int(size.min()),
        max_bytes=int(size.max()),
    )


def profiled_group(devices_per_node: int, gpus_per_node: int) -> tuple[int, ...]:
    """The GPUs of a 2-node group as Vidur's profiler picks them: local GPUs 0..k-1 of each node."""
    return (*range(devices_per_node), *range(gpus_per_node, gpus_per_node + devices_per_node))


def multinode_times(spec: dict, table: pd.DataFrame) -> np.ndarray:
    """Seconds `sim.links` gives each row of a 2-node table on the `multinode` interconnect `spec`."""
    per = int(spec["gpus_per_node"])
    if (table["nodes"] != 2).any() or (table["devices_per_node"] > per).any():
        raise LigerSimError(f"expected groups over 2 nodes of at most {per} GPUs each", field="nodes")
    topo = build_topology(spec, 2 * per)
    return np.array([
        topo.collective_time("all_reduce" if c == "all_reduce" else "send", profiled_group(int(k), per), float(b))
        for c, k, b in zip(table["collective"], table["devices_per_node"], table["bytes"], strict=True)
    ])


@dataclass(frozen=True, slots=True)
class MultinodeFit:
    """A `multinode` interconnect fitted to the 2-node groups of one topology, and its errors."""

    topology: str
    gpus_per_node: int
    nics_per_node: int
    nics_determined: bool  # False: every group had one GPU per node, so any NIC count fits alike
    nic_bw_Bps: float
    net_step_latency_s: float
    link_bw_Bps: float  # inside a node: the single-node fit of gpus_per_node GPUs
    step_latency_s: float
    median_rel_err: float
    p90_rel_err: float
    candidates: dict[int, float]  # median relative error of the best fit for each NIC count
    groups: list[dict]  # per (collective, n, devices_per_node): errors and median predicted/measured

    def spec(self) -> dict:
        """The fit as a `multinode` interconnect spec (`sim.links.build_topology`'s input)."""
        return dict(kind="multinode", link_bw=self.link_bw_Bps, gpus_per_node=self.gpus_per_node,
                    nics_per_node=self.nics_per_node, nic_bw=self.nic_bw_Bps,
                    net_step_latency_s=self.net_step_latency_s, step_latency_s=self.step_latency_s,
                    base_latency_s=0.0)


def fit_multinode(table: pd.DataFrame, link_bw_Bps: float, step_latency_s: float, gpus_per_node: int) -> MultinodeFit:
    """Fit nic_bw and net_step_latency_s of a `multinode` interconnect to a topology's 2-node rows
    (`load_nccl_table` rows with nodes == 2, both collectives), for each NIC count that divides
    `gpus_per_node`, and keep the one with the least median relative error (ties: more NICs).

    The model's time is linear in (net step, 1/nic_bw) while the NICs are the bottleneck, so its
    coefficients are read off `sim.links` itself (a 1 B/s NIC, unit latencies) and fitted by least
    squares on relative error; the errors are then those of the real model at the fitted values.
    """
    table = table[table["nodes"] == 2]
    if table.empty:
        raise LigerSimError("no groups over 2 nodes to fit", field="nodes")
    topology = str(table["topology"].iloc[0])
    t = table["time_s"].to_numpy(dtype=float)
    best: MultinodeFit | None = None
    candidates: dict[int, float] = {}
    for nics in sorted((d for d in range(1, gpus_per_node + 1) if gpus_per_node % d == 0), reverse=True):
        probe = dict(kind="multinode", link_bw=link_bw_Bps, gpus_per_node=gpus_per_node, nics_per_node=nics,
                     nic_bw=1.0, net_step_latency_s=0.0, step_latency_s=step_latency_s, base_latency_s=0.0)
        zero = table.assign(bytes=0)
        fixed = multinode_times(probe, zero)
        per_net = multinode_times({**probe, "net_step_latency_s": 1.0}, zero) - fixed
        per_inv_bw = multinode_times(probe, table) - fixed
        (net, inv_bw), *_ = np.linalg.lstsq(np.column_stack([per_net / t, per_inv_bw / t]), (t - fixed) / t,
                                            rcond=None)
        if net < 0:  # latency cannot be negative: best pure-bandwidth line instead
            net, x = 0.0, per_inv_bw / t
            inv_bw = float(x @ ((t - fixed) / t) / (x @ x))
        if inv_bw <= 0:
            raise LigerSimError(f"{topology}: time does not grow with size, no NIC bandwidth can be fitted")
        fit_spec = {**probe, "nic_bw": 1.0 / inv_bw, "net_step_latency_s": float(net)}
        pred = multinode_times(fit_spec, table)
        rel = np.abs(pred - t) / t
        candidates[nics] = float(np.median(rel))
        if best is None or candidates[nics] < best.median_rel_err * (1 - 1e-9):
            groups = []
            for (collective, n, k), idx in table.groupby(["collective", "n", "devices_per_node"], sort=True).groups.items():
                i = table.index.get_indexer(idx)
                small = table["bytes"].to_numpy()[i] < SMALL_BYTES
                ratio = pred[i] / t[i]
                groups.append(dict(
                    collective=str(collective), n=int(n), devices_per_node=int(k),
                    median_rel_err=float(np.median(rel[i])), p90_rel_err=float(np.quantile(rel[i], 0.9)),
                    small_median_rel_err=float(np.median(rel[i][small])) if small.any() else float("nan"),
                    large_median_rel_err=float(np.median(rel[i][~small])) if (~small).any() else float("nan"),
                    median_ratio=float(np.median(ratio)),
                ))
            best = MultinodeFit(
                topology=topology, gpus_per_node=gpus_per_node, nics_per_node=nics,
                nics_determined=bool((table["devices_per_node"] > 1).any()), nic_bw_Bps=1.0 / float(inv_bw),
                net_step_latency_s=float(net), link_bw_Bps=link_bw_Bps, step_latency_s=step_latency_s,
                median_rel_err=candidates[nics], p90_rel_err=float(np.quantile(rel, 0.9)), candidates={},
                groups=groups,
            )
    assert best is not None
    return MultinodeFit(**{**asdict(best), "candidates": candidates})


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fit_all(directory: str | Path, min_bytes: int = 0) -> pd.DataFrame:
    """Fit every `<topology>_<collective>.csv` in `directory`: one row per topology and group.

    Besides the fit, each row has the largest bus bandwidth measured (`max_busbw_GBps`),
    the link peak, and `warnings` for what makes the row suspect (bad fit, data above the
    link peak, a table identical to another one).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise LigerSimError("directory of NCCL tables not found", file=str(directory))
    paths = sorted(p for p in directory.glob("*.csv") if _NAME.match(p.stem))
    if not paths:
        raise LigerSimError("no <topology>_{all_reduce,send_recv}.csv tables", file=str(directory))
    digests = {p: _digest(p) for p in paths}
    rows = []
    for path in paths:
        table = load_nccl_table(path)
        twins = [q.name for q in paths if q != path and digests[q] == digests[path]]
        for _, group in table.groupby(["n", "devices_per_node"], sort=True):
            fit = fit_alpha_beta(group, min_bytes=min_bytes)
            topology = str(group["topology"].iloc[0])
            peak = link_peak_Bps(topology)
            busbw = float(bus_bandwidth(fit.collective, fit.n, group["bytes"], group["time_s"]).max())
            warnings = []
            if fit.median_rel_err > BAD_FIT_MEDIAN:
                warnings.append(f"alpha-beta fits poorly: median relative error {fit.median_rel_err:.0%}")
            if peak is not None and busbw > peak:
                warnings.append(
                    f"measured bus bandwidth {busbw / 1e9:.0f} GB/s exceeds the {peak / 1e9:.0f} GB/s link peak"
                )
            if peak is not None and fit.bandwidth_Bps > peak:
                warnings.append(
                    f"fitted bandwidth {fit.bandwidth_Bps / 1e9:.0f} GB/s exceeds the {peak / 1e9:.0f} GB/s link peak"
                )
            if twins:
                warnings.append(f"source file is byte-identical to {', '.join(twins)}")
            row = {"topology": topology, **asdict(fit)}
            row["nodes"] = max(1, fit.n // fit.devices_per_node)
            row["bandwidth_GBps"] = fit.bandwidth_Bps / 1e9
            row["max_busbw_GBps"] = busbw / 1e9
            row["link_peak_GBps"] = peak / 1e9 if peak is not None else float("nan")
            row["source"] = path.name
            row["warnings"] = warnings
            rows.append(row)
    cols = [
        "topology",
        "collective",
        "n",
        "nodes",
        "devices_per_node",
        "alpha_s",
        "bandwidth_GBps",
        "median_rel_err",
        "p90_rel_err",
        "max_rel_err",
        "small_median_rel_err",
        "large_median_rel_err",
        "points",
        "min_bytes",
        "max_bytes",
        "max_busbw_GBps",
        "link_peak_GBps",
        "source",
        "warnings",
    ]
    return pd.DataFrame(rows)[cols]


def _sig(x: float, digits: int = 4) -> float | None:
    """Round to significant digits for a readable YAML; NaN becomes null."""
    return None if not np.isfinite(x) else float(f"{x:.{digits}g}")


def multinode_document(fit: MultinodeFit) -> dict:
    """One topology's `multinode` entry of `profiles/links.yaml` (read by `sim.presets`)."""
    return {
        "gpus_per_node": fit.gpus_per_node,
        "nics_per_node": fit.nics_per_node,
        "nics_per_node_determined": fit.nics_determined,
        "nic_bw_GBps": _sig(fit.nic_bw_Bps / 1e9),
        "net_step_latency_s": _sig(fit.net_step_latency_s),
        "link_bw_GBps": _sig(fit.link_bw_Bps / 1e9),
        "step_latency_s": _sig(fit.step_latency_s),
        "median_rel_err": _sig(fit.median_rel_err, 3),
        "p90_rel_err": _sig(fit.p90_rel_err, 3),
        "median_rel_err_by_nics_per_node": {k: _sig(v, 3) for k, v in fit.candidates.items()},
        "groups": [{k: _sig(v, 3) if isinstance(v, float) else v for k, v in g.items()} for g in fit.groups],
    }


def fit_multinode_tables(directory: str | Path, fits: pd.DataFrame) -> dict[str, MultinodeFit]:
    """`fit_multinode` for every NVSwitch (`*_dgx`) topology with 2-node groups in `directory`,
    inside a node the all-reduce fit of its largest single-node group (as `sim.presets` uses it)."""
    out = {}
    for topology, rows in fits.groupby("topology", sort=False):
        single = rows[(rows["collective"] == "all_reduce") & (rows["nodes"] == 1)]
        if not str(topology).endswith("_dgx") or single.empty or not (rows["nodes"] == 2).any():
            continue
        inside = single.loc[single["n"].idxmax()]
        table = pd.concat([load_nccl_table(Path(directory) / name) for name in sorted(rows["source"].unique())],
                          ignore_index=True)
        out[str(topology)] = fit_multinode(table, float(inside["bandwidth_GBps"]) * 1e9, float(inside["alpha_s"]),
                                           int(inside["n"]))
    return out


def links_document(fits: pd.DataFrame, directory: str | Path, min_bytes: int = 0) -> dict:
    """The `profiles/links.yaml` content: provenance header, then per topology and collective the groups."""
    doc: dict = {
        "generated": datetime.date.today().isoformat(),
        "generator": "python -m sim.linkfit",
        "source": {
            "directory": str(directory),
            "files": sorted(fits["source"].unique().tolist()),
            "provenance": "Vidur profiler NCCL timings, see profiles/nccl/README.md",
            "units": "time columns ms, size column bytes (checked: sim/linkfit.py docstring, profiles/nccl/README.md)",
        },
        "model": {
            "all_reduce": "T = 2(n-1)*alpha_s + 2(n-1)/n * bytes / (bandwidth_GBps*1e9)",
            "send_recv": "T = alpha_s + bytes / (bandwidth_GBps*1e9)",
        },
        "fit": (
            f"least squares on relative error (weights 1/T^2), alpha_s >= 0, sizes >= {min_bytes} bytes; "
            f"errors are |pred-meas|/meas of the median time over all fitted sizes, "
            f"small/large split at {SMALL_BYTES} bytes"
        ),
        "topologies": {},
    }
    for topology, by_topo in fits.groupby("topology", sort=False):
        entry: dict = {"link_peak_GBps": _sig(by_topo["link_peak_GBps"].iloc[0])}
        for collective, rows in by_topo.groupby("collective", sort=False):
            entry[collective] = [
                {
                    "n": int(r.n),
                    "nodes": int(r.nodes),
                    "devices_per_node": int(r.devices_per_node),
                    "alpha_s": _sig(r.alpha_s),
                    "bandwidth_GBps": _sig(r.bandwidth_GBps),
                    "median_rel_err": _sig(r.median_rel_err, 3),
                    "p90_rel_err": _sig(r.p90_rel_err, 3),
                    "max_rel_err": _sig(r.max_rel_err, 3),
                    "small_median_rel_err": _sig(r.small_median_rel_err, 3),
                    "large_median_rel_err": _sig(r.large_median_rel_err, 3),
                    "points": int(r.points),
                    "bytes_range": [int(r.min_bytes), int(r.max_bytes)],
                    "max_busbw_GBps": _sig(r.max_busbw_GBps),
                    **({"warnings": list(r.warnings)} if r.warnings else {}),
                }
                for r in rows.itertuples()
            ]
        doc["topologies"][topology] = entry
    multinode = fit_multinode_tables(directory, fits)
    if multinode:
        doc["multinode"] = {
            "model": (
                "sim.links multinode kind: inside a node the largest single-node all-reduce fit (link_bw, "
                "step_latency_s, base 0); nic_bw and net_step_latency_s fitted to every 2-node group at once "
                "(relative least squares, all sizes) for each nics_per_node dividing gpus_per_node, the best kept; "
                "groups placed as the profiler placed them (local GPUs 0..k-1 of each node); median_ratio is "
                "predicted/measured time"
            ),
            "topologies": {t: multinode_document(f) for t, f in multinode.items()},
        }
    return doc


def _order(fits: pd.DataFrame) -> pd.DataFrame:
    """DGX before pairwise, H100 before A100: the order people look for them."""
    rank = {
        t: i for i, t in enumerate(("h100_dgx", "a100_dgx", "h100_pairwise_nvlink", "a100_pairwise_nvlink"))
    }
    key = fits["topology"].map(lambda t: rank.get(t, len(rank)))
    return (
        fits.assign(_k=key)
        .sort_values(["_k", "topology", "collective", "nodes", "n"], kind="stable")
        .drop(columns="_k")
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m sim.linkfit [DIR] -o profiles/links.yaml`: fit every table and write the YAML."""
    ap = argparse.ArgumentParser(prog="python -m sim.linkfit", description=__doc__.splitlines()[0])
    ap.add_argument(
        "directory", nargs="?", default="profiles/nccl", help="folder of <topology>_<collective>.csv"
    )
    ap.add_argument("-o", "--output", default="profiles/links.yaml", help="YAML file to write")
    ap.add_argument("--min-bytes", type=int, default=0, help="fit only message sizes >= this")
    args = ap.parse_args(argv)
    try:
        fits = _order(fit_all(args.directory, min_bytes=args.min_bytes))
    except LigerSimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    doc = links_document(fits, args.directory, args.min_bytes)
    header = (
        "# α–β link parameters fitted to measured NCCL timings; do not edit by hand.\n"
        f"# Regenerate: python -m sim.linkfit {args.directory} -o {args.output}\n"
        f"# Sources: {', '.join(doc['source']['files'])} (in {args.directory})\n"
        f"# Generated: {doc['generated']}\n"
    )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=110))
    show = fits.assign(alpha_us=fits["alpha_s"] * 1e6)[
        [
            "topology",
            "collective",
            "n",
            "nodes",
            "alpha_us",
            "bandwidth_GBps",
            "median_rel_err",
            "p90_rel_err",
            "small_median_rel_err",
            "large_median_rel_err",
            "max_busbw_GBps",
        ]
    ]
    print(show.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    for topology, entry in doc.get("multinode", {}).get("topologies", {}).items():
        print(f"{topology} across 2 nodes: {entry['nics_per_node']} NICs per node of {entry['nic_bw_GBps']} GB/s, "
              f"network step {entry['net_step_latency_s'] * 1e6:.3g} us, median error {entry['median_rel_err']:.0%}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
