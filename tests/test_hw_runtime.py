"""TorchRuntime on CPU with two gloo ranks: stream order, event waits, host syncs, sleeps
and collectives are honoured, as the recorded timestamps show."""

from __future__ import annotations

import time

import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from hw.run import replay_ir  # noqa: E402
from sim import ir  # noqa: E402
from sim.engine import EVENT_COLUMNS  # noqa: E402
from sim.ir import Op, Schedule  # noqa: E402
from sim.kernels import Kernel, collective, gemm, pointwise  # noqa: E402
from sim.scenario import parse_scenario  # noqa: E402

SCENARIO = {"name": "timing", "hardware": {"gpu": "A100-PCIe", "count": 2, "interconnect": "pcie4"},
            "model": {"preset": "liger-encoder", "hidden": 256, "heads": 4, "kv_heads": 4, "head_dim": 64,
                      "ffn": 1024, "layers": 2},
            "workload": {"kind": "generate", "jobs": 1, "arrival": {"process": "constant", "rate": 100},
                         "batch": 1, "seq_len": 16}}
SLEEP = 0.03


def program(rank: int) -> list[Op]:
    """Both ranks: A on s0, s1 waits for A, B and an all-reduce on s1, host syncs on it, D on s0.
    Rank 1's A is much longer, so rank 0 reaches the all-reduce first and must wait for it."""
    size = 128 if rank == 0 else 640
    kernels = {"A": gemm("timing_a", size, size, size), "B": gemm("timing_b", 128, 128, 128),
               "C": collective("all_reduce", "timing_c", 4096 * 2),
               "D": pointwise("elementwise", "timing_d", 1 << 16, 1, 1, 1.0)}

    def launch(name: str, stream: int, kid: int) -> Op:
        group = (0, 1) if name == "C" else None
        return Op(rank, "launch", stream=stream, kernel=Kernel(kernels[name], rank, 0, 0, group, kid))

    return [Op(rank, "stream", stream=0, priority=-1), Op(rank, "stream", stream=1, priority=0),
            Op(rank, "sleep_until", until=SLEEP), launch("A", 0, 0), Op(rank, "record", stream=0, event=0),
            Op(rank, "wait", stream=1, event=0), launch("B", 1, 1), launch("C", 1, 2),
            Op(rank, "record", stream=1, event=1), Op(rank, "sync", event=1), launch("D", 0, 3),
            Op(rank, "record", stream=0, event=2), Op(rank, "sync", event=2)]


@pytest.fixture(scope="module")
def timed(tmp_path_factory) -> pd.DataFrame:
    tmp = tmp_path_factory.mktemp("timing")
    scn = parse_scenario(SCENARIO)
    ir.save(Schedule(2, program(0) + program(1), {"scenario": scn.model_dump(mode="json"), "policy": "test"}),
            tmp / "ir.jsonl")
    replay_ir(tmp / "ir.jsonl", tmp / "out", device="cpu")
    return pd.read_parquet(tmp / "out" / "events.parquet")


def k(ev: pd.DataFrame, rank: int, name: str) -> pd.Series:
    return ev[(ev["rank"] == rank) & (ev["name"] == f"timing_{name.lower()}")].iloc[0]


def test_rows_have_the_simulator_columns(timed):
    assert list(timed.columns) == EVENT_COLUMNS
    assert len(timed) == 8
    assert (timed["end_s"] >= timed["start_s"]).all() and (timed["start_s"] >= timed["launch_s"]).all()


def test_sleep_until_holds_the_first_launch(timed):
    assert (timed["launch_s"] >= SLEEP).all()


@pytest.mark.parametrize("rank", [0, 1])
def test_stream_order_event_wait_and_host_sync(timed, rank):
    for _, s in timed[timed["rank"] == rank].groupby("stream"):
        s = s.sort_values("kernel_id")
        assert (s["start_s"].to_numpy()[1:] >= s["end_s"].to_numpy()[:-1]).all()  # FIFO per stream
    assert k(timed, rank, "B")["start_s"] >= k(timed, rank, "A")["end_s"]  # s1 waited for A's event
    assert k(timed, rank, "D")["launch_s"] >= k(timed, rank, "C")["end_s"]  # host synced on C's event


def test_all_reduce_spans_both_ranks(timed):
    c0, c1 = k(timed, 0, "C"), k(timed, 1, "C")
    a0, a1 = k(timed, 0, "A"), k(timed, 1, "A")
    assert a1["end_s"] - a1["start_s"] > a0["end_s"] - a0["start_s"]
    assert c0["start_s"] < c1["start_s"]  # rank 0 arrived first ...
    assert c0["end_s"] >= c1["start_s"] and c1["end_s"] >= c0["start_s"]  # ... and finished only with rank 1
    assert c0["group"] == "0,1"


@pytest.mark.parametrize("preset", ["liger-encoder", "llama2-7b"])
def test_warm_up_runs_each_job_shape_through_the_ops_and_leaves_no_state(tmp_path, preset):
    """`hw.warm.warm_ops` (run on CUDA before the clock starts): one job of every distinct shape
    through the library's own ops, then nothing of it left: no request state, no extra shapes,
    and the run afterwards still completes every job."""
    import yaml

    from hw.collectives import NoCollectives
    from hw.launch import _run, _setup
    from hw.run import Options, Source, build_plan
    from hw.warm import warm_ops

    model = {"preset": preset, "hidden": 128, "heads": 2, "kv_heads": 2, "head_dim": 64, "ffn": 256, "layers": 2}
    if preset.startswith("llama"):
        model["vocab"] = 256
    scn = {"name": "warm", "seed": 2, "hardware": {"gpu": "H100-SXM", "count": 1, "interconnect": "nvswitch-h100"},
           "model": model,
           "workload": {"kind": "generate", "jobs": 5, "arrival": {"process": "poisson", "rate": 1000}, "batch": 2,
                        "seq_len": {"dist": "uniform", "low": 8, "high": 40}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scn))
    plan = build_plan(Source("scenario", str(path)))
    shapes = dict(plan.shapes)
    opts = Options(device="cpu")
    lib = _setup(plan, 0, opts, NoCollectives())
    taken = lib.pool.allocated_bytes
    warm_ops(plan, 0, lib)
    assert plan.shapes == shapes and not lib.store.states
    assert lib.pool.allocated_bytes > taken  # buffers of every shape now exist
    result = _run(plan, 0, opts, lib, time.perf_counter())
    assert {r[3] for r in result.rows} == set(shapes)


@pytest.mark.parametrize("layers,vocab", [(2, 256), (1, 0)])
def test_warm_up_of_an_interleaved_plan_runs_every_piece_through_the_ops(tmp_path, layers, vocab):
    """Before the clock, an interleaved plan's GEMMs run once as each piece its planner can cut
    (35 spans of eighths per GEMM and job shape), on the warm job's buffers, which are then gone
    (with one layer and no LM head, the layer's last GEMM ends the job: its pieces run first)."""
    import yaml

    from hw.collectives import NoCollectives
    from hw.launch import _run, _setup
    from hw.run import Options, Source, build_plan
    from hw.warm import warm_ops
    from sim.layers import layer_kernels

    model = {"preset": "llama2-7b", "hidden": 128, "heads": 2, "kv_heads": 2, "head_dim": 64, "ffn": 256,
             "layers": layers, "vocab": vocab}
    scn = {"name": "warm", "seed": 3, "hardware": {"gpu": "H100-SXM", "count": 1, "interconnect": "nvswitch-h100"},
           "model": model, "policy": {"name": "interleaved"},
           "workload": {"kind": "generate", "jobs": 4, "arrival": {"process": "poisson", "rate": 1000}, "batch": 1,
                        "seq_len": {"dist": "uniform", "low": 8, "high": 40}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scn))
    plan = build_plan(Source("scenario", str(path)))
    opts = Options(device="cpu")
    lib = _setup(plan, 0, opts, NoCollectives())
    ran = []
    run = lib.run
    lib.run = lambda k: (ran.append(k), run(k))[1]
    warm_ops(plan, 0, lib)
    lib.run = run
    shapes = set(plan.shapes.values())
    gemms = sum(s.kind == "gemm" for s in layer_kernels(plan.scenario.model.shape(), 1, 1, 8))
    pieces = [k for k in ran if k.spec.fraction < 1]
    assert len(pieces) == 35 * gemms * len(shapes)
    assert not lib.store.states
    result = _run(plan, 0, opts, lib, time.perf_counter())
    assert {r[3] for r in result.rows} == set(plan.shapes)


def test_generative_gemm_warm_up_covers_every_row_count_and_piece_through_the_models_weights(monkeypatch):
    """A generative run's GEMM shapes follow its batching, so the warm-up runs each weight of the
    layer at every row count up to 1,024 (then every 32nd, and the budget), and, for a policy that
    splits GEMMs, every piece the planner can cut, as the strided weight slice the run launches."""
    from hw import warm
    from hw.collectives import NoCollectives
    from hw.kernels import KernelLibrary
    from hw.weights import Shard
    from sim.layers import iteration_layer
    from sim.policies.interleaved import possible_pieces
    from sim.scenario import ModelSpec

    assert warm.row_counts(100) == list(range(1, 101))
    assert warm.row_counts(1100) == [*range(1, 1025), 1056, 1088, 1100]
    m = ModelSpec(preset="llama2-7b", hidden=128, heads=2, kv_heads=2, head_dim=64, ffn=256, layers=1,
                  vocab=256).shape()
    lib = KernelLibrary(m, Shard(1, 0), "cpu", torch.float32, NoCollectives())
    specs = iteration_layer(m, 1, [(20, 0)], [21, 30])
    gemms = [s for s in specs if s.kind == "gemm"]
    calls = []
    mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b, out: (calls.append((a.shape[0], b.shape, b.stride(), b.data_ptr())),
                                                       mm(a, b, out=out)))
    warm.warm_gemm_sizes(lib, specs, 40)
    weights = {w.data_ptr(): w for w in lib.w.values()}
    assert len(calls) == len(gemms) * 40
    assert all(ptr in weights for *_, ptr in calls)
    assert {r for r, *_ in calls} == set(range(1, 41))

    calls.clear()
    warm.warm_gemm_sizes(lib, specs, 40, split=4)
    pieces = {(s.dims["k"], s.dims["n"], p.dims["n0"], p.dims["n"]) for s in gemms for p in possible_pieces(s, 4)}
    assert len(pieces) == 9 * len(gemms)  # the spans [a/4, b/4) but the whole
    assert len(calls) == (len(gemms) + len(pieces)) * 40
    sliced = [(b, stride) for _, b, stride, _ in calls if b[1] < stride[0]]  # a weight's column slice
    assert len(sliced) == len(pieces) * 40
    assert {(r, b) for r, b, *_ in calls} >= {(r, (k, n)) for k, _, _, n in pieces for r in (1, 40)}


def test_buffer_pool_reuses_a_size_class_across_shapes_and_waste_is_bounded():
    """Buffers are views of size-class allocations: another shape of the same class reuses one
    (a generative run's ever-new token counts no longer allocate a set each), classes waste at most
    12.5%, and a tensor made elsewhere joins the largest class it fills."""
    import random

    from hw.activations import BufferPool, class_below, size_class

    rnd = random.Random(0)
    for n in [*range(1, 300), *(rnd.randint(1, 10**9) for _ in range(5000))]:
        c = size_class(n)
        assert n <= c <= max(16, n * 1.125) and size_class(c) == c
        b = class_below(n)
        assert b <= n and size_class(b) == b and (b == n or size_class(b + 1) > n)
    pool = BufferPool("cpu", torch.float32)
    a = pool.take((100, 64))
    assert a.shape == (100, 64) and a.is_contiguous()
    spent = pool.allocated_bytes
    pool.give([a], None)
    b = pool.take((98, 65))  # 6370 elements: the same class as 6400
    assert b.data_ptr() == a.data_ptr() and pool.allocated_bytes == spent
    c = pool.take((100, 64))  # the class is in use: a new allocation
    assert c.data_ptr() != b.data_ptr() and pool.allocated_bytes == 2 * spent
    pool.give([torch.empty(7000)], None)  # made elsewhere: joins class 6656, the largest it fills
    assert size_class(6400) == 6656 and pool.take((6656,)).numel() == 6656 and pool.allocated_bytes == 2 * spent
    weights = torch.empty(2, 7000)
    pool.give([weights[0]], None)  # a view into a tensor the pool does not own: never reused
    assert pool.take((6656,)).data_ptr() != weights.data_ptr()


def test_calibration_times_ops_with_the_work_they_do_in_a_run(monkeypatch):
    """Calibration repeats each named op. The embedding copies the request's input again each time
    (it used to copy its buffer onto itself, launching nothing), and the ops that fold the previous
    layer's residual add in (`FOLDING`) fold at every repetition, as in every layer but the first."""
    from hw import kernels
    from hw.calibrate_iterations import named_op
    from hw.collectives import NoCollectives
    from hw.kernels import KernelLibrary
    from hw.weights import Shard
    from sim.layers import epilogue_kernels, layer_kernels, prologue_kernels
    from sim.scenario import ModelSpec

    m = ModelSpec(preset="llama2-7b", hidden=128, heads=2, kv_heads=2, head_dim=64, ffn=256, layers=2,
                  vocab=256).shape()
    lib = KernelLibrary(m, Shard(1, 0), "cpu", torch.float32, NoCollectives(), shape_of={0: (2, 8)}.get,
                        inputs="shared", keep=True)
    specs = {s.name: s for s in prologue_kernels(m, 1, 2, 8) + layer_kernels(m, 1, 2, 8) + epilogue_kernels(m, 1, 2, 8)}
    for s in prologue_kernels(m, 1, 2, 8) + layer_kernels(m, 1, 2, 8):
        lib.run(Kernel(s, 0, 0, 0))
    st = lib.store.states[0]
    x = st.bufs["resid"]
    emb = Kernel(specs["embedding"], 0, 0, -1)
    lib.ops["embedding"](lib, st, emb)
    st.bufs["resid"].zero_()
    lib.ops["embedding"](lib, st, emb)  # copies the input again
    assert torch.equal(st.bufs["resid"], lib.store.input(0, tuple(x.shape)))
    folds = []
    fold = kernels._fold
    monkeypatch.setattr(kernels, "_fold", lambda lib_, st_: (folds.append(1), fold(lib_, st_)))
    for name in ("input_norm", "post_attn_norm"):
        folds.clear()
        for _ in range(3):
            named_op(lib.ops[name], lib, st, Kernel(specs[name], 0, 0, 1))
        assert len(folds) == (3 if name in kernels.FOLDING else 0), name
    # the final norm adds the residual of the last tokens only, every repetition, and leaves the
    # rest pending (the simulator's final norm covers batch x hidden elements)
    for _ in range(2):
        named_op(lib.ops["final_norm"], lib, st, Kernel(specs["final_norm"], 0, 0, 1))
        last = (st.bufs["resid"].view(2, 8, -1)[:, -1] + st.bufs["mlp"].view(2, 8, -1)[:, -1])
        want = torch.nn.functional.rms_norm(last, (m.hidden,), lib.w["normf_g"], 1e-6)
        assert st.fold and torch.allclose(st.bufs["final"], want, atol=1e-5)
    assert not folds


def test_emulated_collectives_logic_on_cpu(monkeypatch):
    """The single-GPU emulation's bookkeeping, with the spin kernel recorded instead of launched:
    an all-reduce copies a ring all-reduce's bytes, a pipeline send one flow's, each for the link
    model's time; a group of one launches nothing; the scratch grows only when asked for more."""
    from types import SimpleNamespace

    from hw import collectives, spin
    from sim.links import build_topology
    from sim.presets import INTERCONNECTS

    launched = []
    monkeypatch.setattr(spin, "HAVE_TRITON", True)
    monkeypatch.setattr(spin, "launch", lambda src, dst, ctas, dur: launched.append((src.numel(), dst.numel(), ctas, dur)))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(multi_processor_count=132))
    topo = build_topology(INTERCONNECTS["nvswitch-h100"], 4)
    comm = collectives.EmulatedCollectives(0, topo, device="cpu")
    t = torch.zeros(1 << 20, dtype=torch.float16)  # 2 MB
    comm.all_reduce(t, (0, 1, 2, 3))
    comm.send(t, (0, 1))
    comm.all_reduce(t, (0,))
    comm.send(t, (0,))
    assert len(launched) == 2
    (ar_src, ar_dst, ar_ctas, ar_s), (s_src, s_dst, s_ctas, s_s) = launched
    assert comm.launched[0][1] == collectives.ring_bytes(2 << 20, 4) and ar_src * 4 >= comm.launched[0][1]
    assert comm.launched[1][1] == 2 << 20 and s_src * 4 >= 2 << 20 and s_dst == s_src
    assert ar_s == pytest.approx(topo.collective_time("all_reduce", (0, 1, 2, 3), 2 << 20))
    assert s_s == pytest.approx(topo.collective_time("send", (0, 1), 2 << 20))
    assert ar_ctas >= 16 and s_ctas >= 16  # NCCL's channels at least
    scratch = comm._scratch.data_ptr()
    comm.reserve(1 << 20, 2)  # smaller than what it holds: kept
    assert comm._scratch.data_ptr() == scratch


def test_warm_up_runs_emulated_all_reduces_and_their_pieces(tmp_path, monkeypatch):
    """With the emulated collective (its spin kernel recorded on CPU), an interleaved plan that
    splits all-reduces warms every all-reduce at its real size and group, and each of its pieces."""
    from types import SimpleNamespace

    import yaml

    from hw import collectives, spin
    from hw.launch import _setup
    from hw.run import Options, Source, build_plan
    from hw.warm import warm_ops

    launched = []
    monkeypatch.setattr(spin, "HAVE_TRITON", True)
    monkeypatch.setattr(spin, "launch", lambda src, dst, ctas, dur: launched.append(dur))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(multi_processor_count=132))
    scn = {"name": "warm-ar", "seed": 1, "hardware": {"gpu": "H100-SXM", "count": 2, "interconnect": "nvswitch-h100"},
           "model": {"preset": "liger-encoder", "hidden": 128, "heads": 2, "kv_heads": 2, "head_dim": 64, "ffn": 256,
                     "layers": 2},
           "policy": {"name": "interleaved", "split_collectives": True},
           "workload": {"kind": "generate", "jobs": 3, "arrival": {"process": "poisson", "rate": 1000}, "batch": 1,
                        "seq_len": 16}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scn))
    plan = build_plan(Source("scenario", str(path)))
    comm = collectives.EmulatedCollectives(0, plan.topology, device="cpu")
    lib = _setup(plan, 0, Options(device="cpu"), comm)
    warm_ops(plan, 0, lib)
    # one job shape; its layer's two all-reduces, each whole and as 35 pieces
    assert len(launched) == 2 * (1 + 35)
    whole = collectives.ring_bytes(16 * 128 * lib.dtype.itemsize, 2)  # a 16-token, 128-wide activation, 2 ranks
    assert sum(n == whole for _, n, _ in comm.launched) == 2 and all(n <= whole for _, n, _ in comm.launched)
    assert not lib.store.states


@pytest.mark.parametrize("policy,split", [("interleaved", 8), ("intra_op", 1)])
def test_generative_warm_up_warms_the_pieces_of_a_splitting_policy(tmp_path, monkeypatch, policy, split):
    """A generative interleaved plan cuts GEMM pieces as the encoder's does: the warm-up runs them
    at every row count up to the iteration budget (in the H100 chunked run, pieces' first launches
    stalled 3-5 ms each); other policies warm whole GEMMs only."""
    import yaml

    from hw import warm
    from hw.collectives import NoCollectives
    from hw.launch import _setup
    from hw.run import Options, Source, build_plan

    scn = {"name": "gw", "seed": 1, "hardware": {"gpu": "H100-SXM", "count": 1, "interconnect": "nvswitch-h100"},
           "model": {"preset": "llama2-7b", "layers": 1, "hidden": 128, "heads": 2, "kv_heads": 2, "head_dim": 64,
                     "ffn": 256, "vocab": 256},
           "workload": {"kind": "generate", "jobs": 3, "arrival": {"process": "poisson", "rate": 1000},
                        "prompt_tokens": {"dist": "uniform", "low": 5, "high": 40},
                        "output_tokens": {"dist": "uniform", "low": 1, "high": 4}},
           "serving": {"mode": "generative", "max_batch_tokens": 32, "chunked_prefill": True, "kv_block_tokens": 8},
           "policy": {"name": policy}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scn))
    plan = build_plan(Source("scenario", str(path)))
    lib = _setup(plan, 0, Options(device="cpu"), NoCollectives())
    got = []
    monkeypatch.setattr(warm, "warm_gemm_sizes", lambda _lib, specs, rows, s=1, sc=False: got.append((rows, s, sc)))
    monkeypatch.setattr(warm, "warm_iterations", lambda *a: 0)
    warm.warm_up(plan, 0, lib)
    assert got == [(32, split, False)]


def test_each_layer_reads_its_own_copy_of_the_gemm_weights(tmp_path):
    """A run gives every layer of its rank its own GEMM weights (same values), as a real model has,
    so that no weight is still in L2 when the next layer runs; results are those of shared weights."""
    import yaml

    from hw.collectives import NoCollectives
    from hw.launch import _run, _setup, rank_layers
    from hw.run import Options, Source, build_plan

    scn = {"name": "own", "seed": 4, "hardware": {"gpu": "H100-SXM", "count": 1, "interconnect": "nvswitch-h100"},
           "model": {"preset": "llama2-7b", "hidden": 128, "heads": 2, "kv_heads": 2, "head_dim": 64, "ffn": 256,
                     "layers": 3, "vocab": 256},
           "workload": {"kind": "generate", "jobs": 2, "arrival": {"process": "poisson", "rate": 1000}, "batch": 1,
                        "seq_len": {"dist": "uniform", "low": 8, "high": 12}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scn))
    plan = build_plan(Source("scenario", str(path)))
    assert rank_layers(plan, 0) == [0, 1, 2]
    lib = _setup(plan, 0, Options(device="cpu"), NoCollectives())
    seen: dict[int, set[int]] = {}
    run = lib.run

    def spy(k):
        run(k)
        if k.spec.kind == "gemm" and k.spec.name != "lm_head":
            seen.setdefault(k.layer, set()).add(lib.w["w_down"].data_ptr())

    lib.run = spy
    _run(plan, 0, Options(device="cpu"), lib, time.perf_counter())
    ptrs = [seen[layer] for layer in (0, 1, 2)]
    assert all(len(p) == 1 for p in ptrs) and len(set.union(*ptrs)) == 3  # one weight per layer, three in all
    by_layer = lib._w_by_layer
    assert torch.equal(by_layer[0]["w_down"], by_layer[2]["w_down"])  # the same values
    assert by_layer[0]["w_lm"].data_ptr() == by_layer[2]["w_lm"].data_ptr()  # the LM head is not copied
