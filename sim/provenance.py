"""Which code made a result: the commit of the checkout, and whether it had uncommitted changes.

Measured results outlive the code that made them (the executor changed twice during the first
H100 session, and its reports had to say by hand which commit measured which run). A copy of
the tree without its `.git` (as a remote GPU machine gets) can be told its commit through
`LIGERSIM_CODE`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def code_version(root: Path = ROOT) -> str | None:
    """"<commit>" or "<commit>+changes" of the checkout at `root`; `LIGERSIM_CODE` when set;
    None when neither is known."""
    given = os.environ.get("LIGERSIM_CODE")
    if given:
        return given
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
