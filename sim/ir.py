"""The schedule IR: the host operations each rank performs, as CUDA programs do.

`launch(kernel, stream)`, `record(event, stream)`, `wait(stream, event)`, `sync(event)`,
`sleep_until(t)`, plus `stream(priority)` declaring a stream. Recorded from whichever
backend ran a policy and replayable on either. Serialised as JSON lines: a header line
carrying the format version, then one line per kernel spec the first time it is used, then
one line per operation.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from sim.errors import LigerSimError
from sim.kernels import Kernel, KernelSpec

IR_FORMAT = "ligersim-ir"
IR_VERSION = 1
BLOCKING = frozenset({"sync", "sleep_until"})


@dataclass(slots=True)
class Op:
    """One host operation. `t` is the host time at which the rank issued it; for a blocking op
    (`sync`, `sleep_until`) that has run, `done` is the host time it returned (-1: not known)."""

    rank: int
    op: str
    t: float = 0.0
    stream: int = -1
    event: int = -1
    priority: int = 0
    until: float = 0.0
    kernel: Kernel | None = None
    done: float = -1.0

    def key(self) -> tuple:
        """Everything but the host time: what must match when comparing schedules."""
        k = self.kernel
        kd = None if k is None else (k.kernel_id, k.request_id, k.layer, k.group, k.parent,
                                     json.dumps(k.spec.to_dict(), sort_keys=True))
        return (self.rank, self.op, self.stream, self.event, self.priority, self.until, kd)


@dataclass(slots=True)
class Schedule:
    world: int
    ops: list[Op]
    meta: dict

    def by_rank(self) -> list[list[Op]]:
        out: list[list[Op]] = [[] for _ in range(self.world)]
        for op in self.ops:
            out[op.rank].append(op)
        return out


def save(schedule: Schedule, path: str | Path) -> None:
    """Write the IR as JSON lines. Each line is the text `json.dumps` gives its dict, formatted
    directly: a run's IR has millions of operations, and a dict plus a `json.dumps` call per line
    took 4 us of the 6 us each line cost (tests/test_ir.py checks the text against `json.dumps`)."""
    spec_ids: dict[int, int] = {}
    opener = gzip.open if Path(path).suffix == ".gz" else open  # `load` reads NAME.gz as gzip
    with opener(path, "wt") as f:
        f.write(json.dumps({"format": IR_FORMAT, "version": IR_VERSION, "world": schedule.world,
                            "ops": len(schedule.ops), "meta": schedule.meta}) + "\n")
        write = f.write
        for op in schedule.ops:
            if op.op == "launch":
                k = op.kernel
                assert k is not None
                sid = spec_ids.get(id(k.spec))
                if sid is None:
                    sid = spec_ids[id(k.spec)] = len(spec_ids)
                    write(json.dumps({"op": "spec", "id": sid, **k.spec.to_dict()}) + "\n")
            write(_line(op, sid if op.op == "launch" else -1))


def _line(op: Op, spec_id: int) -> str:
    """One operation's line, as `json.dumps` of its dict would write it."""
    t, done = op.t, op.done
    if t - t != 0.0 or done - done != 0.0 or op.until - op.until != 0.0:  # inf or nan: JSON's own spelling
        return json.dumps(_op_dict(op, spec_id)) + "\n"
    head = f'{{"r": {op.rank}, "op": "{op.op}", "t": {_num(t)}'
    kind = op.op
    if kind == "launch":
        k = op.kernel
        assert k is not None
        body = f', "s": {op.stream}, "spec": {spec_id}, "id": {k.kernel_id}, "req": {k.request_id}, "layer": {k.layer}'
        if k.group is not None:
            body += f', "group": [{", ".join(map(str, k.group))}]'
        if k.parent >= 0:
            body += f', "parent": {k.parent}'
    elif kind == "record":
        body = f', "e": {op.event}, "s": {op.stream}'
    elif kind == "wait":
        body = f', "s": {op.stream}, "e": {op.event}'
    elif kind == "sync":
        body = f', "e": {op.event}'
    elif kind == "stream":
        body = f', "s": {op.stream}, "p": {op.priority}'
    elif kind == "sleep_until":
        body = f', "until": {_num(op.until)}'
    else:
        return json.dumps(_op_dict(op, spec_id)) + "\n"
    tail = f', "done": {_num(done)}}}\n' if done >= 0 else "}\n"
    return head + body + tail


def _num(x: float) -> str:
    """A number as `json.dumps` spells it (a numpy float too: it is a float subclass)."""
    return float.__repr__(x) if isinstance(x, float) else json.dumps(x)


def _op_dict(op: Op, spec_id: int) -> dict:
    """An operation as the dict its IR line encodes (the reference for `_line`)."""
    d: dict = {"r": op.rank, "op": op.op, "t": op.t}
    if op.op == "stream":
        d.update(s=op.stream, p=op.priority)
    elif op.op == "launch":
        k = op.kernel
        assert k is not None
        d.update(s=op.stream, spec=spec_id, id=k.kernel_id, req=k.request_id, layer=k.layer)
        if k.group is not None:
            d["group"] = list(k.group)
        if k.parent >= 0:
            d["parent"] = k.parent
    elif op.op == "record":
        d.update(e=op.event, s=op.stream)
    elif op.op == "wait":
        d.update(s=op.stream, e=op.event)
    elif op.op == "sync":
        d.update(e=op.event)
    elif op.op == "sleep_until":
        d.update(until=op.until)
    if op.done >= 0:
        d["done"] = op.done
    return d


def load(path: str | Path) -> Schedule:
    """Read an IR file; `NAME.gz` (gzip) is read as well, and stands in for a missing `NAME`
    (committed recorded runs keep their IR compressed)."""
    path = Path(path)
    gz = path if path.suffix == ".gz" else path.with_name(path.name + ".gz")
    try:
        if path.exists() and path.suffix != ".gz":
            lines = path.read_text().splitlines()
        else:
            with gzip.open(gz, "rt") as f:
                lines = f.read().splitlines()
            path = gz
    except OSError as e:  # gzip's "not a gzipped file" has no strerror
        raise LigerSimError(f"cannot read the IR file ({e.strerror or e})", file=str(path)) from None
    except (UnicodeDecodeError, EOFError) as e:
        what = "cut off" if isinstance(e, EOFError) else f"not UTF-8 text (byte {e.start})"
        raise LigerSimError(f"the IR file is {what}", file=str(path)) from None
    if not lines:
        raise LigerSimError("the IR file is empty", file=str(path))
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        raise LigerSimError("line 1 is not JSON; an IR file starts with a ligersim-ir header",
                            file=str(path)) from None
    if not isinstance(header, dict) or header.get("format") != IR_FORMAT:
        raise LigerSimError(f"not a ligersim IR file (header format must be {IR_FORMAT!r})", file=str(path))
    if header.get("version") != IR_VERSION:
        raise LigerSimError(f"IR version {header.get('version')!r} is not supported; this ligersim reads "
                            f"version {IR_VERSION}", file=str(path), field="version")
    specs: dict[int, KernelSpec] = {}
    ops: list[Op] = []
    for lineno, line in enumerate(lines[1:], start=2):
        try:
            d = json.loads(line)
            kind = d["op"]
            if kind == "spec":
                specs[d["id"]] = KernelSpec.from_dict(d)
                continue
            op = Op(rank=int(d["r"]), op=kind, t=float(d["t"]))
            if kind == "stream":
                op.stream, op.priority = int(d["s"]), int(d["p"])
            elif kind == "launch":
                group = tuple(d["group"]) if "group" in d else None
                op.stream = int(d["s"])
                op.kernel = Kernel(specs[d["spec"]], op.rank, int(d["req"]), int(d["layer"]), group,
                                   int(d["id"]), int(d.get("parent", -1)))
            elif kind in ("record", "wait"):
                op.stream, op.event = int(d["s"]), int(d["e"])
            elif kind == "sync":
                op.event = int(d["e"])
            elif kind == "sleep_until":
                op.until = float(d["until"])
            else:
                raise KeyError(f"unknown op {kind!r}")
            if "done" in d:
                op.done = float(d["done"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise LigerSimError(f"line {lineno} is not a valid IR operation ({e})", file=str(path)) from None
        ops.append(op)
    world = int(header.get("world", 1 + max((o.rank for o in ops), default=0)))
    if not ops:
        raise LigerSimError("the IR file holds no operations", file=str(path))
    if "ops" in header and header["ops"] != len(ops):  # written since the header counts them
        raise LigerSimError(f"the IR file is cut off: {len(ops):,} of its {header['ops']:,} operations",
                            file=str(path))
    bad = next((o for o in ops if not 0 <= o.rank < world), None)
    if bad is not None:
        raise LigerSimError(f"an operation of rank {bad.rank} in a schedule of {world} ranks", file=str(path),
                            field="r")
    return Schedule(world, ops, dict(header.get("meta", {})))
