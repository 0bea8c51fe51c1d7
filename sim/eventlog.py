"""The engine's kernel rows, kept compact so long runs fit in memory.

The engine appends one tuple per completed kernel (the cheapest thing to build in its hot
path). A tuple of 15 fields costs about 350 bytes in Python; tens of millions of them (a
10-minute generative trace) do not fit. Every `CHUNK` rows the tuples are packed into typed
numpy columns (strings and collective groups as integer codes into shared tables), about 110
bytes a row, and `frame()` assembles the events table from the packed columns at the end.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CHUNK = 262_144
COLUMNS = ["rank", "stream", "kernel_id", "request_id", "layer", "kind", "name", "cls", "group",
           "parent", "fraction", "launch_s", "start_s", "end_s", "solo_s"]
DTYPES = {"rank": np.int64, "stream": np.int64, "kernel_id": np.int64, "request_id": np.int64,
          "layer": np.int64, "parent": np.int64, "fraction": np.float64, "launch_s": np.float64,
          "start_s": np.float64, "end_s": np.float64, "solo_s": np.float64}
CODED = ("kind", "name", "cls", "group")  # stored as codes into per-log tables


def group_label(g) -> str:
    """A collective's group as the events table writes it ("0,1,2,3"; "" for none)."""
    return "" if g is None else ",".join(map(str, g))


class EventLog:
    """Rows as the engine appends them (`rows`, a plain list), packed into columns as they grow."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self._chunks: list[dict[str, np.ndarray]] = []
        self._packed = 0
        self._codes: dict[str, dict] = {c: {} for c in CODED}

    def __len__(self) -> int:
        return self._packed + len(self.rows)

    def maybe_pack(self) -> None:
        if len(self.rows) >= CHUNK:
            self.pack()

    def pack(self) -> None:
        """Move the pending tuples into typed columns (the `rows` list object is kept, emptied)."""
        if not self.rows:
            return
        cols = list(zip(*self.rows))
        chunk: dict[str, np.ndarray] = {}
        for name, values in zip(COLUMNS, cols):
            if name in CODED:
                table = self._codes[name]
                chunk[name] = np.fromiter((table.setdefault(v, len(table)) for v in values), np.int32, len(values))
            else:
                chunk[name] = np.asarray(values, dtype=DTYPES[name])
        self._chunks.append(chunk)
        self._packed += len(self.rows)
        self.rows.clear()

    def frame(self) -> pd.DataFrame:
        """The events table (unsorted; group as its label), from every row so far."""
        self.pack()
        if not self._chunks:
            return pd.DataFrame({c: pd.Series(dtype=object if c in CODED else DTYPES[c]) for c in COLUMNS})
        data = {}
        for name in COLUMNS:
            col = np.concatenate([ch[name] for ch in self._chunks])
            if name in CODED:
                table = self._codes[name]
                values = [group_label(v) for v in table] if name == "group" else list(table)
                lookup = np.empty(len(values), dtype=object)
                lookup[:] = values
                col = lookup[col]
            data[name] = col
        return pd.DataFrame(data, columns=COLUMNS)
