"""Plots shared by the CLI and the notebooks (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

POLICY_STYLE = {"intra_op": "C0", "in_order": "C0", "inter_op": "C1", "interleaved": "C3", "hybrid": "C2"}


def plot_curve(curve: pd.DataFrame, path: Path, title: str, jpc: pd.DataFrame | None = None) -> Path:
    """Mean JCT against achieved throughput, one line per policy; JPC marked if given."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    spare = iter(f"C{i}" for i in (4, 5, 6, 7, 8, 9))  # hybrids of several degrees: colours of their own
    for policy, g in curve.groupby("policy", sort=False):
        g = g.sort_values("offered_rate")
        color = POLICY_STYLE.get(policy) or next(spare, "k")
        ax.plot(g["achieved_rate"], g["jct_mean_s"] * 1e3, "o-", ms=3.5, color=color, label=policy)
        if jpc is not None:
            row = jpc[jpc["policy"] == policy]
            if len(row) and pd.notna(row["jpc_jobs_s"].iloc[0]):
                ax.axvline(row["jpc_jobs_s"].iloc[0], color=color, ls=":", lw=1)
    ax.set_xlabel("achieved throughput (jobs/s)")
    ax.set_ylabel("mean JCT (ms)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="policy (dotted: JPC)", fontsize=8, title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


CLASS_COLOR = {"compute": "#4C72B0", "memory": "#55A868", "collective": "#C44E52", "copy": "#8172B2"}


def plot_timeline(events: pd.DataFrame, path: Path, title: str, ranks: list[int] | None = None,
                  window: tuple[float, float] | None = None, requests: list[int] | None = None,
                  ax=None) -> Path:
    """Gantt chart: one row per rank × stream, kernels coloured by class; split GEMM (or
    all-reduce) pieces hatched. Times in milliseconds."""
    ev = events
    if ranks is not None:
        ev = ev[ev["rank"].isin(ranks)]
    if requests is not None:
        ev = ev[ev["request_id"].isin(requests)]
    if window is not None:
        ev = ev[(ev["end_s"] >= window[0]) & (ev["start_s"] <= window[1])]
    tracks = sorted({(int(r), int(s)) for r, s in zip(ev["rank"], ev["stream"])})
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(10, 0.55 * len(tracks) + 1.4), dpi=120)
    for y, (r, s) in enumerate(tracks):
        t = ev[(ev["rank"] == r) & (ev["stream"] == s)]
        for cls, g in t.groupby("cls"):
            spans = list(zip(g["start_s"] * 1e3, (g["end_s"] - g["start_s"]) * 1e3))
            ax.broken_barh(spans, (y - 0.4, 0.8), facecolors=CLASS_COLOR.get(cls, "grey"), edgecolor="white",
                           linewidth=0.3)
        split = t[t["fraction"] < 1]
        if len(split):
            ax.broken_barh(list(zip(split["start_s"] * 1e3, (split["end_s"] - split["start_s"]) * 1e3)),
                           (y - 0.4, 0.8), facecolors="none", edgecolor="black", hatch="///", linewidth=0.3)
    ax.set_yticks(range(len(tracks)), [f"rank {r} / stream {s}" for r, s in tracks], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time (ms)")
    if window is not None:
        ax.set_xlim(window[0] * 1e3, window[1] * 1e3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in CLASS_COLOR.values()]
    handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="none", edgecolor="black", hatch="///"))
    ax.legend(handles, [*CLASS_COLOR, "split piece"], fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5),
              frameon=False)
    ax.set_title(title, fontsize=10, loc="left")
    if own:
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return path


# ----------------------------------------------------------------------------- notebooks' figures
# Each takes tidy DataFrames (so measured and simulated data plot alike), writes `path` and returns it.


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_jpc_bars(jpc: pd.DataFrame, path: Path, title: str) -> Path:
    """JPC per policy as solid bars, the saturation throughput (`capacity_jobs_s`) as a hollow bar
    behind each; grouped by the optional `setup` column. A policy that sustained no swept rate (JPC
    NaN) is marked 'none sustained'."""
    df = jpc.copy()
    if "setup" not in df.columns:
        df["setup"] = ""
    setups = list(dict.fromkeys(df["setup"]))
    policies = list(dict.fromkeys(df["policy"]))
    width = 0.8 / max(1, len(policies))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.9 * len(setups) + 2.5), 4.0), dpi=120)
    for i, policy in enumerate(policies):
        color = POLICY_STYLE.get(policy)
        for j, setup in enumerate(setups):
            row = df[(df["setup"] == setup) & (df["policy"] == policy)]
            if not len(row):
                continue
            x = j + (i - (len(policies) - 1) / 2) * width
            cap = row["capacity_jobs_s"].iloc[0] if "capacity_jobs_s" in row else float("nan")
            val = row["jpc_jobs_s"].iloc[0]
            if pd.notna(cap):
                ax.bar(x, cap, width * 0.92, facecolor="none", edgecolor=color, linewidth=1.0)
            if pd.notna(val):
                ax.bar(x, val, width * 0.92, color=color, label=policy if j == 0 else None)
                top = max(val, cap) if pd.notna(cap) else val
                ax.annotate(f"{val:.0f}", (x, top), ha="center", va="bottom", fontsize=7)
            else:
                ax.bar(x, 0, width * 0.92, color=color, label=policy if j == 0 else None)
                ax.annotate("none\nsustained", (x, 0), ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(setups)), setups, fontsize=8)
    ax.set_ylabel("jobs/s")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(title="JPC (hollow: capacity)", fontsize=8, title_fontsize=8)
    return _save(fig, path)


def plot_contention_heatmap(pairs, path: Path, title: str) -> Path:
    """Slowdown of a victim kernel class (rows) while a kernel of another class (columns) runs
    beside it; one panel per stream-priority relation present (`any`, `higher`, `lower`, ...).
    `pairs`: a DataFrame or list of dicts with victim, other, slowdown[, priority]; several rows
    for one cell (e.g. measured at several sizes) are summarised by their median; of a table with
    per-launch-order entries (`first`), the entries over both orders are shown. Cells with no
    entry mean no slowdown (1.0) and are left blank."""
    import itertools

    from sim.kernels import KERNEL_CLASSES

    df = pd.DataFrame(pairs)
    if "first" in df.columns and df["first"].isna().any():  # a table: its entries over both launch orders
        df = df[df["first"].isna()]
    if df.empty:
        df = pd.DataFrame(columns=["victim", "other", "slowdown", "priority"])
    if "priority" not in df.columns:
        df["priority"] = "any"
    df["priority"] = df["priority"].fillna("any").astype(str)
    # the simulator's classes, with calibration's finer ones (gemm, attention) beside compute
    order = ["compute", "gemm", "attention", *KERNEL_CLASSES[1:]]
    present = set(df["victim"]) | set(df["other"])
    classes = [c for c in order if c in present] + sorted(present - set(order))
    classes = classes or list(KERNEL_CLASSES)
    relations = list(dict.fromkeys(df["priority"])) or ["any"]
    vmax = max(2.0, float(df["slowdown"].max()) if len(df) else 2.0)
    fig, axes = plt.subplots(1, len(relations), figsize=(4.0 * len(relations) + 1.2, 3.8), dpi=120,
                             squeeze=False)
    image = None
    for ax, rel in zip(axes[0], relations):
        grid = (df[df["priority"] == rel].groupby(["victim", "other"])["slowdown"].median()
                .unstack().reindex(index=classes, columns=classes))
        image = ax.imshow(grid.to_numpy(float), cmap="Reds", vmin=1.0, vmax=vmax)
        values = grid.to_numpy(float)
        for i, j in itertools.product(range(values.shape[0]), range(values.shape[1])):
            v = values[i, j]
            if v != v:  # NaN: no entry, no slowdown
                continue
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if v > 1 + 0.6 * (vmax - 1) else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_xlabel("beside (other)")
        if ax is axes[0][0]:
            ax.set_ylabel("victim")
        ax.set_title(f"victim's stream priority: {rel}" if len(relations) > 1 or rel != "any" else "", fontsize=9)
        ax.text(0.0, -0.32, "blank: no entry (no slowdown)", transform=ax.transAxes, fontsize=7, color="grey")
    fig.colorbar(image, ax=axes[0].tolist(), label="slowdown (x)", shrink=0.85)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def plot_gemm_efficiency(gemms: pd.DataFrame, path: Path, title: str, x: str = "flops",
                         xlabel: str = "GEMM size (FLOPs = 2mnk)") -> Path:
    """Achieved FLOP/s of GEMMs against size, one line per `label`, the label's peak dashed.
    Columns: label, `x`, flops, time_s[, peak_flops][, measured (bool: markers only)]."""
    fig, ax = plt.subplots(figsize=(6.6, 4.2), dpi=120)
    for i, (label, g) in enumerate(gemms.groupby("label", sort=False)):
        g = g.sort_values(x)
        color = f"C{i % 10}"
        achieved = g["flops"] / g["time_s"] / 1e12
        measured = bool(g["measured"].any()) if "measured" in g else False
        ax.plot(g[x], achieved, "o" if measured else "-", ms=3.5, color=color, label=label)
        if "peak_flops" in g and pd.notna(g["peak_flops"].iloc[0]):
            ax.axhline(g["peak_flops"].iloc[0] / 1e12, color=color, ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("achieved TFLOP/s (dashed: peak)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_link_fit(measured: pd.DataFrame, fits: pd.DataFrame, path: Path, title: str,
                  link_peak_GBps: float | None = None) -> Path:
    """Measured NCCL times (points) against the fitted α–β line, and the bus bandwidth both imply,
    per (collective, GPUs[, GPUs per node]). `measured`: collective, n, bytes, time_s; `fits`:
    collective, n, alpha_s, bandwidth_GBps; both optionally devices_per_node."""
    import numpy as np

    from sim.linkfit import bus_bandwidth, predict

    keys = ["collective", "n"] + (["devices_per_node"] if "devices_per_node" in fits and
                                  "devices_per_node" in measured else [])
    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(11, 4.0), dpi=120)
    for i, key in enumerate(fits[keys].drop_duplicates().itertuples(index=False)):
        color = f"C{i % 10}"
        coll, n = key[0], int(key[1])
        m = measured[(measured[keys] == list(key)).all(axis=1)]
        f = fits[(fits[keys] == list(key)).all(axis=1)].iloc[0]
        label = f"{coll} n={n}" + (f" ({int(key[2])}/node)" if len(key) > 2 and int(key[2]) < n else "")
        if len(m):
            med = m.groupby("bytes")["time_s"].median()
            ax_t.plot(med.index, med.to_numpy() * 1e6, ".", ms=3, color=color, alpha=0.6)
            ax_b.plot(med.index, bus_bandwidth(coll, n, med.index, med.to_numpy()) / 1e9, ".", ms=3,
                      color=color, alpha=0.6)
            lo, hi = med.index.min(), med.index.max()
        else:
            lo, hi = 2e3, 6.4e7
        sizes = np.geomspace(lo, hi, 100)
        t = predict(coll, n, sizes, f["alpha_s"], f["bandwidth_GBps"] * 1e9)
        ax_t.plot(sizes, t * 1e6, "-", color=color, lw=1.2,
                  label=f"{label}: α={f['alpha_s'] * 1e6:.1f} µs, B={f['bandwidth_GBps']:.0f} GB/s")
        ax_b.plot(sizes, bus_bandwidth(coll, n, sizes, t) / 1e9, "-", color=color, lw=1.2, label=label)
    if link_peak_GBps is not None and np.isfinite(link_peak_GBps):
        ax_b.axhline(link_peak_GBps, color="black", ls="--", lw=0.8, label="link peak")
    for ax in (ax_t, ax_b):
        ax.set_xscale("log")
        ax.set_xlabel("message size (bytes)")
        ax.grid(alpha=0.3, which="both")
    ax_t.set_yscale("log")
    ax_t.set_ylabel("time (µs; points measured, lines fitted)")
    ax_b.set_ylabel("bus bandwidth (GB/s)")
    ax_t.legend(fontsize=6)
    ax_b.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_predicted_vs_measured(df: pd.DataFrame, path: Path, title: str, predicted: str = "predicted_s",
                               measured: str = "measured_s", by: str | None = None, band: float = 0.05,
                               unit: str = "s") -> Path:
    """Predicted against measured (log-log), the diagonal and a ±`band` relative-error band;
    coloured by the optional column `by` (e.g. kernel kind or scenario)."""
    import numpy as np

    d = df[(df[predicted] > 0) & (df[measured] > 0)]
    fig, ax = plt.subplots(figsize=(5.2, 4.8), dpi=120)
    for i, (key, g) in enumerate(d.groupby(by, sort=False) if by else [("", d)]):
        ax.plot(g[measured], g[predicted], ".", ms=4, alpha=0.7, color=f"C{i % 10}", label=str(key) or None)
    if len(d):
        lo = float(min(d[predicted].min(), d[measured].min()))
        hi = float(max(d[predicted].max(), d[measured].max()))
        xs = np.geomspace(lo, hi, 50)
        ax.plot(xs, xs, "k-", lw=0.8, label="predicted = measured")
        ax.fill_between(xs, xs * (1 - band), xs * (1 + band), color="grey", alpha=0.2, label=f"±{band:.0%}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"measured ({unit})")
    ax.set_ylabel(f"predicted ({unit})")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_jct_cdf(requests: dict[str, pd.DataFrame], path: Path, title: str) -> Path:
    """Empirical CDF of JCT (ms), one line per label; each frame has a `jct_s` column."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.0, 3.8), dpi=120)
    for label, r in requests.items():
        jct = np.sort(r["jct_s"].dropna().to_numpy(float)) * 1e3
        ax.step(jct, np.arange(1, len(jct) + 1) / max(1, len(jct)), where="post", label=label,
                color=POLICY_STYLE.get(label))
    ax.set_xlabel("JCT (ms)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_timeline_comparison(runs: dict[str, pd.DataFrame], path: Path, title: str,
                             ranks: list[int] | None = None, window: tuple[float, float] | None = None,
                             requests: list[int] | None = None) -> Path:
    """`plot_timeline` of several runs (e.g. one per policy) one above the other, same time axis."""
    n_tracks = []
    for ev in runs.values():
        e = ev if ranks is None else ev[ev["rank"].isin(ranks)]
        n_tracks.append(len(e[["rank", "stream"]].drop_duplicates()))
    fig, axes = plt.subplots(len(runs), 1, figsize=(11, sum(0.5 * n + 1.0 for n in n_tracks) + 0.6), dpi=120,
                             sharex=True, squeeze=False, height_ratios=[max(1, n) for n in n_tracks])
    for ax, (label, ev) in zip(axes[:, 0], runs.items()):
        plot_timeline(ev, Path(path), label, ranks=ranks, window=window, requests=requests, ax=ax)
        ax.set_xlabel("")
    axes[-1, 0].set_xlabel("time (ms)")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
