"""How much GPU memory a hw run needs, for the out-of-memory message.

The hw backend keeps the weights of every layer a rank runs (each its own copy, as a real
model has, so that memory traffic is a real model's), the full unsharded matrices of one layer
while it generates them, and activations for the requests in flight; the simulator's
`weight_bytes_per_gpu` also counts the embedding and LM head of a full deployment.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from sim.layers import ModelShape, activation_bytes_per_gpu, layer_params, weight_bytes_per_gpu


def hw_bytes_needed(m: ModelShape, tp: int, batch: int, seq: int, in_flight: int = 6,
                    layers: int | None = None) -> float:
    shard = layer_params(m) / tp * m.dtype_bytes * (m.layers if layers is None else layers)
    full_fp32 = layer_params(m) * 4  # generated once, then sliced
    return shard + full_fp32 + in_flight * activation_bytes_per_gpu(m, tp, batch, seq)


def oom_message(m: ModelShape, tp: int, batch: int, seq: int, device_name: str, total: float, free: float,
                kv_bytes: float = 0.0, layers: int | None = None) -> str:
    layers = m.layers if layers is None else layers
    need = hw_bytes_needed(m, tp, batch, seq, layers=layers) + kv_bytes
    return (f"the GPU ran out of memory: this scenario needs about {need / 1e9:.1f} GB per GPU on the hw backend "
            f"({layers} {m.name} layers' weights at tp={tp}, one layer's fp32 generation "
            f"buffer, activations of up to 6 in-flight {batch}x{seq} jobs"
            + (f", and a {kv_bytes / 1e9:.1f} GB paged KV cache (the simulator's KV capacity for the scenario's GPU "
               "memory; lower hardware.gpu.memory or serving.memory_utilization to shrink it)" if kv_bytes else "")
            + f"; a full deployment would hold "
            f"{weight_bytes_per_gpu(m, tp) / 1e9:.1f} GB of weights) but {device_name} has {total / 1e9:.1f} GB "
            f"({free / 1e9:.1f} GB free); use a GPU with more memory, a larger tp, or a smaller model")


def host_bytes_needed(m: ModelShape, tp: int, batch: int, seq: int, layers: int, kv_bytes: float = 0.0) -> float:
    """Host memory one rank of a CPU run needs (each rank is a process): its `layers` layers' weights
    in float32 (`hw.torchenv.torch_dtype`), one layer's fp32 generation buffer and activations of the
    jobs in flight (`hw_bytes_needed` at 4 bytes an element), and its KV pool."""
    return hw_bytes_needed(replace(m, dtype_bytes=4), tp, batch, seq, layers=layers) + kv_bytes


def host_available_bytes() -> float | None:
    """Memory the OS can still give processes (Linux `MemAvailable`), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def host_oom_message(m: ModelShape, tp: int, ranks: int, need: float, available: float) -> str:
    return (f"this scenario needs about {need / 1e9:.1f} GB of host memory on the CPU backend ({ranks} "
            f"{'processes' if ranks > 1 else 'process'}, each holding its {m.name} layers' weights at tp={tp} in "
            f"float32, one layer's generation buffer and its jobs' activations) but this machine has "
            f"{available / 1e9:.1f} GB available; run it on a GPU (rank 0 alone with --emulate), or give the "
            "scenario fewer layers (model.layers) or a smaller model")
