"""Generative serving on the hw backend: continuous batching, chunked prefill, the paged KV
cache and tensor parallelism compute the real thing — every emitted token's logits equal an
unbatched, unsharded reference that prefills each request alone and then decodes it token by
token — for live runs (`hw run`) and replays of recorded IRs (`hw replay`)."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import yaml

torch = pytest.importorskip("torch")

from hw import reference  # noqa: E402
from hw.generative import Composition, PagedKV, embedding_table, reconstruct, token_ids  # noqa: E402
from hw.run import replay_ir, run_scenario  # noqa: E402
from hw.weights import full_weights  # noqa: E402
from sim import ir  # noqa: E402
from sim.errors import LigerSimError  # noqa: E402
from sim.layers import weight_bytes_per_gpu  # noqa: E402
from sim.outputs import write_run  # noqa: E402
from sim.scenario import parse_scenario  # noqa: E402
from sim.serving import kv_bytes_per_token  # noqa: E402
from sim.simulate import iteration_table, load_jobs, prepare, run_meta, simulate  # noqa: E402

# GQA (4 query heads, 2 KV heads: one per rank at tp=2), RoPE, a vocabulary sharded over the ranks
MODEL = {"preset": "llama2-7b", "layers": 2, "hidden": 256, "heads": 4, "kv_heads": 2, "head_dim": 64, "ffn": 512,
         "vocab": 300}


def scenario(count: int = 2, policy: str = "intra_op", jobs: int = 4, seed: int = 1, out_high: int = 8,
             **serving) -> dict:
    return copy.deepcopy({
        "name": f"gen-{policy}", "seed": seed,
        "hardware": {"gpu": "H100-SXM", "count": count, "interconnect": "nvswitch-h100"},
        "model": MODEL,
        "workload": {"kind": "generate", "jobs": jobs, "arrival": {"process": "poisson", "rate": 2000},
                     "prompt_tokens": {"dist": "uniform", "low": 5, "high": 60},
                     "output_tokens": {"dist": "uniform", "low": 1, "high": out_high}},
        # a 32-token budget: prompts are chunked and share iterations with other requests' decodes
        "serving": {"mode": "generative", "max_batch_tokens": 32, "chunked_prefill": True, "kv_block_tokens": 8,
                    **serving},
        "policy": {"name": policy},
    })


def small_cache(d: dict, tokens: int) -> dict:
    """`d` on a GPU whose memory leaves a KV cache of `tokens` tokens (so requests get preempted)."""
    scn = parse_scenario(d)
    m, tp, pp, sv = scn.model.shape(), scn.tp(), scn.pp(), scn.serving
    act = (4 * m.hidden + 2 * m.ffn // tp) * sv.max_batch_tokens * m.dtype_bytes
    need = weight_bytes_per_gpu(m, tp, pp) + act + (tokens + 0.5) * kv_bytes_per_token(m, tp, pp)
    d["hardware"]["gpu"] = {"preset": "H100-SXM", "memory": need / sv.memory_utilization}
    return d


def reference_errors(d: dict, logits_pt, device: str = "cpu") -> dict[int, float]:
    """Relative error of each request's logits (all its tokens) against `reference.generate`.
    Weights and embeddings are drawn where the run drew them (`device`: CUDA's generator gives
    other numbers than the CPU's for the same seed), then compared on the CPU."""
    scn = parse_scenario(d)
    jobs = load_jobs(scn, None)
    m = scn.model.shape()
    w = {k: v.cpu() for k, v in full_weights(m, scn.seed, device).items()}
    emb = embedding_table(m.vocab, m.hidden, scn.seed, device).cpu()
    got = torch.load(logits_pt)
    errors = {}
    for j in jobs:
        p, o = j.prompt_tokens, j.output_tokens
        want = reference.generate(m, w, emb, token_ids(scn.seed, j.request_id, p + o, m.vocab), p, o)
        have = torch.stack([got[(j.request_id, p - 1 + s)] for s in range(o)])
        errors[j.request_id] = float((have - want).norm() / want.norm())
    assert len(got) == sum(j.output_tokens for j in jobs)  # exactly one logits row per emitted token
    return errors


def write_yaml(tmp_path, d: dict):
    path = tmp_path / f"{d['name']}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def sim_run(tmp, d: dict):
    scn = parse_scenario(d)
    jobs = load_jobs(scn, None)
    run = simulate(scn, jobs)
    write_run(tmp, run.events, jobs, run.result.schedule, scn.policy.name, run.result.sim_wall_s,
              {"scenario": scn.name}, trace=False)
    return run


def per_stream(ev: pd.DataFrame) -> dict:
    return {key: g.sort_values(["start_s", "kernel_id"])["kernel_id"].tolist()
            for key, g in ev.groupby(["rank", "stream"])}


@pytest.fixture
def one_thread():
    """In-process CPU runs: one torch thread (tiny GEMMs are slower with a thread pool)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------- two gloo ranks (tensor parallel)
def test_tp_hw_run_matches_the_unbatched_reference(tmp_path):
    d = scenario()
    summary = run_scenario(write_yaml(tmp_path, d), tmp_path / "hw", device="cpu", trace=False, logits=True)
    errors = reference_errors(d, tmp_path / "hw" / "logits.pt")
    assert max(errors.values()) < 1e-4, errors
    # the simulator's output schema, generative columns included, from the run's own batching
    sim_run(tmp_path / "sim", d)
    hw_req, sim_req = pd.read_csv(tmp_path / "hw" / "requests.csv"), pd.read_csv(tmp_path / "sim" / "requests.csv")
    assert list(hw_req.columns) == list(sim_req.columns)
    assert {"ttft_s", "tpot_s", "tokens", "prompt_tokens", "output_tokens"} <= set(hw_req.columns)
    assert (hw_req["tokens"] == hw_req["output_tokens"]).all() and (hw_req["ttft_s"] > 0).all()
    assert summary["completed"] == 4 and summary["tokens"] == hw_req["output_tokens"].sum()
    assert set(json.loads((tmp_path / "sim" / "summary.json").read_text())) <= set(summary) | {"sim_wall_s"}
    meta = ir.load(tmp_path / "hw" / "ir.jsonl").meta  # replayable: it records what each iteration batched
    assert meta["iterations"] and meta["kv_capacity_tokens"] > 0
    assert any(r[3] > 1 and r[4] == 0 for r in meta["iterations"])  # some prompt really was chunked
    info = json.loads((tmp_path / "hw" / "hw.json").read_text())
    assert info["executed_ranks"] == 2
    assert all(r["kv_cache"]["blocks_in_use_at_end"] == 0 and r["kv_cache"]["grown"] == 0 for r in info["ranks"])


@pytest.mark.parametrize("policy", ["interleaved", "inter_op"])
def test_tp_and_pipeline_replays_of_simulated_irs_match_the_reference(tmp_path, policy):
    """Liger's interleaving (two batch groups on two streams, split GEMMs) and a two-stage
    pipeline, recorded by the simulator and executed verbatim."""
    d = scenario(policy=policy, jobs=5)
    run = sim_run(tmp_path / "sim", d)
    replay_ir(tmp_path / "sim" / "ir.jsonl", tmp_path / "hw", device="cpu", trace=False, logits=True)
    errors = reference_errors(d, tmp_path / "hw" / "logits.pt")
    assert max(errors.values()) < 1e-4, errors
    hw = pd.read_parquet(tmp_path / "hw" / "events.parquet")
    assert per_stream(hw) == per_stream(run.events)
    if policy == "interleaved":
        assert (hw["fraction"] < 1).any()  # GEMMs of one group were split to fill the other's all-reduces
    hw_req = pd.read_csv(tmp_path / "hw" / "requests.csv")
    assert (hw_req["tokens"] == hw_req["output_tokens"]).all()


def test_hw_run_of_a_generative_pipeline_on_several_processes_is_a_clear_error(tmp_path):
    with pytest.raises(LigerSimError, match="hw replay"):
        run_scenario(write_yaml(tmp_path, scenario(policy="inter_op")), tmp_path / "hw", device="cpu")


# ---------------------------------------------------------------------- one rank, in process
def test_preempted_requests_are_recomputed_right(tmp_path, one_thread):
    """A KV cache of 96 tokens: sequences are preempted (some in mid-prompt) and recomputed;
    both the live run and the replay of the simulator's IR still produce the reference logits."""
    d = small_cache(scenario(count=1, jobs=10, seed=2, out_high=20, on_kv_full="preempt", max_batch_tokens=8), 96)
    scn = parse_scenario(d)
    jobs = load_jobs(scn, None)
    prepare(scn, jobs)
    run = simulate(scn, jobs)
    write_run(tmp_path / "sim", run.events, jobs, run.result.schedule, "intra_op", None, trace=False)
    assert run.result.meta["kv_capacity_tokens"] == 96
    run_scenario(write_yaml(tmp_path, d), tmp_path / "live", device="cpu", trace=False, logits=True)
    replay_ir(tmp_path / "sim" / "ir.jsonl", tmp_path / "replay", device="cpu", trace=False, logits=True)
    for out in ("live", "replay"):
        errors = reference_errors(d, tmp_path / out / "logits.pt")
        assert max(errors.values()) < 1e-4, (out, errors)
    # the live run really preempted (its scheduler is the simulator's, driven by the hw clock)
    live_meta = ir.load(tmp_path / "live" / "ir.jsonl").meta
    rows = pd.DataFrame(live_meta["iterations"], columns=["it", "g", "rid", "tokens", "emits"])
    assert (rows.groupby("rid")["tokens"].sum() > pd.Series({j.request_id: j.prompt_tokens + j.output_tokens - 1
                                                             for j in jobs})).any()


def _replayed_vs_live(d: dict) -> tuple[int, int]:
    scn = parse_scenario(d)
    jobs = load_jobs(scn, None)
    engine, _, policies, (ctx,) = prepare(scn, jobs)
    result = engine.run(policies, run_meta(scn, jobs))
    sched = ctx.scheduler
    result.meta.update(iterations=iteration_table(sched), kv_capacity_tokens=sched.total_blocks * sched.block)
    live = Composition.live(jobs, sched)
    rebuilt = Composition.replay(jobs, result.meta, result.schedule.ops, scn.serving.kv_block_tokens)
    bad = sum(live.get(i) != rebuilt.get(i) for i in range(len(sched.iterations)))
    return bad, sum(s.preemptions for s in sched.seqs.values())


@pytest.mark.parametrize("seed,tokens,budget", [(2, 96, 8), (3, 80, 12), (4, 96, 8)])
def test_replay_rebuilds_every_iterations_pasts_exactly(seed, tokens, budget):
    d = small_cache(scenario(count=1, jobs=10, seed=seed, out_high=20, on_kv_full="preempt",
                             max_batch_tokens=budget), tokens)
    bad, preemptions = _replayed_vs_live(d)
    assert preemptions > 0 and bad == 0


def test_a_prompt_restarted_in_mid_prefill_is_told_apart_by_the_attention_kernel():
    """Request 0 prefills 8 of its 20 prompt tokens, is preempted, and restarts with 8 tokens:
    the rows alone read as a continuation (past 8); the kernel's skv says past 0."""
    rows = [[0, 0, 0, 8, 0], [1, 0, 0, 8, 0], [2, 0, 0, 12, 1]]
    attn = {0: {"prefill": {"b": 1, "sq": 8, "skv": 8}}, 1: {"prefill": {"b": 1, "sq": 8, "skv": 8}},
            2: {"prefill": {"b": 1, "sq": 12, "skv": 20}}}
    its = reconstruct(rows, {0: 20}, attn)
    assert [p for p, _, _ in its] == [[(0, 8, 0)], [(0, 8, 0)], [(0, 12, 8)]]
    with pytest.raises(LigerSimError, match="prefill_attention"):
        reconstruct(rows, {0: 20}, {**attn, 1: {"prefill": {"b": 1, "sq": 8, "skv": 17}}})
    with pytest.raises(LigerSimError, match="lists 3 requests"):
        reconstruct([[0, 0, 0, 8, 0]] * 3, {0: 20}, {0: {"prefill": {"b": 1, "sq": 8, "skv": 8}}})


def test_paged_kv_allocates_frees_and_grows():
    kv = PagedKV(block=4, capacity_tokens=16, kv_heads=1, head_dim=2, device="cpu", dtype=torch.float32)
    k, _ = kv.layer(0)
    assert k.shape == (4, 4, 1, 2) and (k == 0).all()
    a = kv.ensure(7, 5)  # two blocks
    assert len(a) == 2 and kv.ensure(7, 8) == a and len(kv.ensure(7, 9)) == 3
    k.view(-1, 1, 2)[a[0] * 4] = 3.0
    kv.ensure(8, 8)  # two more: one more than is free, so the pools grow and keep their contents
    assert kv.grown == 1 and kv.blocks > 4 and kv.used_blocks() == 5
    assert (kv.layer(0)[0].view(-1, 1, 2)[a[0] * 4] == 3.0).all()
    kv.drop(7, None)
    assert kv.used_blocks() == 2 and len(kv.ensure(9, 12)) == 3


# ---------------------------------------------------------------------- CUDA (skipped without a GPU)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_generative_run_matches_the_reference(tmp_path):
    d = scenario(count=1, policy="intra_op", jobs=6)
    d["model"] = {**MODEL, "dtype_bytes": 4}  # float32 on the GPU, so the comparison is tight
    run_scenario(write_yaml(tmp_path, d), tmp_path / "hw", device="cuda", trace=False, logits=True)
    errors = reference_errors(d, tmp_path / "hw" / "logits.pt", "cuda")
    assert max(errors.values()) < 1e-3, errors


@cuda
def test_cuda_interleaved_generative_replay_runs_emulated(tmp_path):
    d = scenario(count=4, policy="interleaved", jobs=8)
    sim_run(tmp_path / "sim", d)
    summary = replay_ir(tmp_path / "sim" / "ir.jsonl", tmp_path / "hw", device="cuda", emulate=True, trace=False,
                        logits=True)
    assert summary["completed"] == 8
    info = json.loads((tmp_path / "hw" / "hw.json").read_text())
    assert info["mode"] == "emulate" and info["logits"].startswith("not written")  # one of 4 vocabulary shards
    hw_req = pd.read_csv(tmp_path / "hw" / "requests.csv")
    assert (hw_req["tokens"] == hw_req["output_tokens"]).all()


def test_warm_iterations_run_the_generative_ops_and_leave_the_run_unchanged(tmp_path):
    """Before the clock (on CUDA), synthetic iterations spanning the workload run through the
    library's own generative ops. Afterwards no state, no KV block and no token list is left, and
    the live run still reproduces the unbatched reference's logits."""
    from hw.collectives import NoCollectives
    from hw.launch import _run, _setup
    from hw.run import Options, Source, build_plan
    from hw.warm import warm_iterations

    d = scenario(count=1)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(d))
    plan = build_plan(Source("scenario", str(path)))
    opts = Options(device="cpu", logits=True)
    lib = _setup(plan, 0, opts, NoCollectives())
    ran = []
    op = lib.ops["decode_attention"]
    lib.ops["decode_attention"] = lambda lib_, st, k: (ran.append(k.spec.dims["b"]), op(lib_, st, k))
    n = warm_iterations(plan, 0, lib)
    lib.ops["decode_attention"] = op
    assert n > 3 and len(set(ran)) > 1  # several decode batch sizes went through the real op
    assert not lib.store.states and len(lib.kv.free) == lib.kv.blocks and not lib._token_lists
    assert lib.gen is plan.composition
    result = _run(plan, 0, opts, lib, __import__("time").perf_counter())
    assert result.logits


def test_a_host_probe_before_the_clock_leaves_the_run_unchanged(tmp_path, one_thread, capsys):
    """`--host-probe-jobs`: the run's first jobs run before its clock through the same library;
    their host cost per op goes to hw.json (`host_in_process`) and the measured run that
    follows still reproduces the unbatched reference, from the first request on, leaving no KV
    block behind. A multi-process run is not probed, and says so."""
    d = scenario(count=1, jobs=5)
    path = write_yaml(tmp_path, d)
    summary = run_scenario(path, tmp_path / "hw", device="cpu", trace=False, logits=True, host_probe_jobs=3)
    errors = reference_errors(d, tmp_path / "hw" / "logits.pt")
    assert max(errors.values()) < 1e-4, errors
    assert summary["completed"] == 5
    info = json.loads((tmp_path / "hw" / "hw.json").read_text())
    probe = info["host_in_process"]
    assert probe["jobs"] == 3 and probe["samples"] > 20
    assert {"qkv_proj", "decode_attention", "lm_head"} <= set(probe["launch"])
    assert all(r["kv_cache"]["blocks_in_use_at_end"] == 0 for r in info["ranks"])
    # the measured run's IR and requests are its own: every job once, its clock from zero
    req = pd.read_csv(tmp_path / "hw" / "requests.csv")
    assert sorted(req["request_id"]) == list(range(5))
    assert min(op.t for op in ir.load(tmp_path / "hw" / "ir.jsonl").ops) < 0.5
    run_scenario(write_yaml(tmp_path, scenario(count=2)), tmp_path / "tp", device="cpu", trace=False,
                 host_probe_jobs=2)
    assert "no host probe: a spawn run" in capsys.readouterr().err
    assert "host_in_process" not in json.loads((tmp_path / "tp" / "hw.json").read_text())
    with pytest.raises(LigerSimError, match="must be ≥ 0"):
        run_scenario(path, tmp_path / "neg", device="cpu", trace=False, host_probe_jobs=-1)
