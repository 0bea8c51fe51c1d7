"""Generative serving: prefill + decode with a KV cache and iteration-level batching.

Continuous batching as Orca (Yu et al., OSDI'22) and vLLM (Kwon et al., SOSP'23) do it:
each iteration runs one forward pass over a batch made of every running sequence's next
decode token plus newly admitted prompts (or, with chunked prefill as in Sarathi-Serve,
Agrawal et al., OSDI'24, chunks of them), under a token budget per iteration. The KV cache
holds `kv_block_tokens`-token blocks; admission control either reserves a request's whole
KV footprint up front (`queue`: never preempts) or only its prompt and, when decodes run
out of blocks, preempts the newest sequence and recomputes it later (`preempt`, vLLM's
default recompute policy).

The scheduler is plain Python shared by every rank (ranks must batch identically); the
policies decide *when* it runs and how the iterations' kernels are launched.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from sim.errors import LigerSimError
from sim.jobs import Job
from sim.kernels import KernelSpec
from sim.layers import ModelShape, ffn_activation_elems, iteration_layer, weight_bytes_per_gpu
from sim.schema import Float, StrictModel


class ServingSpec(StrictModel):
    mode: Literal["encoder", "generative"] = Field(
        "encoder", description="encoder: each job is one forward pass of batch x seq_len tokens (Liger's "
        "setting); generative: prefill + output_tokens decode steps with continuous batching.")
    max_batch_tokens: int = Field(8192, ge=1, description="generative: most tokens one iteration processes "
                                  "(decodes count one each).")
    max_batch_seqs: int = Field(256, ge=1, description="generative: most sequences in one iteration.")
    chunked_prefill: bool = Field(False, description="generative: split prompts across iterations so they fit "
                                  "the token budget beside the decodes (Sarathi).")
    kv_block_tokens: int = Field(16, ge=1, description="generative: tokens per KV-cache block.")
    memory_utilization: Float = Field(0.9, gt=0, le=1, description="generative: fraction of GPU memory "
                                      "for weights, activations and KV cache (vLLM's gpu_memory_utilization).")
    on_kv_full: Literal["queue", "preempt"] = Field(
        "queue", description="generative: queue = admit a request only when its prompt + output fit (never "
        "preempts); preempt = admit on its prompt, preempt the newest sequence and recompute it when "
        "decodes run out of blocks (without chunked_prefill a recompute is one pass, so every request's "
        "prompt + output - 1 tokens must fit max_batch_tokens).")
    groups: int = Field(2, ge=1, description="generative interleaved: batch groups whose iterations alternate "
                        "on the main and sub streams (inter_op/hybrid: micro-batch groups, default pp).")
    pipeline_admission: Literal["next_group", "least_loaded"] = Field(
        "next_group", description="generative inter_op/hybrid: next_group = one queue, the group batched next "
        "admits the oldest arrivals (at light load they gather in few groups); least_loaded = an arriving "
        "request joins the micro-batch group with the fewest unfinished requests and waits for that group "
        "(vLLM's pipeline virtual engines).")
    over_context: Literal["allow", "enforce"] = Field(
        "allow", description="Requests longer than model.context: allow = run them as asked (with a warning); "
        "enforce = as vLLM does with max_model_len, reject a prompt that does not leave room for one output "
        "token and stop generation at the context (a job of the encoder setting longer than it is rejected).")
    slo_ttft_s: Float | None = Field(None, gt=0, description="SLO on time to first token, s (for goodput and JPC).")
    slo_tpot_s: Float | None = Field(None, gt=0, description="SLO on mean time per output token, s.")


@dataclass
class Seq:
    rid: int
    arrival_s: float
    prompt: int
    output: int
    group: int = -1
    target: int = 0  # tokens to prefill (prompt, or prompt + generated after a preemption)
    prefilled: int = 0
    generated: int = 0
    blocks: int = 0
    preemptions: int = 0


@dataclass
class Iteration:
    """One forward pass of one batch group: which sequences and how many tokens each."""

    index: int
    group: int
    prefills: list[tuple[int, int, int]] = field(default_factory=list)  # (rid, chunk, past)
    decodes: list[tuple[int, int]] = field(default_factory=list)  # (rid, context incl. the new token)
    emits: list[int] = field(default_factory=list)  # sequences that produce a token at its end
    planned_s: float = 0.0

    @property
    def tokens(self) -> int:
        return sum(c for _, c, _ in self.prefills) + len(self.decodes)


def kv_bytes_per_token(m: ModelShape, tp: int, pp: int) -> float:
    """K and V of one token on one GPU: 2 x its layers x its KV heads x head_dim x bytes."""
    kv_heads = max(1, m.kv_heads // tp)
    return 2.0 * (-(-m.layers // pp)) * kv_heads * m.head_dim * m.dtype_bytes


def kv_capacity_tokens(m: ModelShape, tp: int, pp: int, memory: float, spec: ServingSpec, file: str,
                       in_flight: int = 1) -> int:
    """KV tokens a GPU holds after the weights and the activations of the `in_flight` largest
    iterations that run at once (interleaving keeps one per batch group on the GPU)."""
    weights = weight_bytes_per_gpu(m, tp, pp)
    # activations of the largest iteration (a few hidden-sized and FFN-sized buffers)
    act = (4 * m.hidden + ffn_activation_elems(m, tp)) * spec.max_batch_tokens * m.dtype_bytes * in_flight
    free = memory * spec.memory_utilization - weights - act
    per_token = kv_bytes_per_token(m, tp, pp)
    tokens = int(free // per_token) // spec.kv_block_tokens * spec.kv_block_tokens
    if tokens < spec.kv_block_tokens:
        raise LigerSimError(
            f"no room for a KV cache: {memory * spec.memory_utilization / 1e9:.1f} GB usable per GPU, weights take "
            f"{weights / 1e9:.1f} GB and activations {act / 1e9:.1f} GB at tp={tp}, pp={pp}"
            + (f" ({in_flight} iterations in flight)" if in_flight > 1 else "")
            + "; use more GPUs, a larger GPU or a smaller serving.max_batch_tokens", file=file, field="serving")
    return tokens


class BatchScheduler:
    """Iteration-level batching over `groups` batch groups (one per in-flight iteration).

    Without `bind_on_arrival`, one queue: whichever group is batched next admits the oldest
    arrived requests (interleaving; pipelines with `serving.pipeline_admission: next_group`, where
    the group batched after a busy one takes what arrived meanwhile). With it (`least_loaded`), a
    request joins a group when it arrives, the one with the fewest unfinished requests, and only
    that group's iterations admit it, from that group's own share of the KV blocks (as vLLM adds a
    request to the pipeline virtual engine with the fewest unfinished sequence groups,
    `LLMEngine._add_processed_request`, each holding 1/pp of the blocks)."""

    def __init__(self, jobs: list[Job], spec: ServingSpec, kv_tokens: int, groups: int, file: str = "<scenario>",
                 bind_on_arrival: bool = False, numbering: Iterator[int] | None = None, prefill_only: bool = False):
        self.spec, self.groups, self.file = spec, groups, file
        # disaggregated serving (sim.disaggregation): a prefill replica's scheduler hands each
        # request on after its first token, holding its KV blocks until they have been pushed
        self.prefill_only = prefill_only
        self.handed: list[Seq] = []  # prefilled, to be handed on (taken by the coordinator)
        self.held: dict[int, Seq] = {}  # handed on, blocks held until the push completes
        self.receiving: dict[int, Seq] = {}  # a decode replica's requests whose KV is on its way
        self.bind_on_arrival = bind_on_arrival
        self.bound: list[deque[Seq]] = [deque() for _ in range(groups)]  # arrived, bound, not admitted
        self.unfinished = [0] * groups  # bound requests not yet finished, per group
        self.block = spec.kv_block_tokens
        # bound requests draw on their group's own share of the cache, as each of vLLM's pipeline
        # virtual engines gets 1/pp of the blocks (its `Scheduler`); otherwise one pool
        pools = groups if bind_on_arrival else 1
        self.free = [kv_tokens // self.block // pools] * pools  # free blocks per pool
        self.total_blocks = self.free[0] * pools
        self.waiting: deque[Seq] = deque()
        self.seqs: dict[int, Seq] = {}
        # iteration numbers: data-parallel replicas draw from one sequence (kernels carry them)
        self.numbering = numbering if numbering is not None else itertools.count()
        self.router: Router | None = None  # least-loaded routing: adds requests as they arrive
        self.running: list[Seq] = []  # admission order
        self.iterations: list[Iteration] = []
        # (time, KV tokens allocated) whenever it changes hands: at each plan, and when a completed
        # iteration frees finished sequences' blocks (in queue mode a request's whole reservation)
        self.kv_log: list[tuple[float, int]] = []
        self._preemptions = 0
        self.in_flight: set[int] = set()  # groups with a planned iteration not yet completed
        for j in jobs:
            self.check(j)
            self.add(j)

    def check(self, j: Job) -> None:
        """Refuse, naming the field, a request this server could never serve."""
        spec, file = self.spec, self.file
        pools = len(self.free)
        most = self.free[0] * self.block  # what one request can hold at most
        prompt = j.prompt
        if j.batch != 1:
            raise LigerSimError(f"request {j.request_id} has batch {j.batch}: a generative request is one "
                                "sequence (give each its own row, or serving.mode: encoder)", file=file,
                                field="workload.batch")
        if j.prompt_tokens < 1:
            raise LigerSimError(f"request {j.request_id} has an empty prompt (prompt_tokens 0); a generative "
                                "request needs at least one prompt token", file=file,
                                field="workload.prompt_tokens")
        if j.output_tokens < 1:
            raise LigerSimError(f"request {j.request_id} asks for {j.output_tokens} output tokens; generative "
                                "serving needs at least 1", file=file, field="workload.output_tokens")
        need = prompt if self.prefill_only else prompt + j.output_tokens  # a prefill replica holds the prompt
        if need > most:
            share = f" ({most} in each of {pools} groups' shares)" if pools > 1 else ""
            where = "a prefill replica's" if self.prefill_only else "the"
            raise LigerSimError(
                f"request {j.request_id} needs {need} tokens of KV cache but {where} cache holds "
                f"{self.total_blocks * self.block} per GPU{share}; use more GPUs or shorter requests", file=file,
                field="workload")
        if prompt > spec.max_batch_tokens and not spec.chunked_prefill:
            raise LigerSimError(
                f"request {j.request_id} has a {prompt}-token prompt, more than serving.max_batch_tokens="
                f"{spec.max_batch_tokens}; raise it or set serving.chunked_prefill: true", file=file,
                field="serving.max_batch_tokens")
        longest = prompt + j.output_tokens - 1  # recomputed in one pass after a late preemption
        if spec.on_kv_full == "preempt" and not spec.chunked_prefill and longest > spec.max_batch_tokens:
            raise LigerSimError(
                f"request {j.request_id} may have to be recomputed as {longest} tokens (prompt + output - 1) "
                f"after a preemption, more than serving.max_batch_tokens={spec.max_batch_tokens} (vLLM asks "
                "max_num_batched_tokens >= max_model_len for the same reason); raise it, set "
                "serving.chunked_prefill: true, or serving.on_kv_full: queue", file=file,
                field="serving.max_batch_tokens")

    def add(self, j: Job) -> None:
        """Queue a request (checked) as arrived at its arrival time."""
        s = Seq(j.request_id, j.arrival_s, j.prompt, j.output_tokens, target=j.prompt)
        self.seqs[s.rid] = s
        self.waiting.append(s)

    # -------------------------------------------------------------- queries
    def next_arrival(self) -> float | None:
        """When the oldest request not yet admitted arrived or arrives."""
        heads = [q[0].arrival_s for q in self.bound if q]
        if self.waiting:
            heads.append(self.waiting[0].arrival_s)
        if self.router is not None and self.router.pending():  # the next request may come here
            heads.append(self.router.next_arrival())
        return min(heads) if heads else None

    def load(self) -> int:
        """4 x waiting + running requests, as vLLM's data-parallel load balancer weighs an engine
        (a decode replica's requests whose KV is on its way count as waiting)."""
        return 4 * (len(self.waiting) + sum(map(len, self.bound)) + len(self.receiving)) + len(self.running)

    def done(self) -> bool:
        return (not self.waiting and not self.running and not any(self.bound) and not self.receiving
                and (self.router is None or not self.router.pending()))

    def group_has_work(self, group: int, now: float) -> bool:
        if any(s.group == group for s in self.running):
            return True
        self._bind(now)
        queue = self._queue(group)
        return bool(queue and queue[0].arrival_s <= now)

    def _bind(self, now: float) -> None:
        """Bind every request that has arrived by `now` to the group with the fewest unfinished
        requests (the lowest-numbered on a tie), when binding on arrival. Counts change only in
        scheduler calls, so binding at the first call after an arrival is binding at the arrival.
        Requests routed among replicas are routed first, by the same argument."""
        if self.router is not None:
            self.router.route(now)
        while self.bind_on_arrival and self.waiting and self.waiting[0].arrival_s <= now:
            s = self.waiting.popleft()
            s.group = min(range(self.groups), key=self.unfinished.__getitem__)
            self.unfinished[s.group] += 1
            self.bound[s.group].append(s)

    def _queue(self, group: int) -> deque[Seq]:
        """The requests `group` may admit, oldest first."""
        return self.bound[group] if self.bind_on_arrival else self.waiting

    # -------------------------------------------------------------- planning
    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block)

    @property
    def free_blocks(self) -> int:
        return sum(self.free)

    def _pool(self, s: Seq) -> int:
        """The pool of KV blocks `s` draws on: its group's when bound on arrival."""
        return s.group if self.bind_on_arrival else 0

    def _grow(self, s: Seq, tokens: int) -> bool:
        need = self._blocks_for(tokens) - s.blocks
        if need <= 0:
            return True
        pool = self._pool(s)
        if need > self.free[pool]:
            return False
        self.free[pool] -= need
        s.blocks += need
        return True

    def _preempt(self, group: int, scheduled: set[int]) -> bool:
        """Free the newest sequence not in this iteration nor in another group's iteration
        still on the GPU, to be recomputed later (its prompt and generated tokens are
        prefilled again)."""
        for victim in reversed(self.running):
            # bound on arrival, only its own group's sequences free blocks of its pool
            others = not self.bind_on_arrival and victim.group not in self.in_flight
            if victim.rid not in scheduled and (victim.group == group or others):
                self.running.remove(victim)
                self.free[self._pool(victim)] += victim.blocks
                victim.blocks = victim.prefilled = 0
                victim.target = victim.prompt + victim.generated
                victim.preemptions += 1
                self._preemptions += 1
                if self.bind_on_arrival:  # it stays in its group, first to be readmitted
                    self.bound[victim.group].appendleft(victim)
                else:
                    victim.group = -1
                    self.waiting.appendleft(victim)
                return True
        return False

    def plan(self, now: float, group: int) -> Iteration | None:
        """The next iteration of `group`, whose previous iteration has completed."""
        self._bind(now)
        queue = self._queue(group)
        it = Iteration(-1, group, planned_s=now)
        budget, room = self.spec.max_batch_tokens, self.spec.max_batch_seqs
        scheduled: set[int] = set()
        preempted = self._preemptions
        for s in [s for s in self.running if s.group == group]:
            if s not in self.running or budget < 1 or room < 1:
                continue  # preempted meanwhile, or the iteration is full
            if s.prefilled == s.target:  # decode: its next token, whose KV is written now
                ctx = s.prompt + s.generated
                fits = self._grow(s, ctx)
                while not fits and self.spec.on_kv_full == "preempt" and self._preempt(group, scheduled | {s.rid}):
                    fits = self._grow(s, ctx)
                if not fits:
                    continue  # queue mode reserved its blocks, so this only happens when preempting ran dry
                it.decodes.append((s.rid, ctx))
                it.emits.append(s.rid)
                budget -= 1
            else:  # a prompt being prefilled in chunks
                chunk = min(s.target - s.prefilled, budget)
                it.prefills.append((s.rid, chunk, s.prefilled))
                if s.prefilled + chunk == s.target:
                    it.emits.append(s.rid)
                budget -= chunk
            scheduled.add(s.rid)
            room -= 1
        # after preempting, admit nothing this iteration (vLLM does the same): the freed blocks
        # go to the running decodes, or the victim would be readmitted and preempted forever
        while (self._preemptions == preempted and queue and queue[0].arrival_s <= now
               and room > 0 and budget > 0):
            s = queue[0]
            chunk = min(s.target, budget) if self.spec.chunked_prefill else s.target
            if chunk > budget:
                break
            reserve = (s.target if self.prefill_only  # the first token's KV is written where it decodes
                       else s.prompt + s.output if self.spec.on_kv_full == "queue" else s.target + 1)
            if self._blocks_for(reserve) > self.free[self._pool(s)]:
                break
            queue.popleft()
            self._grow(s, reserve)
            s.group = group
            self.running.append(s)
            it.prefills.append((s.rid, chunk, 0))
            if chunk == s.target:
                it.emits.append(s.rid)
            scheduled.add(s.rid)
            budget -= chunk
            room -= 1
        if not it.prefills and not it.decodes:
            if (not self.running and not self.in_flight and not self.held and not self.receiving and queue
                    and queue[0].arrival_s <= now):
                raise LigerSimError(f"the scheduler cannot admit request {queue[0].rid} with nothing else "
                                    "running (a bug: the checks at start should have refused it)")
            return None
        self._log(now)
        it.index = next(self.numbering)
        self.iterations.append(it)
        self.in_flight.add(group)
        return it

    def _log(self, now: float) -> None:
        used = (self.total_blocks - self.free_blocks) * self.block
        if self.kv_log and self.kv_log[-1][0] == now:
            self.kv_log[-1] = (now, used)
        elif not self.kv_log or self.kv_log[-1][1] != used:
            self.kv_log.append((now, used))

    def complete(self, it: Iteration, now: float) -> None:
        """Apply an iteration's results: prompts advance, tokens are emitted, finished
        sequences free their KV blocks (logged at `now`, when the host learns of it)."""
        self._bind(now)
        self.in_flight.discard(it.group)
        for rid, chunk, _ in it.prefills:
            self.seqs[rid].prefilled += chunk
        for rid in it.emits:
            self.seqs[rid].generated += 1
        for rid in sorted({r for r, *_ in it.prefills} | {r for r, _ in it.decodes}):
            s = self.seqs[rid]
            if s not in self.running:
                continue
            if self.prefill_only and s.generated < s.output and s.prefilled == s.target:
                self.running.remove(s)  # its first token is out: on to a decode replica
                self.held[rid] = s
                self.handed.append(s)
            elif s.generated >= s.output:
                self.running.remove(s)
                self.free[self._pool(s)] += s.blocks
                s.blocks = 0
                if self.bind_on_arrival:
                    self.unfinished[s.group] -= 1
        self._log(now)

    # -------------------------------------------------------------- disaggregation
    def release(self, rid: int, now: float) -> None:
        """A prefill replica: request `rid`'s KV has been pushed, so its blocks are free."""
        s = self.held.pop(rid)
        self.free[self._pool(s)] += s.blocks
        s.blocks = 0
        self._log(now)

    def accept(self, s: Seq, now: float) -> bool:
        """A decode replica: take prefilled request `s` if its blocks fit (its prompt and output
        with `on_kv_full: queue`, else its prompt and next token), it can run beside the others
        (`max_batch_seqs`), and no request of its own waits to be recomputed; its KV is pushed into
        those blocks, and it decodes once `received`."""
        need = s.prompt + s.output if self.spec.on_kv_full == "queue" else s.prompt + 1
        if (self.waiting  # its own preempted requests come back first, as vLLM readmits them
                or len(self.running) + len(self.receiving) >= self.spec.max_batch_seqs  # as vLLM's max_num_seqs
                or self._blocks_for(need) > self.free[0]):
            return False
        q = Seq(s.rid, s.arrival_s, s.prompt, s.output, group=0, target=s.prompt, prefilled=s.prompt,
                generated=1)  # its first token comes from the prefill replica
        self._grow(q, need)
        self.seqs[q.rid] = self.receiving[q.rid] = q
        self._log(now)
        return True

    def received(self, rid: int) -> None:
        """A decode replica: request `rid`'s KV has arrived; it decodes from the next iteration."""
        self.running.append(self.receiving.pop(rid))


class Router:
    """Sends each request, when it arrives, to the data-parallel replica with the lowest load,
    4 x waiting + running requests, the lowest-numbered on a tie: vLLM's data-parallel load
    balancer (`DPLBAsyncMPClient.get_core_engine_for_request` in vllm/v1/engine/core_client.py),
    with each replica's counts as they are at the arrival, where vLLM's front end reads counts
    its coordinator publishes every 100 ms. A replica's counts change only in its scheduler's
    calls, each of which first routes every request that has arrived by its time, so routing at
    the first call after an arrival is routing at the arrival."""

    def __init__(self, jobs: list[Job], replicas: list[BatchScheduler]):
        if any(b.arrival_s < a.arrival_s for a, b in zip(jobs, jobs[1:])):
            raise LigerSimError("the router takes requests in arrival order: sort the jobs by arrival_s",
                                field="workload")
        self.jobs, self.replicas, self.next = jobs, replicas, 0
        for sched in replicas:
            sched.router = self
        for j in jobs:  # every replica is alike: refuse what none could serve before the run
            replicas[0].check(j)

    def pending(self) -> bool:
        return self.next < len(self.jobs)

    def next_arrival(self) -> float:
        return self.jobs[self.next].arrival_s

    def route(self, now: float) -> None:
        jobs, replicas = self.jobs, self.replicas
        while self.next < len(jobs) and jobs[self.next].arrival_s <= now:
            min(replicas, key=BatchScheduler.load).add(jobs[self.next])
            self.next += 1


def iteration_kernels(m: ModelShape, tp: int, it: Iteration) -> list[KernelSpec]:
    """One layer's kernels for an iteration."""
    return iteration_layer(m, tp, [(c, past) for _, c, past in it.prefills], [c for _, c in it.decodes])
