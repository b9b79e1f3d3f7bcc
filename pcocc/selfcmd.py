"""The command line that starts this very pcocc again: the launcher and node processes of
a virtual cluster, container tasks on the nodes, a command re-run in a new allocation.

Both forms run the interpreter and the pcocc of this process, never one found on PATH.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: the module ``python -m`` runs
MAIN_MODULE = "pcocc.cli.main"


def module_argv() -> list[str]:
    """``python -m pcocc.cli.main`` with this interpreter (the cluster's processes)."""
    return [sys.executable, "-m", MAIN_MODULE]


def pcocc_argv() -> list[str]:
    """The console script next to this interpreter, else :func:`module_argv` (container
    tasks and re-runs, whose ``ps`` line then reads ``pcocc ...``)."""
    exe = Path(sys.executable).parent / "pcocc"
    return [str(exe)] if exe.exists() else module_argv()


def config_env(system_dir: str, user_dir: str) -> dict[str, str]:
    """The variables that make the started pcocc read this one's configuration."""
    return {"PCOCC_SYSTEM_CONF_DIR": str(system_dir), "PCOCC_USER_CONF_DIR": str(user_dir)}
