"""Execute the notebooks headless (nbclient), or strip their outputs for git.

    python notebooks/run.py                 # small settings, executed copies in out/notebooks/
    python notebooks/run.py --full          # full settings (what `make notebooks` runs)
    python notebooks/run.py --strip         # clear outputs and execution counts in place (before committing)
    python notebooks/run.py 03_timeline     # only the notebooks whose names contain these words

The notebooks are never executed in place: the executed copies (with their figures) go to
`-o DIR` (default out/notebooks/, ignored by git), and so do the files the notebooks write.
Each notebook reads `LIGERSIM_FULL` (1: full settings) and `LIGERSIM_NB_OUT` (where to write).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def notebooks(names: list[str] | None = None) -> list[Path]:
    paths = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    if names:
        paths = [p for p in paths if any(n in p.name for n in names)]
    return paths


def kernel_env() -> None:
    """Make the `python3` kernel this interpreter (the venv's): its kernelspec directory first,
    ahead of any user-level `python3` kernelspec that might point elsewhere."""
    share = str(Path(sys.prefix) / "share" / "jupyter")
    paths = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    if share not in paths:
        os.environ["JUPYTER_PATH"] = os.pathsep.join([share, *paths])


def execute(path: Path, out_dir: Path, full: bool = False, timeout: int = 600, env: dict | None = None,
            cwd: Path | None = None):
    """Run one notebook top to bottom in a fresh kernel started in `cwd` (default: the notebook's
    folder) with `env` added to its environment; returns the executed notebook and writes it to
    `out_dir/NAME.ipynb`. Raises nbclient's CellExecutionError on a failing cell."""
    import nbformat
    from nbclient import NotebookClient

    kernel_env()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LIGERSIM_FULL": "1" if full else "0", "LIGERSIM_NB_OUT": str(out_dir.resolve()),
           **(env or {})}
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=timeout,
                            resources={"metadata": {"path": str(cwd or path.parent)}})
    try:
        client.execute(env=env)  # passed to the kernel manager: the kernel's environment
    finally:
        nbformat.write(nb, out_dir / path.name)
    return nb


def strip(path: Path) -> bool:
    """Clear outputs, execution counts and run metadata; True if the file changed."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    after = nbformat.writes(nb)
    if after != before:
        path.write_text(after)
    return after != before


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="run only notebooks whose file name contains one of these")
    ap.add_argument("--full", action="store_true", help="full settings (minutes) instead of small ones")
    ap.add_argument("-o", "--output", default=str(ROOT / "out" / "notebooks"), help="folder for executed copies")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds one cell may run")
    ap.add_argument("--strip", action="store_true", help="strip outputs in place instead of executing")
    args = ap.parse_args(argv)
    paths = notebooks(args.names)
    if not paths:
        print("no notebook matches", file=sys.stderr)
        return 2
    if args.strip:
        for p in paths:
            print(f"{'stripped' if strip(p) else 'clean   '} {p.relative_to(ROOT)}")
        return 0
    from nbclient.exceptions import CellExecutionError

    failed = 0
    for p in paths:
        t0 = time.perf_counter()
        try:
            execute(p, Path(args.output), full=args.full, timeout=args.timeout)
            status = "ok"
        except CellExecutionError as e:
            failed += 1
            status = f"FAILED\n{e}"
        print(f"{p.name}: {status} ({time.perf_counter() - t0:.1f} s) -> {Path(args.output) / p.name}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
