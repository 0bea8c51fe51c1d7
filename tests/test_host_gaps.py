"""`sim.host_gaps`: a recorded run's host gaps, split into first uses of kernel shapes and
stalls, and the validation report's section on them."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sim.host_gaps import blocking_costs, host_breakdown, host_drift, op_costs
from sim.ir import Op, Schedule
from sim.kernels import Kernel, KernelSpec, pointwise
from sim.validation import build_report, report_markdown

FIX = Path(__file__).resolve().parent / "fixtures" / "validation"


def k(name: str, elems: int = 64, rank: int = 0) -> Kernel:
    return Kernel(pointwise("elementwise", name, elems, 1, 1, 0.0), rank)


def g(dims: dict[str, int]) -> Kernel:
    return Kernel(KernelSpec("gemm", "g", dims, 1.0, 1.0), 0)


def schedule() -> Schedule:
    """Rank 0's gaps (seconds), in binary fractions so that the sums are exact:
    a 0.5 (first use), b 0.25 (first), record 0.125 up to a sync's call, [sync: blocking], a 0.25,
    wait 0.75, a of other dims 0.125 (first), b 0.375 up to a sleep's call, [sleep: blocking],
    c 1.0 (first), a 0.5, record 0.125, g 0.5 (first), g with its dims in another order 0.25 (the
    same shape), b last (no successor)."""
    ops = [Op(0, "stream", 0.0, 0),
           Op(0, "launch", 1.0, 0, kernel=k("a")),
           Op(0, "launch", 1.5, 0, kernel=k("b")),
           Op(0, "record", 1.75, 0, event=1),
           Op(0, "sync", 1.875, event=1),
           Op(0, "launch", 5.0, 0, kernel=k("a")),
           Op(0, "wait", 5.25, 0, event=1),
           Op(0, "launch", 6.0, 0, kernel=k("a", 128)),
           Op(0, "launch", 6.125, 0, kernel=k("b")),
           Op(0, "sleep_until", 6.5, until=9.0),
           Op(0, "launch", 9.0, 0, kernel=k("c")),
           Op(0, "launch", 10.0, 0, kernel=k("a")),
           Op(0, "record", 10.5, 0, event=2),
           Op(0, "launch", 10.625, 0, kernel=g({"m": 8, "n": 16, "k": 32})),
           Op(0, "launch", 11.125, 0, kernel=g({"k": 32, "n": 16, "m": 8})),
           Op(0, "launch", 11.375, 0, kernel=k("b"))]
    # rank 1 is its own process: its first launch of `a` is a first use there
    ops += [Op(1, "launch", t, 0, kernel=k("a", rank=1)) for t in (0.0, 0.5, 0.75)]
    return Schedule(2, ops, {})


def test_blocking_costs_time_the_host_from_each_return_to_the_next_op():
    """After a sync or a sleep returns, the time to the next op is the policy's own (Liger plans
    a round there); a sleep that woke after the time it asked for was late by the difference.
    Blocking ops without a recorded return (older IRs) give no samples."""
    sched = schedule()
    assert blocking_costs(sched) == {}
    ops = sched.by_rank()[0]
    sync, sleep = ops[4], ops[9]
    sync.done, sleep.done = 4.5, 9.125  # the sync blocked until 4.5; the sleep woke 0.125 late
    ops.insert(5, Op(0, "sleep_until", 4.75, until=4.0))  # asked for a past time: no lateness sample
    ops[5].done = 4.75
    got = blocking_costs(Schedule(1, ops, {}))
    # sync -> the sleep right after it: 0.25; that sleep -> a at 5.0: 0.25; the late sleep -> c at 9.0: 0
    assert got == {"sync": [0.25], "sleep_until": [0.25, 0.0], "sleep_late": [0.125]}


def test_op_costs_skip_blocking_ops_and_stream_declarations():
    """The ops before a sync and a sleep keep their gaps up to the blocking op's call."""
    got = op_costs(schedule())
    assert got == {"a": [0.5, 0.25, 0.125, 0.5, 0.5, 0.25], "b": [0.25, 0.375], "wait": [0.75], "c": [1.0],
                   "record": [0.125, 0.125], "g": [0.5, 0.25]}


def test_host_breakdown_separates_first_uses_and_stalls():
    b = host_breakdown(schedule(), stall_s=0.3, top=3)
    assert {k: v for k, v in b.items() if k != "top_stalls"} == {
        "rank": 0, "stall_threshold_s": 0.3, "gaps_n": 12, "total_s": 4.75,
        "shapes_n": 5, "first_use_n": 5, "first_use_s": 0.5 + 0.25 + 0.125 + 1.0 + 0.5,
        "stalls_n": 6, "stalls_s": 0.5 + 0.75 + 0.375 + 1.0 + 0.5 + 0.5,
        "stall_first_use_n": 3, "stall_first_use_s": 0.5 + 1.0 + 0.5,
        # medians: a [0.5, 0.25, 0.125, 0.5] 0.375, b [0.25, 0.375] 0.3125, record 0.125, g [0.5, 0.25]
        # 0.375; wait and c one sample each
        "n_median_s": 4 * 0.375 + 2 * 0.3125 + 0.75 + 1.0 + 2 * 0.125 + 2 * 0.375,
        # repeat uses: a [0.25, 0.5], b [0.375], wait, record [0.125, 0.125], g [0.25]
        "repeat_n_median_s": 2 * 0.375 + 0.375 + 0.75 + 2 * 0.125 + 0.25,
        "repeat_s": 4.75 - (0.5 + 0.25 + 0.125 + 1.0 + 0.5),
    }
    # ties in stall seconds go by name
    assert b["top_stalls"] == [{"op": "a", "n": 2, "s": 1.0, "first_use_n": 1},
                               {"op": "c", "n": 1, "s": 1.0, "first_use_n": 1},
                               {"op": "wait", "n": 1, "s": 0.75, "first_use_n": 0}]


def test_host_breakdown_per_rank_and_threshold():
    r1 = host_breakdown(schedule(), stall_s=0.5, rank=1)
    assert (r1["gaps_n"], r1["total_s"], r1["shapes_n"], r1["first_use_n"], r1["first_use_s"]) == (2, 0.75, 1, 1, 0.5)
    assert (r1["stalls_n"], r1["stall_first_use_n"]) == (1, 1)  # a gap equal to the threshold is a stall
    high = host_breakdown(schedule(), stall_s=2.0)
    assert high["stalls_n"] == high["stalls_s"] == 0 and high["top_stalls"] == []
    empty = host_breakdown(Schedule(1, [], {}))
    assert empty["gaps_n"] == 0 and empty["total_s"] == 0.0 and empty["n_median_s"] == 0


def test_host_drift_follows_the_host_speed_through_a_run():
    """Repeat launches of a and b alternate; the host takes 1 s per launch in the first half of
    them and 3 s in the second, so each name's median is 2 and the halves run at 0.5 and 1.5 of it.
    First uses (5 s each) and records are left out; too few launches for the parts give none."""
    ops, t = [], 0.0
    for i, gap in enumerate([5.0, 5.0] + [1.0] * 8 + [3.0] * 8 + [0.0]):
        ops.append(Op(0, "launch", t, 0, kernel=k("ab"[i % 2])))
        if i == 4:  # a record halves this launch's gap (0.25 of a's median); its own gap is not a launch's
            ops.append(Op(0, "record", t + 0.5, 0, event=1))
        t += gap
    sched = Schedule(1, ops, {})
    assert [round(d["ratio"], 9) for d in host_drift(sched, parts=2)] == [0.5, 1.5]
    four = host_drift(sched, parts=4)
    assert [d["ratio"] for d in four] == [0.5, 0.5, 1.5, 1.5] and [d["n"] for d in four] == [4] * 4
    assert four[0]["t0_s"] == 10.0 and four[-1]["t1_s"] == max(op.t for op in ops[:-1])
    assert host_drift(sched, parts=17) == [] and host_drift(sched, rank=3) == []


def test_sim_host_gaps_is_torch_free_and_hw_keeps_op_costs():
    code = ("import sys, sim.host_gaps, sim.validation; "
            "assert not {'torch', 'hw'} & set(sys.modules), sorted(m for m in sys.modules if m in ('torch', 'hw'))")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
    pytest.importorskip("torch")
    from hw.host_in_situ import op_costs as hw_op_costs

    assert hw_op_costs is op_costs


@pytest.mark.parametrize("gz", [False, True])
def test_report_on_the_recorded_run_has_its_host_section(tmp_path, gz):
    """build_report on the recorded CPU run (its own events standing in for a replay, so no
    simulation is needed), with the IR as recorded or gzipped as committed reports keep it."""
    measured = tmp_path / "measured"
    shutil.copytree(FIX / "measured", measured)
    if gz:
        ir_file = measured / "ir.jsonl"
        with open(ir_file, "rb") as src, gzip.open(measured / "ir.jsonl.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        ir_file.unlink()
    out = tmp_path / "v"
    (out / "replay").mkdir(parents=True)
    shutil.copy(measured / "events.parquet", out / "replay" / "events.parquet")
    s = build_report(out, measured)
    host = s["host"]
    assert host["rank"] == 0 and host["gaps_n"] > 0 and host["shapes_n"] > 0
    assert 0 < host["first_use_s"] <= host["total_s"] and host["stall_first_use_n"] <= host["stalls_n"]
    assert host["first_use_s"] + host["repeat_s"] == pytest.approx(host["total_s"])
    assert host["makespan_s"] == pytest.approx(json.loads((FIX / "measured" / "summary.json").read_text())["makespan_s"])
    assert json.loads((out / "summary.json").read_text())["host"]["gaps_n"] == host["gaps_n"]
    md = (out / "report.md").read_text()
    assert "## Host time of the measured run" in md and f"| total | {host['gaps_n']} |" in md
    assert "| replay | " in md  # the rest of the report is still there
    assert len(host["drift"]) == 8 and all(d["ratio"] > 0 for d in host["drift"])
    assert "Host speed through the run" in md and f"{host['drift'][0]['ratio']:.2f}, " in md
    # without the host breakdown (a run without its IR) the section is left out
    table = pd.read_csv(out / "validation.csv")
    assert "Host time" not in report_markdown({k: v for k, v in s.items() if k != "host"}, table)


def test_host_cost_that_grows_with_the_sequences_an_op_covers_is_fitted_as_a_line():
    """Prefill attention loops over its prompts in Python: its host cost is fitted as base + slope
    × prompts, by least squares with an intercept (so the fitted costs add up to the measured
    ones); no line without spread in the count, enough samples, or growth."""
    from sim.host_gaps import linear_fit, op_costs_by
    from sim.kernels import attention

    pairs = [(b, 2e-4 + 1e-4 * b + e) for b in (1, 2, 3, 5) for e in (-1e-5, 0.0, 1e-5)]
    base, slope = linear_fit(pairs)
    assert (base, slope) == (pytest.approx(2e-4), pytest.approx(1e-4))
    assert sum(base + slope * x for x, _ in pairs) == pytest.approx(sum(y for _, y in pairs))
    assert linear_fit(pairs[:5]) is None  # too few
    assert linear_fit([(3, y) for _, y in pairs]) is None  # one count
    assert linear_fit([(x, 1e-3 - 1e-4 * x) for x, _ in pairs]) is None  # falls with the count

    def launch(t, b):
        return Op(0, "launch", t, 0, kernel=Kernel(attention("prefill_attention", b, 8, 64, 64, 128, 8, True), 0))

    ops = [launch(0.0, 1), launch(1.0, 3), Op(0, "launch", 1.5, 0, kernel=k("a")), launch(2.0, 2)]
    assert op_costs_by(Schedule(1, ops, {})) == {"prefill_attention": [(1.0, 1.0), (3.0, 0.5)]}
