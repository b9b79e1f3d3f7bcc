"""The ``pcocc image`` group: lazily loaded subgroups and their fallback."""

import subprocess
import sys

from pcocc.cli import image as image_cli
from pcocc.cli.main import run_cli


def test_missing_cache_module_says_not_available(pcocc_env, capsys, monkeypatch):
    monkeypatch.setitem(image_cli.SUBGROUPS, "cache",
                        ("pcocc.cli.no_such_module:cache", "Container cache"))
    assert run_cli(["image", "cache", "list"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "pcocc: error: 'pcocc image cache' is not available in this installation"


def test_help_lists_commands_without_importing_the_store(pcocc_env):
    code = ("import sys; from pcocc.cli.main import run_cli; rc = run_cli(['image', '--help']);"
            "print('STORE' if 'pcocc.repo.store' in sys.modules else 'NO-STORE', rc)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    for cmd in ("list", "show", "import", "export", "copy", "delete", "resize", "repo", "cache"):
        assert f"  {cmd} " in res.stdout
    assert res.stdout.strip().endswith("NO-STORE 0")
