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
    for policy, g in curve.groupby("policy", sort=False):
        g = g.sort_values("offered_rate")
        color = POLICY_STYLE.get(policy)
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
