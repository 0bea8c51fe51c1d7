"""The scenario schema (pydantic) and its loader: YAML in, a validated `Scenario` out.

Hardware, interconnect, model, host and contention sections accept a preset name
(`gpu: H100-SXM`) or a mapping that names a preset and overrides fields
(`gpu: {preset: A100-PCIe, memory: 40e9}`), or a full mapping without a preset.
"""

from __future__ import annotations

import itertools
import typing
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from sim.errors import LigerSimError
from sim.layers import ModelShape, activation_bytes_per_gpu, tp_errors, weight_bytes_per_gpu
from sim.presets import PRESETS
from sim.reference import models_in
from sim.schema import EXPECTED, Float, StrictModel
from sim.serving import ServingSpec
from sim.workload import GenerateWorkload, TraceWorkload, WorkloadConfig

KernelClass = Literal["compute", "memory", "collective", "copy"]


def _preset(section: str, label: str):
    """A before-validator turning a preset name or {preset: NAME, ...} into full fields."""

    def resolve(value: Any) -> Any:
        table = PRESETS[section]
        if isinstance(value, str):
            name, overrides = value, {}
        elif isinstance(value, dict) and "preset" in value:
            overrides = dict(value)
            name = overrides.pop("preset")
        else:
            return value
        if name not in table:
            raise ValueError(f"unknown {label} preset {name!r}; allowed: {', '.join(table)}")
        return {**table[name], **overrides}

    return resolve


class GpuSpec(StrictModel):
    name: str = Field(description="GPU name (a preset: H100-SXM, H200-SXM, A100-SXM, A100-PCIe, V100-SXM2).")
    peak_flops: Float = Field(gt=0, description="Peak dense FP16/BF16 tensor throughput, FLOP/s.")
    hbm_bw: Float = Field(gt=0, description="Peak HBM bandwidth, bytes/s.")
    memory: Float = Field(gt=0, description="Device memory, bytes.")
    sms: int = Field(ge=1, description="Streaming multiprocessors.")
    _pre = model_validator(mode="before")(classmethod(lambda cls, v: _preset("gpu", "GPU")(v)))


class InterconnectSpec(StrictModel):
    name: str = Field(description="Interconnect name (a preset: " + ", ".join(PRESETS["interconnect"]) + ").")
    kind: Literal["switch", "pairwise", "mesh", "pcie", "multinode"] = Field(
        description="switch: NVSwitch crossbar; pairwise: a direct link per pair; mesh: NVLink bricks per "
        "pair (DGX-1 cube-mesh); pcie: per-GPU x16 links through a shared host bridge; multinode: nodes of "
        "gpus_per_node GPUs on NVSwitch, each GPU with its own NIC (or nics_per_node NICs) on a non-blocking "
        "network (GPU i in node i // gpus_per_node; a last node may be partly filled).")
    link_bw: Float = Field(gt=0, description="Bandwidth of one link per direction, bytes/s.")
    bridge_bw: Float | None = Field(None, gt=0, description="pcie: host bridge bandwidth shared by all flows, bytes/s.")
    fallback_bw: Float | None = Field(None, gt=0, description="mesh: bandwidth between GPUs without NVLink, bytes/s.")
    mesh: list[list[int]] | None = Field(None, description="mesh: NVLink bricks between each GPU pair.")
    gpus_per_node: int | None = Field(None, ge=1, description="multinode: GPUs in one node.")
    nic_bw: Float | None = Field(None, gt=0, description="multinode: each NIC's bandwidth per direction, bytes/s.")
    nics_per_node: int | None = Field(None, ge=1, description="multinode: NICs in one node, dividing "
                                      "gpus_per_node; GPUs share them in contiguous blocks (local GPU j uses NIC "
                                      "j // (gpus_per_node / nics_per_node)). Default: one per GPU.")
    net_step_latency_s: Float | None = Field(None, ge=0, description="multinode: latency of a ring step between "
                                             "nodes, s (a step inside a node costs step_latency_s).")
    max_gpus: int = Field(8, ge=1, description="Most GPUs this interconnect joins.")
    step_latency_s: Float = Field(ge=0, description="Latency of one ring step (α), s.")
    base_latency_s: Float = Field(0.0, ge=0, description="Fixed latency of a collective call, s.")
    _pre = model_validator(mode="before")(classmethod(lambda cls, v: _preset("interconnect", "interconnect")(v)))

    @model_validator(mode="after")
    def _kind_fields(self) -> InterconnectSpec:
        if self.kind == "pcie" and self.bridge_bw is None:
            raise ValueError("kind 'pcie' needs bridge_bw (bytes/s)")
        if self.kind == "mesh" and not self.mesh:
            raise ValueError("kind 'mesh' needs mesh (NVLink bricks per GPU pair)")
        if self.kind == "multinode":
            missing = [f for f in ("gpus_per_node", "nic_bw", "net_step_latency_s") if getattr(self, f) is None]
            if missing:
                raise ValueError(f"kind 'multinode' needs {', '.join(missing)}")
            if self.nics_per_node is not None and self.gpus_per_node % self.nics_per_node:
                raise ValueError(f"nics_per_node ({self.nics_per_node}) must divide gpus_per_node "
                                 f"({self.gpus_per_node})")
        else:  # set on another kind they would change nothing, silently
            given = [f for f in _MULTINODE_FIELDS if getattr(self, f) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} only apply to kind 'multinode' (this is kind '{self.kind}')")
        return self

    @model_serializer(mode="wrap")
    def _without_unused_multinode(self, handler):
        """The multinode fields only where given: a run's recorded scenario (IR header, summary) of
        another kind stays as it was before they existed."""
        out = handler(self)
        for name in _MULTINODE_FIELDS:
            if out.get(name, 0) is None:
                del out[name]
        return out


_MULTINODE_FIELDS = ("gpus_per_node", "nic_bw", "nics_per_node", "net_step_latency_s")


class HostSpec(StrictModel):
    name: str = Field("default", description="Host preset name.")
    launch_s: Float = Field(ge=0, description="Host time to launch a kernel or record/wait an event, s.")
    sync_wakeup_s: Float = Field(ge=0, description="Delay from an event completing to the blocked host resuming, s.")
    kernel_overhead_s: Float = Field(ge=0, description="Fixed GPU time added to every non-collective kernel, s.")
    _pre = model_validator(mode="before")(classmethod(lambda cls, v: _preset("host", "host")(v)))


class ContentionPair(StrictModel):
    victim: KernelClass = Field(description="Class of the kernel that is slowed.")
    other: KernelClass = Field(description="Class of the kernel running beside it.")
    slowdown: Float = Field(ge=1.0, description="How many times longer the victim takes (≥ 1).")
    priority: Literal["any", "higher", "lower", "equal"] = Field(
        "any", description="Victim's stream priority relative to the other's; `any` matches all.")


class ContentionSpec(StrictModel):
    name: str = Field("custom", description="Contention preset name (default, none).")
    pairs: list[ContentionPair] = Field(description="Slowdown factors per kernel-class pair.")
    _pre = model_validator(mode="before")(classmethod(lambda cls, v: _preset("contention", "contention")(v)))


# Sections a scenario may leave out that then stand for a preset (a sweep that sets one of their
# fields starts from it, not from nothing).
DEFAULT_PRESETS = {"hardware.host": "default", "hardware.contention": "default"}


class Hardware(StrictModel):
    gpu: GpuSpec = Field(description="GPU preset name or fields.")
    count: int = Field(ge=1, description="Number of GPUs.")
    interconnect: InterconnectSpec = Field(description="Interconnect preset name or fields.")
    host: HostSpec = Field(default_factory=lambda: HostSpec.model_validate(DEFAULT_PRESETS["hardware.host"]),
                           description="Host launch/sync costs.")
    contention: ContentionSpec = Field(default_factory=lambda: ContentionSpec.model_validate(
        DEFAULT_PRESETS["hardware.contention"]),
                                       description="Contention table.")
    profile: str | None = Field(None, description="Calibrated profile (`ligersim calibrate`), relative to the "
                                "scenario's folder: measured kernel costs, and host costs and contention table "
                                "unless `host` / `contention` are set here.")

    @model_validator(mode="after")
    def _fits_interconnect(self) -> Hardware:
        if self.count > self.interconnect.max_gpus:
            raise ValueError(f"count={self.count} exceeds interconnect {self.interconnect.name}'s "
                             f"max_gpus={self.interconnect.max_gpus}")
        if self.interconnect.mesh is not None and len(self.interconnect.mesh) < self.count:
            raise ValueError(f"interconnect mesh describes {len(self.interconnect.mesh)} GPUs, count={self.count}")
        return self


class ModelSpec(StrictModel):
    name: str = Field(description="Model name (a preset: " + ", ".join(PRESETS["model"]) + ").")
    arch: Literal["encoder", "decoder"] = Field(description="Layer type: encoder (Liger) or decoder (LLaMA/OPT).")
    layers: int = Field(ge=1, description="Transformer layers.")
    hidden: int = Field(ge=1, description="Hidden size.")
    heads: int = Field(ge=1, description="Attention (query) heads.")
    kv_heads: int = Field(ge=1, description="Key/value heads (GQA when < heads).")
    head_dim: int = Field(ge=1, description="Dimension of one head.")
    ffn: int = Field(ge=1, description="FFN inner width (a mixture of experts: each expert's).")
    gated: bool = Field(description="Gated FFN (SwiGLU/GeGLU: two up projections).")
    vocab: int = Field(ge=0, description="Vocabulary size (embedding and LM head weights).")
    norm: Literal["layernorm", "rmsnorm"] = Field(description="Normalisation kernel.")
    rope: bool = Field(description="Rotary position embedding kernel.")
    dtype_bytes: int = Field(2, ge=1, le=8, description="Bytes per element (2 = fp16/bf16).")
    context: int = Field(0, ge=0, description="Context length: tokens per sequence (prompt + output) the model "
                         "was trained for; 0 = not given. Longer requests run as asked, with a warning, unless "
                         "serving.over_context is `enforce`.")
    experts: int = Field(0, ge=0, description="Mixture of experts: routed experts per layer, each a (gated) FFN "
                         "of width ffn; 0 = a dense FFN.")
    experts_per_token: int = Field(0, ge=0, description="Mixture of experts: experts each token is routed to "
                                   "(top-k); 1 to experts.")
    _pre = model_validator(mode="before")(classmethod(lambda cls, v: _preset("model", "model")(v)))

    @model_validator(mode="after")
    def _heads(self) -> ModelSpec:
        if self.heads % self.kv_heads:
            raise ValueError(f"kv_heads={self.kv_heads} must divide heads={self.heads}")
        if self.experts and not 1 <= self.experts_per_token <= self.experts:
            raise ValueError(f"experts_per_token={self.experts_per_token} must be 1 to experts={self.experts}")
        if not self.experts and self.experts_per_token:
            raise ValueError(f"experts_per_token={self.experts_per_token} without experts: set model.experts too")
        if self.experts and self.arch != "decoder":
            raise ValueError("mixture-of-experts layers are modelled for decoder models only (arch: decoder)")
        return self

    def shape(self) -> ModelShape:
        return ModelShape(**self.model_dump())


POLICIES = ("intra_op", "in_order", "inter_op", "interleaved", "hybrid")


class PolicySpec(StrictModel):
    name: str = Field("intra_op", description="Scheduling policy: " + ", ".join(POLICIES) + " (in_order is "
                      "intra_op's old name).")
    tp: int | None = Field(None, ge=1, description="Tensor-parallel degree (default: all GPUs; inter_op: 1; "
                           "hybrid: required).")
    pp: int | None = Field(None, ge=1, description="Pipeline stages (default: GPUs / tp for inter_op and hybrid, "
                           "1 otherwise).")
    depth: int = Field(6, ge=1, description="interleaved: most jobs in flight at once.")
    split: int = Field(8, ge=1, description="interleaved: GEMMs split along N into k/split pieces; 1 disables it.")
    split_collectives: bool = Field(False, description="interleaved: also split all-reduces into k/split of "
                                    "their payload to fit budgets (an extension; Liger splits GEMMs only).")
    contention: float | Literal["table"] = Field(
        0.8, description="interleaved: scalar factor on the fill budget (Liger: 0.8), or `table` to cost each "
        "fill kernel with the contention table.")
    microbatches: int = Field(1, ge=1, description="inter_op/hybrid: micro-batches each job's batch is cut into.")
    dp: int = Field(1, ge=1, description="Data-parallel replicas: copies of the model, each on hardware.count / dp "
                    "GPUs sharded by tp and pp (replica r holds GPUs r x tp x pp onwards); a router sends each "
                    "request to one of them.")
    router: Literal["round_robin", "least_loaded"] = Field(
        "round_robin", description="dp > 1: round_robin = request i goes to replica i mod dp; least_loaded = to "
        "the replica with the lowest 4 x waiting + running requests when it arrives, the lowest index on a tie "
        "(vLLM's data-parallel load balancer; generative serving only).")
    prefill_replicas: int = Field(0, ge=0, description="Disaggregated serving (generative, intra_op): the first "
                                  "this many of the dp replicas only prefill and push each request's KV cache to "
                                  "one of the others, which only decode (DistServe, Splitwise); the router spreads "
                                  "arrivals over the prefill replicas. 0: every replica does both.")
    kv_transfer: Literal["after_prefill", "layerwise"] = Field(
        "after_prefill", description="Disaggregated serving: after_prefill = push a request's KV cache once its "
        "prefill has ended (DistServe, vLLM's NIXL connector); layerwise = place it on a decode replica when its "
        "prefill starts and push each layer's KV as that layer is computed (Splitwise, Mooncake), where a decode "
        "replica has room then.")
    prefill_tp: int | None = Field(None, ge=1, description="Disaggregated serving: the prefill replicas' TP degree "
                                   "when it differs from the decode replicas' (policy.tp, then required); "
                                   "prefill_replicas x prefill_tp + (dp - prefill_replicas) x tp = hardware.count.")
    expert_parallel: bool = Field(False, description="Mixture-of-experts models: each rank of a TP group holds "
                                  "experts / tp whole experts and computes the tokens routed to them (vLLM's "
                                  "enable_expert_parallel), instead of a 1/tp slice of every expert; the ranks wait "
                                  "for the busiest at the all-reduce after the experts.")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in POLICIES:
            raise ValueError(f"unknown policy {v!r}; allowed: {', '.join(POLICIES)}")
        return v

    @field_validator("contention", mode="before")
    @classmethod
    def _factor(cls, v: Any) -> Any:
        """One message for the whole float | 'table' union (pydantic would report each branch's)."""
        if v != "table" and (isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 10):
            raise ValueError("must be a factor in (0, 10] or 'table'")
        return v

    def degrees(self, gpus: int) -> tuple[int, int]:
        """(tp, pp) this policy shards one replica with, on `gpus` GPUs in all."""
        gpus = max(1, gpus // self.dp)
        if self.name in ("inter_op", "hybrid"):
            tp = self.tp or 1
            return tp, self.pp or max(1, gpus // tp)
        return self.tp or gpus, self.pp or 1


class Scenario(StrictModel):
    name: str = Field("scenario", description="Label used in outputs and plot titles.")
    seed: int = Field(0, ge=0, lt=2**63, description="Seed of every random draw (same seed, same result).")
    hardware: Hardware
    model: ModelSpec
    workload: WorkloadConfig
    policy: PolicySpec = Field(default_factory=PolicySpec)
    serving: ServingSpec = Field(default_factory=ServingSpec, description="How jobs are served: encoder "
                                 "forward passes, or generative prefill + decode with continuous batching.")

    def tp(self) -> int:
        return self.policy.degrees(self.hardware.count)[0]

    def pp(self) -> int:
        return self.policy.degrees(self.hardware.count)[1]

    def model_shape(self) -> ModelShape:
        """The model as the kernel lists need it, with the policy's expert sharding."""
        m = self.model.shape()
        return replace(m, expert_parallel=True) if self.policy.expert_parallel else m

    def replica_gpus(self) -> int:
        """GPUs one data-parallel replica holds (tp x pp; a decode replica's when disaggregated)."""
        return self.tp() * self.pp()

    def replicas(self) -> list[tuple[int, int]]:
        """(first GPU, GPUs) of each data-parallel replica in order: the prefill replicas first
        (`policy.prefill_tp` GPUs each, when given), then the others (tp x pp)."""
        pol, per = self.policy, self.replica_gpus()
        sizes = [pol.prefill_tp or per] * pol.prefill_replicas + [per] * (pol.dp - pol.prefill_replicas)
        return list(zip(itertools.accumulate([0, *sizes[:-1]]), sizes))


def _tags(model: type[BaseModel]) -> set:
    """The values of a model's Literal fields: what a tagged union names this member by."""
    return {v for f in model.model_fields.values() if typing.get_origin(f.annotation) is Literal
            for v in typing.get_args(f.annotation)}


def _walk(loc: tuple) -> tuple[list[str], list[type[BaseModel]]]:
    """The field path of a pydantic error location and the models its end can be.

    pydantic puts union tags in locations ('generate', 'poisson', 'int', 'uniform', "literal['table']");
    a part that is no field of the models reached so far is such a tag: it is dropped from the path and
    narrows the models to the union members it names (so an unknown key can list the allowed ones)."""
    path: list[str] = []
    models: list[type[BaseModel]] = [Scenario]
    for part in loc:
        owner = next((m for m in models if part in m.model_fields), None)
        if owner is not None:
            path.append(part)
            models = models_in(owner.model_fields[part].annotation)
        elif isinstance(part, int):  # a list index
            path.append(str(part))
        else:
            models = [m for m in models if part in _tags(m)] or models
    return path, models


def format_validation_error(err: ValidationError, file: str) -> LigerSimError:
    e = err.errors()[0]
    loc = e["loc"]
    path, models = _walk(loc[:-1] if e["type"] == "extra_forbidden" else loc)
    if e["type"] == "extra_forbidden":
        path.append(str(loc[-1]))
        allowed = list(models[0].model_fields) if len(models) == 1 else []
        msg = f"unknown field {loc[-1]!r}" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    elif e["type"] == "missing":
        msg = "required field is missing"
    elif e["type"] == "union_tag_invalid":  # e.g. {dist: normal}
        key = e["ctx"]["discriminator"].strip("'")
        msg = f"unknown {key} {e['ctx']['tag']!r}; allowed: {e['ctx']['expected_tags']}"
    elif e["type"] == "union_tag_not_found":  # e.g. {low: 1, high: 4} without dist
        key = e["ctx"]["discriminator"].strip("'")
        tags = [repr(t) for m in models if key in m.model_fields for t in typing.get_args(m.model_fields[key].annotation)]
        msg = f"needs {key}" + (f": one of {', '.join(tags)}" if tags else "")
    elif e["type"] in EXPECTED:  # strict types (sim.schema): say what the field takes, and that a boolean is none
        got = e.get("input")
        msg = f"must be {EXPECTED[e['type']]}" + (", not true or false" if isinstance(got, bool) else
                                                  f" (got {got!r})" if not isinstance(got, dict | list) else "")
    else:
        msg = e["msg"].removeprefix("Value error, ")
        if "input" in e and not isinstance(e["input"], dict | list):  # as YAML writes it: true, not True
            msg += f" (got {str(e['input']).lower() if isinstance(e['input'], bool) else repr(e['input'])})"
    more = len(err.errors()) - 1
    return LigerSimError(msg + (f" (and {more} more problem{'s' * (more > 1)})" if more else ""),
                         file=file, field=".".join(path) or "(top level)")


def _check_disaggregation(scn: Scenario, file: str) -> None:
    """The disaggregation fields: `kv_transfer` and `prefill_tp` only with prefill replicas, which
    need generative serving, intra_op and a decode replica; prefill replicas of their own TP degree
    need the decode replicas' (`tp`), no pp, GPUs that add up, and degrees that divide the model's
    heads and one another."""
    pol, gpus = scn.policy, scn.hardware.count
    if not pol.prefill_replicas and pol.prefill_tp is not None:
        raise LigerSimError("prefill_tp is the prefill replicas' TP degree: set policy.prefill_replicas too",
                            file=file, field="policy.prefill_tp")
    if not pol.prefill_replicas:
        raise LigerSimError("kv_transfer is how disaggregated serving moves the KV cache: set "
                            "policy.prefill_replicas too", file=file, field="policy.kv_transfer")
    if scn.serving.mode != "generative":
        raise LigerSimError("disaggregation splits prefill from decode: it needs serving.mode: generative",
                            file=file, field="policy.prefill_replicas")
    if pol.prefill_replicas >= pol.dp:
        hint = f"give 1 to {pol.dp - 1}" if pol.dp > 1 else "set policy.dp >= 2 (prefill and decode replicas in all)"
        raise LigerSimError(f"{pol.prefill_replicas} prefill replicas leave none of the dp={pol.dp} replicas to "
                            f"decode; {hint}", file=file, field="policy.prefill_replicas")
    if pol.name not in ("intra_op", "in_order"):
        raise LigerSimError(f"disaggregated replicas run intra_op (tensor parallel); {pol.name} inside a "
                            "prefill or decode replica is not modelled", file=file, field="policy.name")
    if pol.prefill_tp is None:
        return
    if pol.pp not in (None, 1):
        raise LigerSimError("disaggregated replicas are tensor parallel only: leave policy.pp unset", file=file,
                            field="policy.pp")
    if pol.tp is None:
        raise LigerSimError("with policy.prefill_tp, give policy.tp too: the decode replicas' TP degree",
                            file=file, field="policy.tp")
    p, d = pol.prefill_replicas, pol.dp - pol.prefill_replicas
    if p * pol.prefill_tp + d * pol.tp != gpus:
        raise LigerSimError(f"{p} prefill replicas x tp {pol.prefill_tp} + {d} decode replicas x tp {pol.tp} = "
                            f"{p * pol.prefill_tp + d * pol.tp} GPUs, not hardware.count = {gpus}", file=file,
                            field="policy.prefill_tp")
    problem = tp_errors(scn.model_shape(), pol.prefill_tp)
    if problem:
        raise LigerSimError(problem, file=file, field="policy.prefill_tp")
    if pol.prefill_tp % pol.tp and pol.tp % pol.prefill_tp:  # else KV heads would move in unequal flows
        raise LigerSimError(f"prefill_tp={pol.prefill_tp} and tp={pol.tp} must divide one another, so that each "
                            "decode GPU's KV heads come whole from prefill GPUs", file=file, field="policy.prefill_tp")


def parse_scenario(data: Any, file: str = "<scenario>") -> Scenario:
    if not isinstance(data, dict):
        raise LigerSimError("a scenario must be a YAML mapping with sections hardware, model, workload, "
                            "policy, seed", file=file)
    try:
        scn = Scenario.model_validate(data)
    except ValidationError as err:
        raise format_validation_error(err, file) from None
    pol, gpus = scn.policy, scn.hardware.count
    if pol.prefill_replicas or pol.prefill_tp is not None or pol.kv_transfer != "after_prefill":
        _check_disaggregation(scn, file)
    if pol.prefill_tp is None and gpus % pol.dp:
        raise LigerSimError(f"dp={pol.dp} replicas cannot split hardware.count = {gpus} GPUs evenly; give a dp that "
                            f"divides {gpus}", file=file, field="policy.dp")
    tp, pp, dp = scn.tp(), scn.pp(), pol.dp
    per = gpus // dp if pol.prefill_tp is None else tp
    replica = f" of each of the {dp} replicas" if dp > 1 else ""
    if pol.name == "hybrid" and pol.tp is None:
        raise LigerSimError("hybrid needs tp (and optionally pp) with tp x pp x dp = hardware.count",
                            file=file, field="policy.tp")
    if pol.name == "inter_op" and tp != 1:
        raise LigerSimError(f"inter_op is pure pipeline parallelism: tp must be 1 (got {tp}); use hybrid for TP "
                            "inside stages", file=file, field="policy.tp")
    if pol.name in ("intra_op", "in_order", "interleaved") and (tp != per or pp != 1):
        raise LigerSimError(f"{pol.name} shards tensor-parallel over all {per} GPUs{replica}: leave tp and pp unset "
                            f"(got tp={tp}, pp={pp})", file=file, field="policy.tp")
    if tp * pp * dp != gpus and pol.prefill_tp is None:
        raise LigerSimError(f"tp x pp x dp = {tp} x {pp} x {dp} = {tp * pp * dp} must equal hardware.count = {gpus}",
                            file=file, field="policy.pp")
    if dp > 1 and pol.router == "least_loaded" and scn.serving.mode != "generative":
        raise LigerSimError("least_loaded counts the waiting and running requests of generative "
                            "serving; in serving.mode: encoder use round_robin", file=file, field="policy.router")
    if pp > scn.model.layers:
        raise LigerSimError(f"pp={pp} stages exceed the model's {scn.model.layers} layers", file=file,
                            field="policy.pp")
    if pol.expert_parallel and not scn.model.experts:
        raise LigerSimError(f"expert_parallel shards a mixture of experts; model {scn.model.name} has none "
                            "(model.experts: 0)", file=file, field="policy.expert_parallel")
    problem = tp_errors(scn.model_shape(), tp)
    if problem:
        raise LigerSimError(problem, file=file, field="policy.tp" if pol.tp else "hardware.count")
    return scn


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last one
    silently: `seed: 0` then `seed: 5` would run seed 5 with nothing said)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_scenario(path: str | Path) -> tuple[Scenario, Path]:
    """Load and validate a scenario file; returns it and the folder relative paths resolve in."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise LigerSimError(f"cannot read scenario ({e.strerror})", file=str(path)) from None
    except UnicodeDecodeError as e:
        raise LigerSimError(f"not UTF-8 text (byte {e.start}); a scenario is a YAML file", file=str(path)) from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "malformed YAML"
        raise LigerSimError(f"malformed YAML{where}: {problem}", file=str(path)) from None
    scn = parse_scenario(data, str(path))
    prof = scn.hardware.profile
    if prof and not Path(prof).is_absolute():  # relative to the scenario, wherever ligersim runs
        scn.hardware.profile = str((path.parent / prof).resolve())
    return scn, path.parent


def check_memory(scn: Scenario, jobs_max_tokens: tuple[int, int], file: str, tp: int, pp: int = 1) -> None:
    """Refuse a model that does not fit: weights plus one job's activations per GPU."""
    m = scn.model_shape()
    batch, seq = jobs_max_tokens
    need = weight_bytes_per_gpu(m, tp, pp) + activation_bytes_per_gpu(m, tp, batch, seq)
    have = scn.hardware.gpu.memory
    if need > have:
        raise LigerSimError(
            f"model {m.name} needs {need / 1e9:.1f} GB per GPU (weights at tp={tp}, pp={pp} plus activations of "
            f"a {batch}x{seq} job) but {scn.hardware.gpu.name} has {have / 1e9:.1f} GB; use more GPUs, a larger "
            f"GPU or a smaller model", file=file, field="model")


__all__ = ["Scenario", "load_scenario", "parse_scenario", "check_memory", "GenerateWorkload", "TraceWorkload"]
