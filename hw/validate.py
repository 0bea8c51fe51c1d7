"""`ligersim validate`: run a scenario on the GPU (or CPU), then predict it in the simulator.

The measured run goes to `OUT/measured/` (`hw.run.run_scenario`, the same files as `ligersim
hw run`); `sim.validation.predict` simulates it closed-loop and as a replay of its IR with
the profile's costs and writes the comparison (validation.csv, summary.json, report.md,
plots). With `measured=` an already recorded run is used instead, so the report can be
rebuilt, or re-predicted with another profile, without a GPU.
"""

from __future__ import annotations

from pathlib import Path

from sim.errors import LigerSimError


def validate(scenario: str | Path, profile: str | Path, out: str | Path, device: str = "cuda",
             jobs: int | None = None, measured: str | Path | None = None, emulate: bool | None = None,
             channels: int = 16, progress: bool = False, timing: str = "events") -> dict:
    """Measure (unless `measured` is given), predict, compare; returns the summary."""
    from sim.profile import load_profile
    from sim.validation import predict

    out = Path(out)
    load_profile(profile)  # a bad profile fails before minutes of GPU work, not after
    if measured is None:
        from hw.run import run_scenario

        measured = out / "measured"
        run_scenario(scenario, measured, device=device, jobs=jobs, emulate=emulate, channels=channels, trace=False,
                     timing=timing)
    elif not Path(measured).is_dir():
        raise LigerSimError("recorded run folder not found", file=str(measured), field="--measured")
    return predict(measured, scenario, profile, out, progress=progress)
