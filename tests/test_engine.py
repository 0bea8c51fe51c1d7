"""Properties of the SimPy engine over random programs (hypothesis)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings

from sim import ir
from sim.runtime import replay_policy
from sim.simulate import events_frame
from tests.programs import make_engine, program_policy, programs

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EPS = 1e-12


def simulate(prog, contention="default"):
    eng = make_engine(prog.world, contention)
    res = eng.run(program_policy(prog))
    return res, events_frame(res.events)


def launches(res):
    return [op for op in res.schedule.ops if op.op == "launch"]


@SETTINGS
@given(programs())
def test_every_kernel_runs_exactly_once(prog):
    res, ev = simulate(prog)
    keys = sorted((op.rank, op.kernel.kernel_id) for op in launches(res))
    assert sorted(zip(ev["rank"], ev["kernel_id"])) == keys


@SETTINGS
@given(programs())
def test_stream_order_and_launch_time(prog):
    res, ev = simulate(prog)
    for _, g in ev.groupby(["rank", "stream"]):
        g = g.sort_values("kernel_id")
        assert (g["start_s"].to_numpy()[1:] >= g["end_s"].to_numpy()[:-1] - EPS).all()
        assert (g["start_s"] >= g["launch_s"] - EPS).all()


@SETTINGS
@given(programs())
def test_waits_are_honoured(prog):
    """A kernel launched after wait(stream, e) starts after every kernel that preceded
    the record of e on its stream has ended."""
    res, ev = simulate(prog)
    end = {(r, k): e for r, k, e in zip(ev["rank"], ev["kernel_id"], ev["end_s"])}
    start = {(r, k): s for r, k, s in zip(ev["rank"], ev["kernel_id"], ev["start_s"])}
    for rank_ops in res.schedule.by_rank():
        last_on: dict[int, int] = {}
        recorded: dict[int, int | None] = {}
        must_follow: dict[int, list[int]] = {}
        for op in rank_ops:
            if op.op == "launch":
                kid = op.kernel.kernel_id
                for before in must_follow.pop(op.stream, []):
                    assert start[(op.rank, kid)] >= end[(op.rank, before)] - EPS
                last_on[op.stream] = kid
            elif op.op == "record":
                recorded[op.event] = last_on.get(op.stream)
            elif op.op == "wait" and recorded.get(op.event) is not None:
                must_follow.setdefault(op.stream, []).append(recorded[op.event])


@SETTINGS
@given(programs())
def test_contention_never_speeds_up_and_lone_kernels_last_solo(prog):
    _, ev = simulate(prog)
    dur = ev["end_s"] - ev["start_s"]
    assert (dur >= ev["solo_s"] * (1 - 1e-9) - EPS).all()
    for _rank, g in ev.groupby("rank"):
        s, e = g["start_s"].to_numpy(), g["end_s"].to_numpy()
        for i in range(len(g)):
            overlaps = ((s < e[i] - EPS) & (e > s[i] + EPS)).sum() - 1
            if overlaps == 0 and g["cls"].iloc[i] != "collective":
                assert abs((e[i] - s[i]) - g["solo_s"].iloc[i]) <= 1e-9 * g["solo_s"].iloc[i] + EPS


@SETTINGS
@given(programs())
def test_without_contention_every_kernel_lasts_solo(prog):
    _, ev = simulate(prog, contention="none")
    local = ev[ev["cls"] != "collective"]
    assert ((local["end_s"] - local["start_s"] - local["solo_s"]).abs() <= 1e-9 * local["solo_s"] + EPS).all()


@SETTINGS
@given(programs())
def test_collectives_start_together_after_every_rank_arrived(prog):
    res, ev = simulate(prog)
    coll = ev[ev["cls"] == "collective"]
    launch_by = {(op.rank, op.kernel.kernel_id): op for op in launches(res)}
    groups: dict[tuple, list] = {}
    for row in coll.itertuples():
        seq = launch_by[(row.rank, row.kernel_id)].kernel.seq
        groups.setdefault((row.group, seq), []).append(row)
    for rows in groups.values():
        assert len(rows) == prog.world
        starts = {r.start_s for r in rows}
        assert len(starts) == 1
        # no rank's part starts before that rank reached it (stream predecessor done)
        for r in rows:
            prev = ev[(ev["rank"] == r.rank) & (ev["stream"] == r.stream) & (ev["kernel_id"] < r.kernel_id)]
            if len(prev):
                assert r.start_s >= prev["end_s"].max() - EPS


@SETTINGS
@given(programs())
def test_same_program_same_events(prog):
    _, a = simulate(prog)
    _, b = simulate(prog)
    pd.testing.assert_frame_equal(a, b)


@SETTINGS
@given(programs())
def test_ir_round_trips_and_replay_reproduces_events(prog):
    res, ev = simulate(prog)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ir.jsonl"
        ir.save(res.schedule, path)
        loaded = ir.load(path)
        ir.save(res.schedule, Path(d) / "ir2.jsonl.gz")  # a .gz name is written gzipped, as load reads it
        zipped = ir.load(Path(d) / "ir2.jsonl.gz")
    assert [o.key() for o in zipped.ops] == [o.key() for o in res.schedule.ops]
    assert [o.key() for o in loaded.ops] == [o.key() for o in res.schedule.ops]
    assert [o.t for o in loaded.ops] == [o.t for o in res.schedule.ops]
    eng = make_engine(prog.world)
    rep = eng.run([replay_policy(ops) for ops in loaded.by_rank()])
    pd.testing.assert_frame_equal(events_frame(rep.events), ev)


@SETTINGS
@given(programs())
def test_ir_lines_are_the_text_json_dumps_writes(prog):
    """`ir.save` formats each line itself; it must be exactly `json.dumps` of the op's dict."""
    import json

    import numpy as np

    from sim.ir import Op, _line, _op_dict
    from sim.kernels import Kernel, KernelSpec

    res, _ = simulate(prog)
    for i, op in enumerate(res.schedule.ops):
        assert _line(op, i % 5) == json.dumps(_op_dict(op, i % 5)) + "\n"
    spec = KernelSpec("all_reduce", "ar", {"nbytes": 8}, 0.0, 8.0)
    every = [Op(0, "stream", 0.0, stream=1, priority=-1), Op(0, "record", 1e-6, stream=1, event=3),
             Op(0, "wait", 2.5e-6, stream=0, event=3), Op(0, "sync", 0.5, event=4, done=np.float64(0.75)),
             Op(0, "launch", 3e-6, stream=1, kernel=Kernel(spec, 0, 7, 2, (0, 1, 2), 11, 9)),
             Op(0, "launch", 4e-6, stream=0, kernel=Kernel(spec, 0, -1, -1, None, 12)),
             Op(0, "sleep_until", np.float64(1e-7), until=float("inf")), Op(1, "sleep_until", 2, until=3),
             Op(0, "sync", float("nan"), event=1)]
    for op in every:
        assert _line(op, -1) == json.dumps(_op_dict(op, -1)) + "\n"


def test_interrupt_keeps_completed_kernels():
    from sim.kernels import Kernel, KernelSpec

    def policy(rt):
        s = rt.new_stream(0)
        done = rt.new_event()
        for i in range(100):
            rt.launch(Kernel(KernelSpec("gemm", f"k{i}", {}, 0.0, 10.0), rt.rank, i, 0), s)
            rt.record(done, s)
            yield rt.sync(done)
            if i == 40:
                raise KeyboardInterrupt

    res = make_engine(1).run([policy])
    assert res.meta["interrupted"] is True
    assert 40 <= len(res.events) <= 41


def test_deadlocked_schedule_is_a_clear_error():
    import pytest

    from sim.errors import LigerSimError
    from sim.kernels import Kernel, collective

    def policy(rt):  # rank 1 never issues the all-reduce rank 0 waits in
        s = rt.new_stream(0)
        if rt.rank == 0:
            rt.launch(Kernel(collective("all_reduce", "ar", 1000), 0, 0, 0, (0, 1)), s)
        yield rt.sleep_until(0.0)

    with pytest.raises(LigerSimError, match="deadlocked"):
        make_engine(2).run([policy, policy])


def test_transfers_sharing_a_link_divide_its_bandwidth():
    """Two P2P sends crossing the PCIe host bridge at once each take twice as long."""
    from sim.contention import ContentionTable
    from sim.costs import RooflineCost
    from sim.engine import Engine, HostParams
    from sim.kernels import Kernel, collective
    from sim.links import build_topology
    from sim.presets import INTERCONNECTS

    topo = build_topology(INTERCONNECTS["pcie4"], 4)
    cost = RooflineCost(1e15, 1e12, 100, 0.0, topo)

    def run(pairs):
        eng = Engine(4, cost.solo, ContentionTable([]), topo, HostParams(0.0, 0.0))

        def policy(rt):
            s = rt.new_stream(0)
            for a, b in pairs:
                if rt.rank in (a, b):
                    kind = "send" if rt.rank == a else "recv"
                    rt.launch(Kernel(collective(kind, kind, 64 * 2**20), rt.rank, 0, 0, (a, b)), s)
            yield rt.sleep_until(0.0)

        ev = events_frame(eng.run([policy] * 4).events)
        return (ev["end_s"] - ev["start_s"]).to_numpy(), ev["solo_s"].to_numpy()

    alone, solo = run([(0, 1)])
    assert alone == pytest.approx(solo)
    both, solo = run([(0, 1), (2, 3)])
    assert both == pytest.approx(2 * solo)


def test_measured_launch_cost_per_kernel_name_paces_a_host_bound_stream():
    """A profile's per-op host dispatch times (`host_ops`) set when each kernel can start: with
    1 µs kernels behind 40 µs launches the stream waits on the host, kernel by kernel; a kernel
    whose name was not measured takes the scalar launch cost, a collective its kind's."""
    from sim.contention import ContentionTable
    from sim.engine import Engine, HostParams
    from sim.kernels import Kernel, KernelSpec
    from sim.links import build_topology
    from sim.presets import INTERCONNECTS

    topo = build_topology(INTERCONNECTS["nvswitch-h100"], 1)
    host = HostParams(5e-6, 0.0, {"norm": 40e-6, "all_reduce": 70e-6})
    eng = Engine(1, lambda k: 1e-6, ContentionTable([]), topo, host)
    names = [("norm", "layernorm"), ("other", "elementwise"), ("attn_all_reduce", "all_reduce")] * 3

    def policy(rt):
        s = rt.new_stream(0)
        for name, kind in names:
            rt.launch(Kernel(KernelSpec(kind, name, {"elems": 8}, 0.0, 16.0), 0, 0, 0), s)
        yield rt.sleep_until(0.0)

    ev = events_frame(eng.run([policy]).events).sort_values("kernel_id")
    gaps = ev["launch_s"].diff().fillna(ev["launch_s"].iloc[0]).to_numpy()
    assert gaps == pytest.approx([40e-6, 5e-6, 70e-6] * 3)
    assert (ev["start_s"] == ev["launch_s"]).all()  # host-bound: each kernel starts when launched
    assert ev["end_s"].max() == pytest.approx(3 * 115e-6 + 1e-6)


def test_a_launch_whose_host_cost_grows_with_its_sequences_is_paced_by_the_line():
    """`launch_linear` (a profile's fitted host cost per prompt): a prefill attention over b prompts
    costs the host base + slope × b, overriding its name's flat cost; other ops keep theirs."""
    from sim.contention import ContentionTable
    from sim.engine import Engine, HostParams
    from sim.kernels import Kernel, KernelSpec, attention
    from sim.links import build_topology
    from sim.presets import INTERCONNECTS

    topo = build_topology(INTERCONNECTS["nvswitch-h100"], 1)
    host = HostParams(5e-6, 0.0, {"prefill_attention": 1.0, "norm": 40e-6},
                      launch_linear={"prefill_attention": ("b", 20e-6, 100e-6)})
    eng = Engine(1, lambda k: 1e-6, ContentionTable([]), topo, host)

    def policy(rt):
        s = rt.new_stream(0)
        for b in (1, 3):
            rt.launch(Kernel(attention("prefill_attention", b, 8, 64, 64, 128, 8, True), 0, b, 0), s)
        rt.launch(Kernel(KernelSpec("layernorm", "norm", {"elems": 8}, 0.0, 16.0), 0, 9, 0), s)
        yield rt.sleep_until(0.0)

    ev = events_frame(eng.run([policy]).events).sort_values("kernel_id")
    assert ev["launch_s"].tolist() == pytest.approx([120e-6, 120e-6 + 320e-6, 440e-6 + 40e-6])


def test_contention_depends_on_which_kernel_started_first():
    """The kernel already running slows by the table's `first: victim` factor, the one that
    started beside it by the `first: other` factor (it waits for the SMs the first holds)."""
    from sim.contention import ContentionTable
    from sim.engine import Engine, HostParams
    from sim.kernels import Kernel, KernelSpec
    from sim.links import build_topology
    from sim.presets import INTERCONNECTS

    topo = build_topology(INTERCONNECTS["nvswitch-h100"], 1)
    table = ContentionTable([("compute", "compute", "equal", 1.5, "victim"), ("compute", "compute", "equal", 3.0, "other"),
                             ("compute", "compute", "equal", 2.0)])
    eng = Engine(1, lambda k: 10e-6, table, topo, HostParams(0.0, 0.0))

    def policy(rt):
        a, b = rt.new_stream(0), rt.new_stream(0)
        rt.launch(Kernel(KernelSpec("gemm", "a", {"m": 1, "n": 1, "k": 1}, 0.0, 1.0), 0, 0, 0), a)
        yield rt.sleep_until(2e-6)
        rt.launch(Kernel(KernelSpec("gemm", "b", {"m": 1, "n": 1, "k": 1}, 0.0, 1.0), 0, 1, 0), b)

    ev = events_frame(eng.run([policy]).events).set_index("request_id")
    # from 2 us: a (first) at 1/1.5 finishes its last 8 us by 14 us; b (second) at 1/3 has done
    # 4 us by then and runs its last 6 us alone
    assert ev.loc[0, "end_s"] == pytest.approx(14e-6)
    assert ev.loc[1, "end_s"] == pytest.approx(20e-6)


def test_kernel_gap_separates_queued_kernels_only():
    """`kernel_gap_s` (a CUPTI-timed profile's GPU gap): a kernel already queued behind another
    starts that long after it ends; one launched after the stream went idle starts at its launch."""
    from sim.contention import ContentionTable
    from sim.engine import Engine, HostParams
    from sim.kernels import Kernel, KernelSpec
    from sim.links import build_topology
    from sim.presets import INTERCONNECTS

    topo = build_topology(INTERCONNECTS["nvswitch-h100"], 1)
    host = HostParams(1e-6, 0.0, kernel_gap_s=2e-6)
    eng = Engine(1, lambda k: 10e-6, ContentionTable([]), topo, host)

    def policy(rt):
        s = rt.new_stream(0)
        for _ in range(3):  # launched 1 us apart: queued behind 10 us kernels
            rt.launch(Kernel(KernelSpec("elementwise", "e", {"elems": 8}, 0.0, 16.0), 0, 0, 0), s)
        yield rt.sleep_until(100e-6)  # the stream has long gone idle
        rt.launch(Kernel(KernelSpec("elementwise", "e", {"elems": 8}, 0.0, 16.0), 0, 0, 0), s)

    ev = events_frame(eng.run([policy]).events).sort_values("kernel_id")
    assert ev["start_s"].tolist() == pytest.approx([1e-6, 13e-6, 25e-6, 101e-6])
    assert ev["launch_s"].tolist() == pytest.approx([1e-6, 2e-6, 3e-6, 101e-6])  # launches are the host's


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_packed_event_rows_give_the_same_events_table(prog):
    """Rows packed into typed columns every few kernels (long runs) make the same table as rows
    kept as tuples."""
    import sim.engine as engine_mod

    res, ev = simulate(prog)
    saved = engine_mod.CHUNK
    engine_mod.CHUNK = 3
    try:
        packed_res, packed = simulate(prog)
    finally:
        engine_mod.CHUNK = saved
    assert len(packed_res.events) == len(ev)
    pd.testing.assert_frame_equal(packed, ev)
    # the hw backend's path, rows of every column as tuples, makes the same table
    hw_rows = list(ev.itertuples(index=False, name=None))
    for i, row in enumerate(hw_rows):
        g = row[8]
        hw_rows[i] = (*row[:8], tuple(int(x) for x in g.split(",")) if g else None, *row[9:])
    pd.testing.assert_frame_equal(events_frame(hw_rows), ev, check_dtype=False)


def test_host_time_after_blocking_ops_delays_the_next_launch():
    """`after_block` (a profile's in-situ host time from a blocking op's return to the next op) and
    `sleep_late_s` (how late a sleeping host wakes): a launch after a blocked sync waits for the
    kernel's end, the wake-up and the after-sync time; one after a sleep for the late wake and the
    after-sleep time; each blocking op's return is recorded in the IR as `done`."""
    from sim.engine import HostParams

    eng = _one_gpu(HostParams(1e-6, 3e-6, after_block={"sync": 20e-6, "sleep_until": 40e-6}, sleep_late_s=100e-6))
    kern = _tiny_gemm

    def policy(rt):
        s = rt.new_stream(0)
        rt.launch(kern(0), s)  # at 1 us, ends at 11 us
        e = rt.new_event()
        rt.record(e, s)
        yield rt.sync(e)  # returns at 11 + 3 us; the next op 20 us later
        rt.launch(kern(1), s)
        yield rt.sleep_until(1e-3)  # wakes at 1.1 ms; the next op 40 us later
        rt.launch(kern(2), s)

    res = eng.run([policy])
    ev = events_frame(res.events).set_index("request_id")
    assert ev.loc[1, "launch_s"] == pytest.approx(14e-6 + 20e-6 + 1e-6)
    assert ev.loc[2, "launch_s"] == pytest.approx(1e-3 + 100e-6 + 40e-6 + 1e-6)
    done = [op.done for op in res.schedule.ops if op.op in ("sync", "sleep_until")]
    assert done == pytest.approx([14e-6, 1.1e-3])


def test_ready_syncs_records_and_waits_cost_their_own_host_time():
    """A sync on an event the GPU has passed costs the call (`sync_call_s`), one that waits resumes
    `sync_wakeup_s` after the event; a record and a wait cost their own times (`record_s`,
    `wait_s`), else the launch cost."""
    from sim.engine import HostParams

    kern = _tiny_gemm

    def policy(rt):
        s = rt.new_stream(0)
        rt.launch(kern(0), s)  # at 1 us, ends at 11 us
        e = rt.new_event()
        rt.record(e, s)  # at 1 + record_s
        yield rt.sync(e)  # waits: returns at 11 + 3 us
        f = rt.new_event()
        rt.record(f, s)
        rt.wait(s, f)
        yield rt.sleep_until(50e-6)
        yield rt.sync(f)  # passed long ago: the call only
        rt.launch(kern(1), s)

    def run(**kw):
        res = _one_gpu(HostParams(1e-6, 3e-6, **kw)).run([policy])
        ev = events_frame(res.events).set_index("request_id")
        return res, ev.loc[1, "launch_s"]

    res, t = run(record_s=2e-6, wait_s=5e-6, sync_call_s=7e-6)
    done = [op.done for op in res.schedule.ops if op.op == "sync"]
    assert done == pytest.approx([14e-6, 57e-6])
    assert [op.t for op in res.schedule.ops if op.op in ("record", "wait")] == pytest.approx([3e-6, 16e-6, 21e-6])
    assert t == pytest.approx(57e-6 + 1e-6)
    _, t_before = run()  # records and waits at the launch cost, a ready sync free
    assert t_before == pytest.approx(50e-6 + 1e-6)


def _one_gpu(host):
    """An engine of one H100 whose kernels each last 10 us, with `host`'s costs."""
    from sim.contention import ContentionTable
    from sim.engine import Engine
    from sim.links import build_topology
    from sim.presets import INTERCONNECTS

    return Engine(1, lambda k: 10e-6, ContentionTable([]), build_topology(INTERCONNECTS["nvswitch-h100"], 1), host)


def _tiny_gemm(i: int):
    from sim.kernels import Kernel, KernelSpec

    return Kernel(KernelSpec("gemm", "g", {"m": 1, "n": 1, "k": 1}, 0.0, 1.0), 0, i, 0)


def test_clock_callbacks_run_where_timeouts_would():
    """`Clock.call_in` skips the Timeout object but must keep SimPy's order: by time, then by when
    it was scheduled, interleaved with real timeouts and processes."""
    import simpy

    from sim.engine import Clock

    def scenario(env, use_call_in: bool) -> list:
        log: list = []

        def later(tag, _=None):
            log.append((env.now, tag))

        def schedule(delay, tag, plain=False):
            if use_call_in and not plain:
                env.call_in(delay, later, tag)
            else:
                env.timeout(delay).callbacks.append(lambda _e: later(tag))

        def proc():
            for i in range(3):
                yield env.timeout(0.5)
                log.append((env.now, f"proc{i}"))
                schedule([0.5, 0.0, 0.25][i], f"cb{i}")

        env.process(proc())
        # same times, scheduled in turn: a plain timeout before and after each callback
        for t, tag, plain in ((0.5, "a", True), (0.5, "b", False), (1.0, "c", True), (1.0, "d", False),
                              (0.5, "e", True)):
            schedule(t, tag, plain)
        env.run_all() if use_call_in else env.run()
        return log

    expected = scenario(simpy.Environment(), False)
    assert scenario(Clock(), True) == expected and len(expected) == 11
    with pytest.raises(ValueError, match="negative delay"):
        Clock().call_in(-1e-9, print, None)


def test_a_run_with_its_progress_bar_ends_and_gives_the_same_run():
    """`ligersim run` in a terminal shows a progress bar; that path looped for ever after the last
    kernel (SimPy's `until` event stayed queued), so it runs in a child process with a time limit."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import warnings; warnings.simplefilter("ignore")
        from sim.scenario import load_scenario
        from sim.simulate import load_jobs, simulate
        scn, base = load_scenario("scenarios/tiny-cpu.yaml")
        jobs = load_jobs(scn, base, 20)
        runs = [simulate(scn, jobs, record_ir=False, progress=p) for p in (False, True)]
        assert runs[0].result.end_s == runs[1].result.end_s, [r.result.end_s for r in runs]
        assert runs[0].events.equals(runs[1].events)
        print("same")
    """)
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "same", out.stderr[-2000:]


def test_wait_notify_wakes_at_the_notice_times_out_and_replays_as_a_sleep():
    """A host blocked in `wait_notify` resumes when another host notifies it (at the notifier's
    host time), or at its `until`; a notice that came while it was busy makes the next wait
    return at once. The IR holds each wait as the sleep until it returned, which replays it."""
    from sim.kernels import Kernel, KernelSpec

    woke: list[float] = []

    def waiter(rt):
        s = rt.new_stream(0)
        yield rt.wait_notify()  # rank 1 notifies at 2e-3
        woke.append(rt.now())
        yield rt.wait_notify(5e-3)  # no notice: times out
        woke.append(rt.now())
        yield rt.sleep_until(9e-3)  # the notice at 8e-3 comes meanwhile
        yield rt.wait_notify()
        woke.append(rt.now())
        rt.launch(Kernel(KernelSpec("gemm", "after", {}, 0.0, 10.0), rt.rank, 0, 0), s)

    def notifier(rt):
        yield rt.sleep_until(2e-3)
        rt.notify(0)
        yield rt.sleep_until(8e-3)
        rt.notify(0)

    res = make_engine(2).run([waiter, notifier])
    assert woke == [2e-3, 5e-3, 9e-3]
    waits = [op for op in res.schedule.ops if op.rank == 0 and op.op == "sleep_until"]
    assert [op.until for op in waits] == [2e-3, 5e-3, 9e-3, 9e-3]
    again = make_engine(2).run([replay_policy(ops) for ops in res.schedule.by_rank()])
    assert again.events.frame()["start_s"].tolist() == res.events.frame()["start_s"].tolist()


def test_a_wait_cut_short_is_a_sleep_in_the_ir():
    def waiter(rt):
        yield rt.wait_notify()

    def stopper(rt):
        yield rt.sleep_until(1e-3)
        raise KeyboardInterrupt

    res = make_engine(2).run([waiter, stopper])
    assert res.meta["interrupted"] is True
    assert [(op.op, op.until) for op in res.schedule.ops if op.rank == 0] == [("sleep_until", 1e-3)]


def test_a_kv_push_runs_one_sided_at_the_links_send_time_and_is_reported():
    """Only its sender launches a `kv_push`; it takes the link model's send time and the
    engine reports its completion (disaggregated serving's notice)."""
    from sim.kernels import Kernel, collective

    eng = make_engine(2)
    eng.solo = lambda k: eng.topology.collective_time(k.spec.kind, k.group, k.spec.dims["nbytes"])
    done: list[tuple[int, float]] = []
    eng.push_done = lambda k, now: done.append((k.rank, now))
    push = collective("kv_push", "push_kv", 8_000_000)

    def sender(rt):
        rt.launch(Kernel(push, rt.rank, -1, -1, (0, 1)), rt.new_stream(0))
        yield rt.sleep_until(0.0)

    def idle(rt):
        yield rt.sleep_until(0.0)

    res = eng.run([sender, idle])
    t = eng.topology.collective_time("send", (0, 1), 8_000_000)
    assert len(res.events) == 1 and done == [(0, pytest.approx(1e-6 + t, rel=1e-12))]


def test_a_host_left_waiting_for_a_notice_is_a_deadlock():
    from sim.errors import LigerSimError

    def waiter(rt):
        yield rt.wait_notify()

    with pytest.raises(LigerSimError, match="wait for a notice"):
        make_engine(1).run([waiter])
