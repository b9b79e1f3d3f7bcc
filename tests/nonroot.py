"""Running pcocc code as an unprivileged user from tests that run as root."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pcocc

PACKAGE_DIR = Path(pcocc.__file__).resolve().parent


def readable_pcocc(dest: Path) -> Path:
    """Copy the pcocc package into ``dest``, readable by all; return the PYTHONPATH entry.

    The checkout may sit in a directory other users cannot enter (a clone in a 0700
    ``mktemp -d``, a private home), so unprivileged test processes import this copy.
    """
    root = dest / "pcocc-src"
    shutil.copytree(PACKAGE_DIR, root / "pcocc", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    return root
