"""Importing torch and choosing a device, with the errors a user can act on.

`hw` is optional (the `hw` extra); everything that needs torch goes through
`require_torch` so a missing install or a missing GPU is one clear `LigerSimError`,
not an ImportError or a CUDA stack trace.
"""

from __future__ import annotations

import os
from typing import Any

from sim.errors import LigerSimError

DEVICES = ("cuda", "cpu")


def require_torch() -> Any:
    """The torch module, or a LigerSimError that says how to install it."""
    try:
        import torch
    except ImportError:
        raise LigerSimError("the hw backend needs PyTorch, which is not installed; "
                            "pip install 'ligersim[hw]'") from None
    return torch


def check_device(device: str) -> Any:
    """Validate `device` and return torch; CUDA asked for but absent is an error, not a fallback."""
    if device not in DEVICES:
        raise LigerSimError(f"unknown device {device!r}; allowed: {', '.join(DEVICES)}", field="--device")
    torch = require_torch()
    if device == "cuda" and not torch.cuda.is_available():
        why = "this PyTorch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise LigerSimError(f"--device cuda was requested but {why}; use --device cpu, or install a CUDA "
                            f"build of PyTorch on a machine with an NVIDIA GPU", field="--device")
    if device == "cuda" and not os.environ.get("LIGERSIM_CUDNN_SDPA"):
        # cuDNN attention builds an execution plan for every new shape, which blocks the host
        # and the GPU for milliseconds (measured on an H100 with torch 2.11: prefill attention
        # of a fresh length took ~6 ms against ~0.1 ms, and each decode step, whose context
        # grows by one, ~1 ms of host time). Serving sees a new shape at nearly every call, so
        # ligersim uses the flash and memory-efficient backends; LIGERSIM_CUDNN_SDPA=1 allows it.
        torch.backends.cuda.enable_cudnn_sdp(False)
    return torch


def torch_dtype(device: str, dtype_bytes: int) -> Any:
    """fp16 (or fp32 for 4-byte models) on the GPU; float32 on CPU, where tests check exact math."""
    torch = require_torch()
    if device == "cpu" or dtype_bytes >= 4:
        return torch.float32
    return torch.float16
