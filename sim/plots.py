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
