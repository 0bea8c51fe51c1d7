"""Running a curve's points on a Ray cluster (`ligersim curve --ray [ADDRESS]`).

A point needs the scenario, its jobs and, when the scenario names one, its profile. The nodes of
a cluster need not share a file system, so the driver sends all three: the jobs it loaded (a
trace is read once, here) and the profile's text, which a worker writes once to its own temporary
folder. When this module starts Ray (or joins a cluster), the driver's `sim` package travels with
the tasks (`runtime_env.py_modules`), so every node simulates with the same code as the driver and
a point's result does not depend on where it ran; a Ray the caller started keeps the caller's
runtime environment. Ray itself, simpy, numpy, pandas, pyarrow, pydantic and pyyaml must be
installed on the nodes.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from sim.errors import LigerSimError

Task = tuple[str, float]  # (line label, offered rate)


def profile_path(scn_dict: dict) -> str | None:
    hw = scn_dict.get("hardware")
    return (hw.get("profile") or None) if isinstance(hw, dict) else None


def profile_text(scn_dict: dict) -> str | None:
    """The profile's YAML, read by the driver (None when the scenario has no profile)."""
    prof = profile_path(scn_dict)
    if not prof:
        return None
    try:
        return Path(prof).read_text()
    except OSError as e:
        raise LigerSimError(f"cannot read profile ({e.strerror})", file=str(prof), field="hardware.profile") from None


def with_local_profile(scn_dict: dict, text: str | None) -> dict:
    """The scenario with its profile written on this node (once per content, under the node's
    temporary folder), so a worker never reads the driver's file system."""
    if text is None:
        return scn_dict
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / "ligersim-profiles" / f"{digest}.yaml"
    if not path.exists():  # workers on one node may get here at once: each writes its own file
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, part = tempfile.mkstemp(dir=path.parent, suffix=".part")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(part, path)  # atomic: a reader sees no file or the whole of one
    return {**scn_dict, "hardware": {**scn_dict["hardware"], "profile": str(path)}}


def _point_on_node(variant: dict, prof_text: str | None, label: str, rate: float, jobs: list,
                   file: str, fold_ranks: bool) -> dict:
    from sim.curve import run_point

    return run_point(with_local_profile(variant, prof_text), label, rate, jobs, file, fold_ranks)


def _connect(address: str | None):
    try:
        import ray
    except ImportError:
        raise LigerSimError("--ray needs Ray: pip install 'ligersim[ray]' (or `pip install ray`)",
                            field="--ray") from None
    if ray.is_initialized():  # a notebook or test that started Ray itself keeps it
        return ray, False
    import sim

    _check_reachable(address or os.environ.get("RAY_ADDRESS"))
    try:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 runtime_env={"py_modules": [str(Path(sim.__file__).parent)]})
    except (ConnectionError, RuntimeError, ValueError) as e:  # unreachable, another Ray version, a bad address
        raise LigerSimError(f"cannot use the Ray cluster at {address or 'RAY_ADDRESS or this machine'!r}: "
                            f"{_first_line(e)}",
                            field="--ray") from None
    return ray, True


def _check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail in seconds on a HOST:PORT (or ray://HOST:PORT) nobody answers at: Ray itself retries
    for minutes before it gives up."""
    if not address or address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise LigerSimError(f"{address!r}: give HOST:PORT, ray://HOST:PORT or auto", field="--ray")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise LigerSimError(f"cannot reach a Ray cluster at {address!r} ({e.strerror or e}); start one with "
                            "`ray start --head` or leave ADDRESS out to run Ray on this machine", field="--ray") from None


def run_on_ray(variants: dict[str, dict], tasks: list[Task], jobs_at: Callable[[float], list], file: str,
               fold_ranks: bool, address: str | None, in_flight: int | None) -> Iterator[dict]:
    """Yield each point's row as it finishes. At most `in_flight` points are queued at once (all, by
    default; Ray runs as many as the cluster has CPUs). Stopping the generator (an error, Ctrl-C)
    cancels the points not yet finished; a Ray started here is shut down."""
    ray, started = _connect(address)
    try:
        remote = ray.remote(num_cpus=1)(_point_on_node)
        texts: dict[str | None, object] = {}  # one copy of each profile in the object store
        job_refs: dict[float, object] = {}
        queue = list(tasks)
        pending: dict = {}
        limit = in_flight or len(queue)
        try:
            while queue or pending:
                while queue and len(pending) < limit:
                    label, rate = queue.pop(0)
                    variant = variants[label]
                    where = profile_path(variant)
                    if where not in texts:
                        texts[where] = ray.put(profile_text(variant))
                    if rate not in job_refs:
                        job_refs[rate] = ray.put(jobs_at(rate))
                    ref = remote.remote(variant, texts[where], label, rate, job_refs[rate], file, fold_ranks)
                    pending[ref] = (label, rate)
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    yield _result(ray, ref, pending.pop(ref))
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
    finally:
        if started:
            ray.shutdown()


def _result(ray, ref, point: Task) -> dict:
    """A point's row. A user error raised on a node arrives as that error, not as Ray's wrapper; a
    node that cannot run ligersim (a missing package, a failed runtime environment, a worker killed,
    often for memory) as a one-line error naming the point. Anything else is a bug, with its traceback."""
    label, rate = point
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, LigerSimError):
            raise e.cause from None
        if isinstance(e.cause, ImportError):
            raise LigerSimError(f"{label} at {rate:g}/s: a Ray node lacks {e.cause.name or 'a package'}: install "
                                "ligersim's dependencies (simpy, numpy, pandas, pyarrow, pydantic, pyyaml) on every "
                                "node", field="--ray") from None
        raise
    except (ray.exceptions.RuntimeEnvSetupError, ray.exceptions.WorkerCrashedError,
            ray.exceptions.OutOfMemoryError, ray.exceptions.NodeDiedError) as e:
        raise LigerSimError(f"{label} at {rate:g}/s: Ray could not run the point ({_first_line(e)})",
                            field="--ray") from None


def _first_line(e: BaseException) -> str:
    """An exception as one line: its kind and the first line of its message (Ray's run on)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
