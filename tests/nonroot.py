"""Running pcocc code as an unprivileged user from tests that run as root."""

from __future__ import annotations

import shutil
import subprocess
import sys
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


#: The system interpreter: other users can run it, unlike a virtualenv in a private home.
SYSTEM_PYTHON = "/usr/bin/python3"


def readable_site_packages(dest: Path) -> Path:
    """A copy of pcocc's dependencies (the test virtualenv's site-packages) that other users
    can read; the virtualenv may sit in a directory only root can enter."""
    import yaml

    site = Path(yaml.__file__).resolve().parent.parent
    skip = {"pip", "setuptools", "_pytest", "pytest", "pcocc", "__pycache__"}
    shutil.copytree(
        site,
        dest,
        ignore=lambda d, names: [
            n for n in names if n in skip or n.startswith("__editable__") or n.endswith(".pth")
        ],
    )
    subprocess.run(["chmod", "-R", "a+rX", str(dest)], check=True)
    return dest


def system_python_problem() -> str | None:
    """Why :data:`SYSTEM_PYTHON` cannot run the copied packages, or None when it can (the
    compiled ones need the same Python version as the test interpreter)."""
    try:
        out = subprocess.run(
            [SYSTEM_PYTHON, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError) as err:
        return f"{SYSTEM_PYTHON} cannot run: {err}"
    if tuple(map(int, out)) != sys.version_info[:2]:
        return f"{SYSTEM_PYTHON} is Python {'.'.join(out)}, the tests run {sys.version.split()[0]}"
    return None


def nonroot_pythonpath(top: Path) -> str:
    """PYTHONPATH with readable copies of pcocc and its dependencies under ``top`` (which
    must be traversable by all), for running ``SYSTEM_PYTHON -m pcocc.cli.main``."""
    top.chmod(0o755)
    return ":".join([str(readable_site_packages(top / "site")), str(readable_pcocc(top))])
