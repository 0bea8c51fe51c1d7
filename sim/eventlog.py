"""The engine's kernel rows, kept compact so long runs fit in memory.

The engine appends one short tuple per completed kernel, the cheapest thing to build in its hot
path: (rank, stream, kernel_id, request_id, layer, spec, group, parent, launch_s, start_s, end_s,
solo_s), the spec object standing for its kind, name, class and fraction. Tens of millions of
such tuples (a 10-minute generative trace) would not fit, so every `CHUNK` rows they are packed
into typed numpy columns, about 100 bytes a row: the conversion runs in C (one object array,
`astype`, `pandas.factorize` of the spec objects and groups by identity), and only the distinct
specs and groups of a chunk are looked at in Python. `frame()` assembles the events table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CHUNK = 262_144
COLUMNS = ["rank", "stream", "kernel_id", "request_id", "layer", "kind", "name", "cls", "group",
           "parent", "fraction", "launch_s", "start_s", "end_s", "solo_s"]
INTS = {"rank": 0, "stream": 1, "kernel_id": 2, "request_id": 3, "layer": 4, "parent": 7}  # row positions
FLOATS = {"launch_s": 8, "start_s": 9, "end_s": 10, "solo_s": 11}
SPEC, GROUP = 5, 6
WIDTH = 12
TEXT = ("kind", "name", "cls", "group")


def group_label(g) -> str:
    """A collective's group as the events table writes it ("0,1,2,3"; "" for none)."""
    return "" if g is None else ",".join(map(str, g))


class EventLog:
    """Rows as the engine appends them (`rows`, a plain list), packed into columns as they grow."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self._chunks: list[dict[str, np.ndarray]] = []
        self._packed = 0
        self._specs: dict[tuple[str, str, str], int] = {}  # (kind, name, cls) -> code
        self._groups: dict[tuple[int, ...] | None, int] = {}

    def __len__(self) -> int:
        return self._packed + len(self.rows)

    def pack(self) -> None:
        """Move the pending tuples into typed columns (the `rows` list object is kept, emptied)."""
        n = len(self.rows)
        if not n:
            return
        a = np.empty((n, WIDTH), dtype=object)
        a[:] = self.rows
        chunk = {name: a[:, j].astype(np.int64) for name, j in INTS.items()}
        chunk.update({name: a[:, j].astype(np.float64) for name, j in FLOATS.items()})
        local, specs = pd.factorize(a[:, SPEC])  # KernelSpec hashes by identity
        codes = np.fromiter((self._specs.setdefault((s.kind, s.name, s.cls), len(self._specs)) for s in specs),
                            np.int32, len(specs))
        chunk["spec"] = codes[local]
        chunk["fraction"] = np.fromiter((s.fraction for s in specs), np.float64, len(specs))[local]
        local, groups = pd.factorize(a[:, GROUP], use_na_sentinel=False)
        groups = [None if isinstance(g, float) and g != g else g for g in groups]  # None comes back NaN
        codes = np.fromiter((self._groups.setdefault(g, len(self._groups)) for g in groups), np.int32, len(groups))
        chunk["group"] = codes[local]
        self._chunks.append(chunk)
        self._packed += n
        self.rows.clear()

    def frame(self) -> pd.DataFrame:
        """The events table (unsorted; group as its label), from every row so far."""
        self.pack()
        if not self._chunks:
            return pd.DataFrame({c: pd.Series(dtype=object if c in TEXT else
                                              np.float64 if c in FLOATS or c == "fraction" else np.int64)
                                 for c in COLUMNS})

        def cat(name: str) -> np.ndarray:
            return np.concatenate([ch[name] for ch in self._chunks])

        def lookup(values: list) -> np.ndarray:
            out = np.empty(len(values), dtype=object)
            out[:] = values
            return out

        spec = cat("spec")
        keys = list(self._specs)
        data = {name: cat(name) for name in (*INTS, *FLOATS, "fraction")}
        for i, name in enumerate(("kind", "name", "cls")):
            data[name] = lookup([k[i] for k in keys])[spec]
        data["group"] = lookup([group_label(g) for g in self._groups])[cat("group")]
        return pd.DataFrame(data, columns=COLUMNS)
