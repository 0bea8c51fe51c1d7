"""Every committed scenario loads and simulates (a few jobs), so none rots."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.scenario import load_scenario
from sim.simulate import SYMMETRIC_POLICIES, load_jobs, simulate

ROOT = Path(__file__).resolve().parent.parent
FILES = sorted((ROOT / "scenarios").glob("*.yaml")) + sorted((ROOT / "scenarios" / "validation").glob("*.yaml"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_scenario_simulates(path):
    scn, base = load_scenario(path)
    jobs = load_jobs(scn, base, 2)
    run = simulate(scn, jobs, record_ir=False, file=str(path), fold_ranks=scn.policy.name in SYMMETRIC_POLICIES)
    assert len(run.events) > 0 and run.events["end_s"].max() > 0
