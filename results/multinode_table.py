"""The README's multi-node table: the `multinode` presets against the measured 2-node NCCL groups.

Run: `.venv/bin/python results/multinode_table.py`; prints, per measured group and size, the time
the datasheet preset (`dgx-{a100-hdr,h100-ndr}`) and the fitted one (`dgx-{a100,h100}-measured`)
give and the measured median (µs), and each preset's median predicted/measured ratio per group.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sim.linkfit import load_nccl_table, multinode_times
from sim.presets import INTERCONNECTS

NCCL = Path(__file__).resolve().parent.parent / "profiles" / "nccl"
PRESETS = {"a100": ("dgx-a100-hdr", "dgx-a100-measured"), "h100": ("dgx-h100-ndr", "dgx-h100-measured")}
SIZES = (65536, 1 << 20, 16 << 20, 64 << 20)  # the nearest measured size is taken


def two_node_rows(gpu: str) -> pd.DataFrame:
    tables = [load_nccl_table(p) for p in sorted(NCCL.glob(f"{gpu}_dgx_*.csv"))]
    return pd.concat(tables, ignore_index=True).query("nodes == 2").reset_index(drop=True)


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:g} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:g} KiB"


def main() -> None:
    """One row per measured group: at each size, datasheet / fitted / measured µs; then the median
    predicted/measured time ratio over all sizes, datasheet / fitted."""
    lines = []
    for gpu, names in PRESETS.items():
        rows = two_node_rows(gpu)
        t = rows["time_s"].to_numpy()
        ratio = [multinode_times(INTERCONNECTS[name], rows) / t for name in names]
        for (collective, n, k), idx in rows.groupby(["collective", "n", "devices_per_node"], sort=False).groups.items():
            i = rows.index.get_indexer(idx)
            cells = []
            for want in SIZES:
                j = i[np.argmin(np.abs(rows["bytes"].to_numpy()[i] - want))]
                cells.append(" / ".join(f"{r[j] * t[j] * 1e6:,.0f}" for r in ratio) + f" / **{t[j] * 1e6:,.0f}**")
            medians = " / ".join(f"{np.median(r[i]):.2f}" for r in ratio)
            lines.append(f"| {gpu.upper()} {collective} {n} GPUs ({k} per node) | " + " | ".join(cells) + f" | {medians} |")
    first = two_node_rows("a100")["bytes"].to_numpy()
    sizes = [_size(int(first[np.argmin(np.abs(first - want))])) for want in SIZES]
    print("| group | " + " | ".join(sizes) + " | predicted/measured (median) |")
    print("|---" * (len(SIZES) + 2) + "|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
