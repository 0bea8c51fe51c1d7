"""Rebuild every committed validation report from its recorded GPU runs, without a GPU.

Each `results/validation/NAME/` holds the runs `ligersim validate --timing both` measured on the
GPU (`measured/`: CUDA-event timing, for makespan and request times; `measured_cupti/`: CUPTI
timing, for kernel times). This re-predicts them with a profile (default the committed
`profiles/h100-sxm.yaml`) from `scenarios/validation/NAME.yaml`, rewrites the report, summary and
plots, and keeps the folder small: the IR and validation.csv gzipped, the predicted runs
(closed_loop/, replay/) dropped, since this script makes them again.

Run: `.venv/bin/python results/revalidate.py [--profile P] [--root DIR] [--host-costs profile] [NAME ...]`
(`--root` a copy of the folder, to compare without touching the committed reports).
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _gzip(path: Path) -> None:
    if path.exists():
        with open(path, "rb") as src, open(path.with_name(path.name + ".gz"), "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as dst:
            shutil.copyfileobj(src, dst)  # no name or time in the header: same input, same bytes
        path.unlink()


def main() -> None:
    from hw.validate import validate

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="report folders to rebuild (default: all)")
    ap.add_argument("--profile", default="profiles/h100-sxm.yaml")
    ap.add_argument("--root", default="results/validation")
    ap.add_argument("--host-costs", choices=("in-process", "profile"), default="in-process",
                    help="as `ligersim validate --host-costs` (runs without an in-process probe use the profile's)")
    args = ap.parse_args()
    root = Path(args.root)
    names = args.names or sorted(p.parent.name for p in root.glob("*/measured"))
    for name in names:
        out = root / name
        kernels = out / "measured_cupti"
        scn = ROOT / "scenarios" / "validation" / f"{name}.yaml"
        if scn.is_relative_to(Path.cwd()):  # reports name their files relative to the checkout
            scn = scn.relative_to(Path.cwd())
        s = validate(scn, args.profile, out, measured=out / "measured", kernels=kernels if kernels.is_dir() else None,
                     host_costs=args.host_costs.replace("-", "_"))
        for mode in ("closed_loop", "replay"):
            shutil.rmtree(out / mode, ignore_errors=True)
        (out / "validation.csv.gz").unlink(missing_ok=True)
        _gzip(out / "validation.csv")
        _gzip(out / "measured" / "ir.jsonl")
        _gzip(out / "measured_cupti" / "ir.jsonl")  # (its kernels' shapes, for matching by shape)
        m = s["closed_loop"]
        print(f"{name}: kernel |err| median {m['kernel_err_median']:.1%}, makespan {m['makespan_err']:+.1%}, "
              f"mean JCT {m['jct_mean_err']:+.1%}")


if __name__ == "__main__":
    main()
