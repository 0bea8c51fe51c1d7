"""The notebooks: committed without outputs, run headless top to bottom on small settings
(nbclient, the `python3` kernel = this interpreter), and every plotting function they rely
on writes a non-empty image."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sim import plots
from sim.scenario import parse_scenario
from sim.simulate import load_jobs, simulate

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))
PNG = b"\x89PNG\r\n\x1a\n"


def _runner():
    spec = importlib.util.spec_from_file_location("notebook_runner", NB_DIR / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def _text(nb) -> str:
    out = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            out.append(o.get("text", ""))
            out.extend(str(v) for k, v in o.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(out)


def test_the_four_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_jct_jpc_curves.ipynb", "03_timeline.ipynb",
                                           "04_calibration_validation.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for i, c in enumerate(code):
        assert c["outputs"] == [], f"{path.name}: code cell {i} has outputs; run `python notebooks/run.py --strip`"
        assert c["execution_count"] is None, f"{path.name}: code cell {i} has an execution count"
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and "FULL" in "".join(params[0]["source"]), "one `parameters` cell setting FULL"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_headless_on_small_settings(path, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", "")  # restored afterwards: the runner prepends the venv's kernels
    # the quickstart is started outside the checkout: the notebooks must find the repository anyway
    cwd = tmp_path / "elsewhere" if path.stem.startswith("01") else None
    if cwd:
        cwd.mkdir()
    nb = _runner().execute(path, tmp_path / "out", full=False, timeout=120, cwd=cwd)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert _images(nb) >= 1, "every notebook shows at least one figure"
    assert "FULL = False" in _text(nb)
    written = list((tmp_path / "out").rglob("*.png"))
    assert written and all(p.stat().st_size > 0 for p in written)
    assert not (NB_DIR / path.stem).exists(), "notebooks write their files to the scratch folder"
    if path.stem.startswith("04"):  # what is committed is shown; with nothing committed it says so plainly
        if any(yaml.safe_load(p.read_text()).get("format") == "ligersim-profile"
               for p in (ROOT / "profiles").glob("*.yaml")):
            assert "Calibrated profiles" in _text(nb)
        else:
            assert "No calibrated profile is committed yet" in _text(nb)
        if list((ROOT / "results" / "validation").glob("**/validation.csv*")):
            assert "Validation reports" in _text(nb)
        else:
            assert "No validation report is committed yet" in _text(nb)


def _profile_and_validation(root: Path) -> tuple[Path, Path]:
    """A small profile in the calibration format (`sim.profile`) and one validation report."""
    prof_dir, val_dir = root / "profiles", root / "validation" / "tiny-interleaved"
    prof_dir.mkdir(parents=True)
    val_dir.mkdir(parents=True)
    gemms = [{"dims": {"m": m, "n": 3072, "k": 12288}, "median_s": 2.0 * m * 3072 * 12288 / 600e12 + 6e-6,
              "p10_s": 1e-5, "p90_s": 2e-5, "reps": 20} for m in (32, 128, 512, 2048)]
    meas = [{"victim": v, "other": o, "priority": p, "first": "victim", "size": "large", "slowdown": s}
            for v, o, s in (("gemm", "memory", 1.2), ("memory", "gemm", 1.9), ("gemm", "collective", 1.1))
            for p in ("higher", "lower")]
    table = [{"victim": "compute", "other": "memory", "priority": "higher", "slowdown": 1.2, "samples": 2},
             {"victim": "memory", "other": "compute", "priority": "lower", "slowdown": 1.9, "samples": 2}]
    doc = {"format": "ligersim-profile", "version": 1, "status": "complete",
           "device": {"name": "NVIDIA H100 80GB HBM3", "sms": 132}, "date": "2026-11-22",
           "command": "ligersim calibrate --quick", "host": {"launch_s": 5e-6, "sync_wakeup_s": 1e-5},
           "kernels": {"gemm": gemms}, "contention": {"measurements": meas, "table": table}}
    (prof_dir / "h100-test.yaml").write_text(yaml.safe_dump(doc))
    (prof_dir / "links.yaml").write_text("topologies: {}\n")  # not a profile: ignored
    rows = [{"mode": m, "level": "kernel", "kind": k, "name": k, "measured_s": t, "predicted_s": t * 1.03,
             "error": 0.03} for m in ("closed_loop", "replay")
            for k, t in (("gemm", 1e-4), ("gemm", 2e-4), ("softmax", 1e-5), ("all_reduce", 3e-4))]
    rows += [{"mode": "replay", "level": "request", "name": "jct", "measured_s": t, "predicted_s": t * 0.97,
              "error": -0.03} for t in (0.010, 0.012, 0.015)]
    pd.DataFrame(rows).to_csv(val_dir / "validation.csv", index=False)
    errs = {"kernel_err_median": 0.03, "kernel_err_p90": 0.05, "makespan_err": 0.01, "jct_mean_err": -0.03,
            "throughput_err": 0.01}
    (val_dir / "summary.json").write_text(json.dumps({
        "scenario": "tiny", "policy": "interleaved", "device": "NVIDIA H100 80GB HBM3", "date": "2026-11-22",
        "closed_loop": errs, "replay": errs}))
    (val_dir / "replay").mkdir()  # the predicted run's own files: not a report of its own
    (val_dir / "replay" / "summary.json").write_text("{}")
    return prof_dir, root / "validation"


def test_calibration_notebook_plots_committed_profiles_and_validation(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", "")
    prof_dir, val_dir = _profile_and_validation(tmp_path / "committed")
    path = NB_DIR / "04_calibration_validation.ipynb"
    out = tmp_path / "out"
    nb = _runner().execute(path, out, timeout=120,
                           env={"LIGERSIM_PROFILES_DIR": str(prof_dir), "LIGERSIM_VALIDATION_DIR": str(val_dir)})
    text = _text(nb)
    assert "No calibrated profile is committed" not in text and "h100-test.yaml" in text
    assert "No validation report is committed" not in text
    made = {p.name for p in (out / path.stem).glob("*.png")}
    assert {"gemm-h100-test.png", "contention-h100-test.png", "contention-h100-test-measurements.png",
            "validation-tiny-interleaved-kernel.png", "validation-tiny-interleaved-request.png"} <= made


# ----------------------------------------------------------------------------- plotting functions


@pytest.fixture
def events(tiny_scenario):
    scn = parse_scenario(tiny_scenario("interleaved"))
    jobs = load_jobs(scn, None, 8)
    return simulate(scn, jobs, record_ir=False).events, jobs


def _check(path: Path) -> None:
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG


def test_every_plot_function_writes_an_image(tmp_path, events):
    from sim.metrics import requests_frame

    ev, jobs = events
    curve = pd.DataFrame({"policy": ["intra_op"] * 3 + ["interleaved"] * 3, "offered_rate": [10, 20, 40] * 2,
                          "achieved_rate": [10, 19, 25, 10, 20, 33], "jct_mean_s": [0.01, 0.02, 0.2, 0.01, 0.015, 0.1]})
    jpc = pd.DataFrame({"policy": ["intra_op", "interleaved", "inter_op"], "jpc_jobs_s": [19, 33, float("nan")],
                        "capacity_jobs_s": [25, 35, 40]})
    _check(plots.plot_curve(curve, tmp_path / "curve.png", "curve", jpc))
    _check(plots.plot_jpc_bars(pd.concat([jpc.assign(setup="a"), jpc.assign(setup="b")]), tmp_path / "jpc.png", "jpc"))
    _check(plots.plot_jpc_bars(jpc, tmp_path / "jpc1.png", "one setup"))
    _check(plots.plot_timeline(ev, tmp_path / "timeline.png", "timeline", ranks=[0]))
    _check(plots.plot_timeline_comparison({"a": ev, "b": ev[ev["stream"] == 0]}, tmp_path / "cmp.png", "cmp",
                                          requests=[1, 2]))
    _check(plots.plot_jct_cdf({"interleaved": requests_frame(ev, jobs)}, tmp_path / "cdf.png", "cdf"))
    from sim.presets import CONTENTION

    _check(plots.plot_contention_heatmap(CONTENTION["default"]["pairs"], tmp_path / "heat.png", "default"))
    _check(plots.plot_contention_heatmap(
        [{"victim": "gemm", "other": "memory", "priority": p, "slowdown": s} for p, s in (("higher", 1.2), ("lower", 7.4))],
        tmp_path / "heat2.png", "per priority"))
    gem = pd.DataFrame({"label": ["x"] * 3 + ["y"] * 3, "flops": [1e9, 1e10, 1e11] * 2,
                        "time_s": [1e-5, 5e-5, 4e-4, 2e-5, 8e-5, 5e-4], "peak_flops": [312e12] * 3 + [float("nan")] * 3,
                        "measured": [False] * 3 + [True] * 3})
    _check(plots.plot_gemm_efficiency(gem, tmp_path / "gemm.png", "gemm"))
    sizes = [2048, 65536, 2 ** 20, 2 ** 24]
    meas = pd.DataFrame({"collective": "all_reduce", "n": 4, "bytes": sizes,
                         "time_s": [1.0e-5, 1.3e-5, 1.2e-5 + 2 ** 20 * 1.5 / 300e9, 1.2e-5 + 2 ** 24 * 1.5 / 300e9]})
    fits = pd.DataFrame({"collective": ["all_reduce"], "n": [4], "alpha_s": [2e-6], "bandwidth_GBps": [300.0]})
    _check(plots.plot_link_fit(meas, fits, tmp_path / "link.png", "link", link_peak_GBps=450.0))
    pvm = pd.DataFrame({"predicted_s": [1e-4, 2e-4, 1e-3], "measured_s": [1.1e-4, 1.9e-4, 1e-3], "kind": ["a", "b", "a"]})
    _check(plots.plot_predicted_vs_measured(pvm, tmp_path / "pvm.png", "pvm", by="kind"))
