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
             channels: int = 16, progress: bool = False, timing: str = "events",
             kernels: str | Path | None = None, host_probe_jobs: int = 16, host_costs: str = "in_process") -> dict:
    """Measure (unless `measured` is given), predict, compare; returns the summary.

    `timing="both"` (CUDA) measures the scenario twice: with CUDA events into `measured/`, whose
    wall-clock makespan and request times are compared, and with CUPTI into `measured_cupti/`,
    whose kernel times are compared. CUPTI times kernels exactly but its profiler slows the
    host (on an H100 host-bound runs took ~30% longer); events leave the host alone but count
    the GPU's idle wait for a launch as kernel time. `kernels` names such a second recorded run.

    The events-timed run first runs its first `host_probe_jobs` jobs before its clock
    (`hw.launch.host_probe`); with `host_costs="in_process"` the simulator charges the host
    costs measured there, else the profile's in-situ ones (`sim.validation.predict`)."""
    from sim.profile import load_profile
    from sim.validation import predict

    out = Path(out)
    from hw.run import one_replica
    from sim.scenario import load_scenario

    one_replica(load_scenario(scenario)[0], str(scenario))  # before any measuring or predicting
    if timing in ("cupti", "both") and device == "cpu" and measured is None:
        raise LigerSimError(f"--timing {timing} times CUDA kernels with CUPTI; on CPU use --timing events",
                            field="--timing")
    load_profile(profile)  # a bad profile fails before minutes of GPU work, not after
    if measured is None:
        from hw.run import run_scenario

        measured = out / "measured"
        runs = [("events", measured), ("cupti", out / "measured_cupti")] if timing == "both" else [(timing, measured)]
        for how, where in runs:
            run_scenario(scenario, where, device=device, jobs=jobs, emulate=emulate, channels=channels, trace=False,
                         timing=how, host_probe_jobs=host_probe_jobs if how == "events" else 0)
        if timing == "both":
            kernels = out / "measured_cupti"
    elif not Path(measured).is_dir():
        raise LigerSimError("recorded run folder not found", file=str(measured), field="--measured")
    elif jobs is not None:  # the recording's jobs are what it ran
        raise LigerSimError("--jobs selects the jobs a new measurement runs; a recorded run (--measured) is predicted "
                            "with the jobs it ran", field="--jobs")
    if kernels is not None and not Path(kernels).is_dir():
        raise LigerSimError("recorded run folder not found", file=str(kernels), field="--kernels-from")
    return predict(measured, scenario, profile, out, progress=progress, kernels=kernels, host_costs=host_costs)
