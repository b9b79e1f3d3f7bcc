"""click's usage errors come out in pcocc's format: one error line, one hint, status 2."""

from __future__ import annotations

import pytest

from pcocc.cli.main import run_cli


@pytest.mark.parametrize(("argv", "error", "where"), [
    (["alloc", "-c", "0", "tpl:1"],
     "pcocc: error: Invalid value for '-c' / '--cores': 0 is not in the range x>=1.",
     "pcocc alloc"),
    (["nosuchcommand"], "pcocc: error: No such command 'nosuchcommand'.", "pcocc"),
    (["image", "list", "--nosuch"], "pcocc: error: No such option '--nosuch'.", "pcocc image list"),
])
def test_usage_errors_in_pcoccs_format(argv, error, where, capsys, pcocc_env):
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [error, f"hint: see '{where} --help'"]
