"""``pcocc image --help`` in a fresh interpreter: the store is not imported."""

from __future__ import annotations

import subprocess
import sys


def test_help_lists_commands_without_importing_the_store(pcocc_env):
    code = ("import sys; from pcocc.cli.main import run_cli; rc = run_cli(['image', '--help']);"
            "print('STORE' if 'pcocc.repo.store' in sys.modules else 'NO-STORE', rc)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    for cmd in ("list", "show", "import", "export", "copy", "delete", "resize", "repo", "cache"):
        assert f"  {cmd} " in res.stdout
    assert res.stdout.strip().endswith("NO-STORE 0")
