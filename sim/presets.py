"""Named hardware, interconnect, model, host and contention presets.

Each preset is a plain dict of field values; the scenario schema (`sim.scenario`) starts
from the named preset and lets the YAML override any field. Every number carries its
source: a datasheet, a published model configuration, or NCCL's own cost model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# --------------------------------------------------------------------------- GPUs
# peak_flops: dense FP16/BF16 tensor-core FLOP/s (no structured sparsity).
# hbm_bw: peak DRAM bandwidth, bytes/s. memory: bytes. sms: streaming multiprocessors.
GPUS: dict[str, dict[str, Any]] = {
    # NVIDIA H100 Tensor Core GPU datasheet (2023), SXM5 column: 989.4 TFLOPS BF16/FP16
    # dense (1,979 with sparsity), 3.35 TB/s HBM3, 80 GB; 132 SMs (NVIDIA Hopper
    # architecture whitepaper, H100 SXM5).
    "H100-SXM": dict(name="H100-SXM", peak_flops=989.4e12, hbm_bw=3.35e12, memory=80e9, sms=132),
    # NVIDIA H200 Tensor Core GPU datasheet (2024), H200 SXM: the H100's GH100 die and Tensor Core
    # peak (1,979 TFLOPS FP16/BF16 with sparsity, so 989.4 dense), 141 GB HBM3e at 4.8 TB/s; 132 SMs.
    "H200-SXM": dict(name="H200-SXM", peak_flops=989.4e12, hbm_bw=4.8e12, memory=141e9, sms=132),
    # NVIDIA A100 Tensor Core GPU datasheet (2021), A100 80GB SXM: 312 TFLOPS FP16/BF16
    # dense, 2,039 GB/s HBM2e, 80 GB; 108 SMs (NVIDIA Ampere GA100 whitepaper).
    "A100-SXM": dict(name="A100-SXM", peak_flops=312e12, hbm_bw=2.039e12, memory=80e9, sms=108),
    # Same datasheet, A100 80GB PCIe: 312 TFLOPS FP16 dense, 1,935 GB/s, 80 GB, 108 SMs.
    "A100-PCIe": dict(name="A100-PCIe", peak_flops=312e12, hbm_bw=1.935e12, memory=80e9, sms=108),
    # NVIDIA V100 Tensor Core GPU datasheet (2020), V100 SXM2: 125 TFLOPS tensor (FP16),
    # 900 GB/s HBM2, 32 GB; 80 SMs (NVIDIA Tesla V100 whitepaper).
    "V100-SXM2": dict(name="V100-SXM2", peak_flops=125e12, hbm_bw=900e9, memory=32e9, sms=80),
}

# --------------------------------------------------------------------------- links
# kind: switch (every GPU has one up- and one down-link to a crossbar), pairwise (one
# direct link per GPU pair), mesh (link counts per GPU pair, as nvidia-smi topo prints),
# pcie (each GPU's x16 link to a host bridge that all GPU-to-GPU traffic crosses),
# multinode (nodes of gpus_per_node GPUs on a switch, each GPU with its own NIC of nic_bw, or
# nics_per_node NICs each shared by a block of GPUs).
# link_bw: bytes/s per direction of one link (for mesh: of one NVLink brick).
# step_latency_s / base_latency_s: NCCL's own cost model (src/graph/tuning.cc, hwLat and
# baseLat, Ring/Simple): 3.4 us per ring step over NVLink, 5.7 us over PCIe, 8.4 us base.
# net_step_latency_s: the same table's NET row, Ring/Simple: 14.0 us (NCCL 2.20.3, commit
# b6475625, src/graph/tuning.cc line 75; NCCL 2.7.5 had 9.6). NCCL charges it to 2 x nodes of
# an all-reduce's 2(n-1) ring steps (ncclTopoTuneModel, nInterSteps), the rest at NVLink's. Left
# out: its "plateau" factor on large multi-node all-reduces' latency (1.4 on Ampere and later),
# and its floor of 3 x the NIC's post overhead on the NVLink steps of a multi-node ring (1 us on
# Intel hosts, as DGX H100's, so 3.4 stands; 2 us on AMD, as DGX A100's: 6 us).
_NVLINK_STEP, _PCIE_STEP, _NCCL_BASE = 3.4e-6, 5.7e-6, 8.4e-6
_NET_STEP = 14.0e-6
# InfiniBand per direction: NDR 400 Gb/s = 50 GB/s, HDR 200 Gb/s = 25 GB/s per port.
_IB_NDR, _IB_HDR = 50e9, 25e9
# Multi-node presets join up to 256 GPUs (32 nodes of 8): a DGX SuperPOD scalable unit, 32 DGX
# H100 on one rail-optimised non-blocking InfiniBand fabric (DGX SuperPOD reference architecture,
# RA-11333-001). Beyond it traffic crosses spine and core switches this model leaves out. Override
# max_gpus to go further; the simulation's cost grows with the GPUs it simulates.
_SU_GPUS = 256
# PCIe x16 per direction: 4.0 = 16 GT/s x 16 lanes x 128/130 / 8 = 31.5 GB/s;
# 5.0 = 32 GT/s -> 63.0 GB/s (PCI-SIG base specifications 4.0 and 5.0).
_PCIE4_X16, _PCIE5_X16 = 31.5e9, 63.0e9
# DGX-1 (V100) hybrid cube-mesh: NVLink bricks between GPU pairs (nvidia-smi topo -m on a
# DGX-1V; NV1 = one brick, NV2 = two, 0 = no NVLink, traffic goes over PCIe).
_DGX1_MESH = [
    [0, 1, 1, 2, 2, 0, 0, 0],
    [1, 0, 2, 1, 0, 2, 0, 0],
    [1, 2, 0, 2, 0, 0, 1, 0],
    [2, 1, 2, 0, 0, 0, 0, 1],
    [2, 0, 0, 0, 0, 1, 1, 2],
    [0, 2, 0, 0, 1, 0, 2, 1],
    [0, 0, 1, 0, 1, 2, 0, 2],
    [0, 0, 0, 1, 2, 1, 2, 0],
]
INTERCONNECTS: dict[str, dict[str, Any]] = {
    # H100 SXM5: NVLink 4, 18 links, 900 GB/s total bidirectional = 450 GB/s per
    # direction per GPU, through NVSwitch in a DGX/HGX H100 (H100 datasheet).
    "nvswitch-h100": dict(name="nvswitch-h100", kind="switch", link_bw=450e9, max_gpus=8,
                          step_latency_s=_NVLINK_STEP, base_latency_s=_NCCL_BASE),
    # A100 SXM4: NVLink 3, 12 links, 600 GB/s bidirectional = 300 GB/s per direction,
    # NVSwitch in a DGX A100 (A100 datasheet).
    "nvswitch-a100": dict(name="nvswitch-a100", kind="switch", link_bw=300e9, max_gpus=8,
                          step_latency_s=_NVLINK_STEP, base_latency_s=_NCCL_BASE),
    # Pairs joined by an NVLink bridge: A100 PCIe's 3-slot bridge carries 600 GB/s
    # bidirectional (A100 PCIe datasheet) = 300 GB/s per direction; only 2 GPUs per group.
    "nvlink-pair-a100": dict(name="nvlink-pair-a100", kind="pairwise", link_bw=300e9, max_gpus=2,
                             step_latency_s=_NVLINK_STEP, base_latency_s=_NCCL_BASE),
    # H100 NVL / PCIe pairs: NVLink bridge 600 GB/s bidirectional (H100 datasheet, PCIe col).
    "nvlink-pair-h100": dict(name="nvlink-pair-h100", kind="pairwise", link_bw=300e9, max_gpus=2,
                             step_latency_s=_NVLINK_STEP, base_latency_s=_NCCL_BASE),
    # V100 SXM2: NVLink 2, 6 bricks of 25 GB/s per direction (300 GB/s bidirectional total,
    # V100 datasheet), wired as DGX-1's hybrid cube-mesh.
    "nvlink-v100-cube-mesh": dict(name="nvlink-v100-cube-mesh", kind="mesh", link_bw=25e9, max_gpus=8,
                                  mesh=_DGX1_MESH, fallback_bw=_PCIE4_X16 / 2,
                                  step_latency_s=_NVLINK_STEP, base_latency_s=_NCCL_BASE),
    # PCIe: each GPU's x16 link plus one host bridge shared by every GPU-to-GPU transfer.
    # Assumption (override bridge_bw for your server): the bridge moves one x16 link's worth.
    "pcie4": dict(name="pcie4", kind="pcie", link_bw=_PCIE4_X16, bridge_bw=_PCIE4_X16, max_gpus=8,
                  step_latency_s=_PCIE_STEP, base_latency_s=_NCCL_BASE),
    "pcie5": dict(name="pcie5", kind="pcie", link_bw=_PCIE5_X16, bridge_bw=_PCIE5_X16, max_gpus=8,
                  step_latency_s=_PCIE_STEP, base_latency_s=_NCCL_BASE),
    # DGX H100 nodes: NVSwitch as nvswitch-h100; "four OSFP ports serving eight single-port NVIDIA
    # ConnectX-7 VPI, up to 400 Gb/s InfiniBand" (DGX BasePOD reference architecture, core
    # components; one ConnectX-7 per GPU, DGX H100 User Guide table 6), on InfiniBand NDR.
    "dgx-h100-ndr": dict(name="dgx-h100-ndr", kind="multinode", link_bw=450e9, gpus_per_node=8, nic_bw=_IB_NDR,
                         max_gpus=_SU_GPUS, step_latency_s=_NVLINK_STEP, net_step_latency_s=_NET_STEP,
                         base_latency_s=_NCCL_BASE),
    # DGX A100 nodes: NVSwitch as nvswitch-a100; eight single-port Mellanox ConnectX-6 VPI at
    # 200 Gb/s HDR InfiniBand, one per GPU (NVIDIA DGX A100 datasheet, 2020).
    "dgx-a100-hdr": dict(name="dgx-a100-hdr", kind="multinode", link_bw=300e9, gpus_per_node=8, nic_bw=_IB_HDR,
                         max_gpus=_SU_GPUS, step_latency_s=_NVLINK_STEP, net_step_latency_s=_NET_STEP,
                         base_latency_s=_NCCL_BASE),
}

# --------------------------------------------------------------------------- models
# arch: encoder (the Liger artifact's BERT-style layer: separate Q/K/V GEMMs, LayerNorm,
# materialised softmax) or decoder (LLaMA-style: fused QKV, RMSNorm, RoPE, fused attention).
MODELS: dict[str, dict[str, Any]] = {
    # Liger (PPoPP'24) artifact: GLM-130B-sized encoder layer, 128 heads x 96, FFN 4x, fp16.
    "liger-encoder": dict(name="liger-encoder", arch="encoder", layers=4, hidden=12288, heads=128,
                          kv_heads=128, head_dim=96, ffn=4 * 12288, gated=False, vocab=0,
                          norm="layernorm", rope=False, dtype_bytes=2),
    # GLM-130B (Zeng et al., ICLR 2023, Table/appendix config): 70 layers, hidden 12288,
    # 96 heads x 128, GeGLU FFN of 32768, vocab 150,528, trained on 2,048-token sequences.
    "glm-130b": dict(name="glm-130b", arch="encoder", layers=70, hidden=12288, heads=96, kv_heads=96,
                     head_dim=128, ffn=32768, gated=True, vocab=150528, norm="layernorm", rope=True,
                     dtype_bytes=2, context=2048),
    # LLaMA 2 (Touvron et al. 2023, Table 1 and the released config.json files): 4k context.
    "llama2-7b": dict(name="llama2-7b", arch="decoder", layers=32, hidden=4096, heads=32, kv_heads=32,
                      head_dim=128, ffn=11008, gated=True, vocab=32000, norm="rmsnorm", rope=True,
                      dtype_bytes=2, context=4096),
    "llama2-13b": dict(name="llama2-13b", arch="decoder", layers=40, hidden=5120, heads=40, kv_heads=40,
                       head_dim=128, ffn=13824, gated=True, vocab=32000, norm="rmsnorm", rope=True,
                       dtype_bytes=2, context=4096),
    # 70B uses grouped-query attention: 64 query heads share 8 KV heads.
    "llama2-70b": dict(name="llama2-70b", arch="decoder", layers=80, hidden=8192, heads=64, kv_heads=8,
                       head_dim=128, ffn=28672, gated=True, vocab=32000, norm="rmsnorm", rope=True,
                       dtype_bytes=2, context=4096),
    # Llama 3 (Meta, April 2024; the released config.json of meta-llama/Meta-Llama-3-8B and -70B):
    # GQA with 8 KV heads, SwiGLU, RMSNorm, RoPE, a 128,256-token vocabulary, 8,192-token context.
    "llama3-8b": dict(name="llama3-8b", arch="decoder", layers=32, hidden=4096, heads=32, kv_heads=8,
                      head_dim=128, ffn=14336, gated=True, vocab=128256, norm="rmsnorm", rope=True,
                      dtype_bytes=2, context=8192),
    "llama3-70b": dict(name="llama3-70b", arch="decoder", layers=80, hidden=8192, heads=64, kv_heads=8,
                       head_dim=128, ffn=28672, gated=True, vocab=128256, norm="rmsnorm", rope=True,
                       dtype_bytes=2, context=8192),
    # Llama 3.1 405B (meta-llama/Llama-3.1-405B config.json; Dubey et al. 2024, "The Llama 3 Herd of
    # Models", Table 3): 126 layers, 128 heads sharing 8 KV heads (an earlier revision of the config
    # said 16; the paper and the current config say 8), 131,072-token context. 810 GB of bf16
    # weights: two nodes of 8 x 80 GB.
    "llama3.1-405b": dict(name="llama3.1-405b", arch="decoder", layers=126, hidden=16384, heads=128, kv_heads=8,
                          head_dim=128, ffn=53248, gated=True, vocab=128256, norm="rmsnorm", rope=True,
                          dtype_bytes=2, context=131072),
    # OPT (Zhang et al. 2022, Table 1): ReLU FFN of 4x hidden, LayerNorm, learned positions for a
    # 2048-token context.
    "opt-30b": dict(name="opt-30b", arch="decoder", layers=48, hidden=7168, heads=56, kv_heads=56,
                    head_dim=128, ffn=28672, gated=False, vocab=50272, norm="layernorm", rope=False,
                    dtype_bytes=2, context=2048),
    # Mixtures of experts: `ffn` is each expert's width; every layer is a MoE layer, without shared
    # experts. Mixtral 8x7B (Jiang et al. 2024, "Mixtral of Experts"; mistralai/Mixtral-8x7B-v0.1
    # config.json): 8 experts of 14,336, top-2, GQA with 8 KV heads, 32k context; 46.7B parameters.
    "mixtral-8x7b": dict(name="mixtral-8x7b", arch="decoder", layers=32, hidden=4096, heads=32, kv_heads=8,
                         head_dim=128, ffn=14336, gated=True, vocab=32000, norm="rmsnorm", rope=True,
                         dtype_bytes=2, context=32768, experts=8, experts_per_token=2),
    # Qwen3 MoE (Qwen team 2025, "Qwen3 Technical Report"; Qwen/Qwen3-30B-A3B and Qwen/Qwen3-235B-A22B
    # config.json): 128 experts (moe_intermediate_size 768 and 1,536), top-8, 4 KV heads, head_dim 128
    # (so 32 x 128 query width over a 2,048 hidden for 30B), 32,768-token native context. Their
    # per-head q/k RMSNorm is not a kernel here.
    "qwen3-30b-a3b": dict(name="qwen3-30b-a3b", arch="decoder", layers=48, hidden=2048, heads=32, kv_heads=4,
                          head_dim=128, ffn=768, gated=True, vocab=151936, norm="rmsnorm", rope=True,
                          dtype_bytes=2, context=32768, experts=128, experts_per_token=8),
    "qwen3-235b-a22b": dict(name="qwen3-235b-a22b", arch="decoder", layers=94, hidden=4096, heads=64, kv_heads=4,
                            head_dim=128, ffn=1536, gated=True, vocab=151936, norm="rmsnorm", rope=True,
                            dtype_bytes=2, context=32768, experts=128, experts_per_token=8),
    "opt-66b": dict(name="opt-66b", arch="decoder", layers=64, hidden=9216, heads=72, kv_heads=72,
                    head_dim=128, ffn=36864, gated=False, vocab=50272, norm="layernorm", rope=False,
                    dtype_bytes=2, context=2048),
}

# --------------------------------------------------------------------------- host
# Placeholders until `ligersim calibrate` measures them: a CUDA kernel launch costs the
# host about 5 us through the driver API and a host thread woken by cudaEventSynchronize
# resumes some 10 us after the event (typical figures of recent drivers).
HOSTS: dict[str, dict[str, Any]] = {
    "default": dict(name="default", launch_s=5e-6, sync_wakeup_s=10e-6, kernel_overhead_s=2e-6),
}

# --------------------------------------------------------------------------- contention
# Slowdown of a `victim` kernel class while a kernel of class `other` runs beside it on the
# same GPU. PLACEHOLDER until calibrated: the compute/memory and copy pairs are the quick
# H100 measurements quoted in issue 5 (GEMM beside a memory-bound add: 1.16x and 1.93x;
# beside a D2H copy: 1.01x and 1.06x; beside a timer-spinning 8-CTA kernel: 1.18x when the
# spinner's stream has the higher priority, 7.4x when it has the lower). Same-class pairs
# share the bottleneck resource evenly (processor sharing: 2x). Two collectives are not
# slowed here: the links they share divide their bandwidth in the link model instead.
CONTENTION: dict[str, dict[str, Any]] = {
    "default": dict(name="default", pairs=[
        dict(victim="compute", other="compute", slowdown=2.0),
        dict(victim="memory", other="memory", slowdown=2.0),
        dict(victim="compute", other="memory", slowdown=1.16),
        dict(victim="memory", other="compute", slowdown=1.93),
        dict(victim="compute", other="copy", slowdown=1.01),
        dict(victim="copy", other="compute", slowdown=1.06),
        dict(victim="memory", other="copy", slowdown=1.06),
        dict(victim="copy", other="memory", slowdown=1.06),
        # 1.18x is the spinner-at-higher-priority case. The 7.4x of the other order is a
        # property of that timer-spinning emulation kernel, not of NCCL, so it is not the
        # default; a calibrated profile states it per priority order (`priority: higher`).
        dict(victim="compute", other="collective", slowdown=1.18),
        dict(victim="memory", other="collective", slowdown=1.18),
        dict(victim="collective", other="compute", slowdown=1.06),
        dict(victim="collective", other="memory", slowdown=1.06),
    ]),
    "none": dict(name="none", pairs=[]),
}



def _measured_switches() -> dict[str, dict[str, Any]]:
    """`<gpu>-measured` switch presets from the α–β fits of measured NCCL tables in
    `profiles/links.yaml` (`python -m sim.linkfit`): the 8-GPU ring all-reduce fit of each
    DGX, as α = step latency and B = link bandwidth (the switch model's ring bus bandwidth).
    One line per topology: groups of 2 and 4 fit other values (see the file's errors)."""
    path = Path(__file__).resolve().parents[1] / "profiles" / "links.yaml"
    try:
        topologies = yaml.safe_load(path.read_text()).get("topologies", {})
    except (OSError, yaml.YAMLError, AttributeError):
        return {}
    out = {}
    for gpu in ("h100", "a100"):
        fit = next((f for f in topologies.get(f"{gpu}_dgx", {}).get("all_reduce", [])
                    if f.get("n") == 8 and f.get("nodes") == 1), None)
        if fit:
            name = f"nvswitch-{gpu}-measured"
            out[name] = dict(name=name, kind="switch", link_bw=float(fit["bandwidth_GBps"]) * 1e9, max_gpus=8,
                             step_latency_s=float(fit["alpha_s"]), base_latency_s=0.0)
    return out


def _measured_multinode() -> dict[str, dict[str, Any]]:
    """`dgx-<gpu>-measured` multinode presets from `profiles/links.yaml`'s `multinode` fits
    (`python -m sim.linkfit`): NVSwitch inside a node as `nvswitch-<gpu>-measured`; NIC count,
    NIC bandwidth and network step fitted to the measured 2-node groups, with their errors there.
    a100 (Vidur's DGX A100 cluster): no NIC count follows every group; the best, 4 NICs of
    7.68 GB/s and a 23.3 us network step, is off by 23% (median) and predicts the 16-GPU
    all-reduce 1.85x too fast (median time ratio 0.54), the 8-GPU one 1.28x too slow.
    h100: only one GPU per node was measured (send/recv, 2.6% median error): NIC bandwidth
    35.9 GB/s and a 19.1 us step; the NIC count is not in the data, so one per GPU (DGX H100).
    max_gpus: the two nodes measured; override it to extrapolate to more."""
    path = Path(__file__).resolve().parents[1] / "profiles" / "links.yaml"
    try:
        fits = (yaml.safe_load(path.read_text()).get("multinode") or {}).get("topologies", {})
    except (OSError, yaml.YAMLError, AttributeError):
        return {}
    out = {}
    for gpu in ("h100", "a100"):
        fit = fits.get(f"{gpu}_dgx")
        if fit:
            name = f"dgx-{gpu}-measured"
            out[name] = dict(name=name, kind="multinode", link_bw=float(fit["link_bw_GBps"]) * 1e9,
                             gpus_per_node=int(fit["gpus_per_node"]), nics_per_node=int(fit["nics_per_node"]),
                             nic_bw=float(fit["nic_bw_GBps"]) * 1e9, max_gpus=2 * int(fit["gpus_per_node"]),
                             step_latency_s=float(fit["step_latency_s"]),
                             net_step_latency_s=float(fit["net_step_latency_s"]), base_latency_s=0.0)
    return out


INTERCONNECTS.update(_measured_switches())
INTERCONNECTS.update(_measured_multinode())

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "gpu": GPUS, "interconnect": INTERCONNECTS, "model": MODELS, "host": HOSTS, "contention": CONTENTION,
}
