from __future__ import annotations

import copy

import pytest


def tiny(policy: str = "intra_op", **policy_knobs) -> dict:
    """A small scenario (fast to simulate) with a comm-heavy ratio like the paper's PCIe box."""
    return copy.deepcopy({
        "name": "tiny",
        "seed": 3,
        "hardware": {"gpu": "A100-PCIe", "count": 4, "interconnect": "pcie4"},
        "model": {"preset": "liger-encoder", "hidden": 2048, "heads": 16, "kv_heads": 16, "head_dim": 128,
                  "ffn": 8192, "layers": 4},
        "workload": {"kind": "generate", "jobs": 30, "arrival": {"process": "poisson", "rate": 200.0},
                     "batch": 2, "seq_len": {"dist": "uniform", "low": 16, "high": 128}},
        "policy": {"name": policy, **policy_knobs},
    })


@pytest.fixture
def tiny_scenario():
    return tiny
