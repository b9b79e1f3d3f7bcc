"""pcocc.cli.fastinternal: the command lines pcocc gives its launcher and node processes
are read without click; any other goes to click."""

import pytest

from pcocc.cli import fastinternal
from pcocc.cli.fastinternal import parse
from pcocc.cli.main import run_cli


def test_the_node_and_launcher_command_lines_pcocc_writes_are_read():
    assert parse(["internal", "run"]) == ((False, 0, False), "run", {})
    assert parse(["-v", "-v", "internal", "run", "--restore", "/ck"]) == (
        (False, 2, False), "run", {"restore": "/ck"})
    assert parse(["--debug", "internal", "run", "--rank", "3", "--job", "7"]) == (
        (True, 0, False), "run", {"rank": 3, "job_id": "7"})
    assert parse(["-q", "internal", "launcher", "-E", "pcocc ssh vm0 -- x", "--hold"]) == (
        (False, 0, True), "launcher", {"command": "pcocc ssh vm0 -- x", "hold": True})


@pytest.mark.parametrize("argv", [
    ["internal"],
    ["internal", "vswitch", "--job", "1", "--network", "n"],
    ["internal", "run", "--help"],
    ["internal", "run", "--rank"],
    ["internal", "run", "--rank", "-1"],
    ["internal", "run", "--rank", "x"],
    ["internal", "run", "--hold"],
    ["internal", "launcher", "-E", "a", "-E", "b"],
    ["--system-config", "/etc", "internal", "run"],
    ["internal", "run", "extra"],
    ["run", "img", "--", "internal"],
])
def test_anything_else_is_left_to_click(argv):
    assert parse(argv) is None


def test_run_cli_runs_the_node_process_without_click(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setenv("PCOCC_SYSTEM_CONF_DIR", str(tmp_path / "etc"))
    monkeypatch.setenv("PCOCC_USER_CONF_DIR", str(tmp_path / "user"))
    monkeypatch.setattr("pcocc.cluster.noderun.run_node",
                        lambda config, rank, job, restore: calls.append((rank, job, restore)) or 3)
    assert run_cli(["internal", "run", "--rank", "1", "--job", "9"]) == 3
    assert calls == [(1, "9", None)]
    assert fastinternal.parse(["internal", "run"]) is not None
