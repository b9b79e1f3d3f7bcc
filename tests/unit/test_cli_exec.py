"""``pcocc exec``, ``reset``, ``monitor-cmd`` and ``batch -b``: bad input is refused in one
line with status 2 before any cluster is looked up; the job command of ``batch -b``."""

from __future__ import annotations

import base64
import shlex

import pytest

from pcocc.cli.main import run_cli
from pcocc.cluster import jobs


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["exec", "-i", "0-", "true"], "'0-' is not a VM set"),
        (["exec", "-i", "vm[3-1]", "true"], "range '3-1' goes backwards"),
        (["exec", "-i", "99999999", "true"], "is not a VM set"),
        (["exec", "-u", "root;reboot", "true"], "-u 'root;reboot' is not a user name"),
        (["exec", "--env", "1A=b", "true"], "--env: '1A=b' is not NAME=VALUE"),
        (["exec"], "no command given"),
        (["exec", "--script", "x", "true"], "give either --script FILE or CMD"),
        (["exec", "--script", "/nonexistent/s.sh"], "--script '/nonexistent/s.sh': cannot read"),
        (["reset", "vm[a]"], "'vm[a]' is not a VM set"),
        (["reset", "bogus"], "'bogus' is not a VM set"),
        (["reset", "-i", "0", "vm1"], "either with -i or as 'vm1', not both"),
        (["monitor-cmd", "vm[0-", "info", "status"], "'vm[0-' is not a VM set"),
        (["batch", "-b", "/nonexistent/job.sh", "tpl:1"], "-b '/nonexistent/job.sh': cannot read"),
    ],
)
def test_bad_input_is_one_line_and_status_2(argv, error, capsys, pcocc_env, monkeypatch):
    # no cluster, no etcd: the input must be refused before either is needed
    monkeypatch.delenv("PCOCC_JOB_ID", raising=False)
    monkeypatch.setenv("PCOCC_ETCD_ENDPOINTS", "127.0.0.1:1")
    assert run_cli(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("pcocc: error: ") and error in err[0], err
    assert len(err) <= 2 and "Traceback" not in "".join(err)


SCRIPT = b"#!/bin/sh\necho 'it''s' \"$HOME\"\nexit 3\n" + bytes(range(256))


def test_batch_script_travels_whole_in_the_job_command():
    command = jobs.guest_script_command(SCRIPT)
    first, *body, end, last = command.split("\n")
    assert last == "" and end == jobs.SCRIPT_END
    assert jobs.SCRIPT_END not in body
    assert base64.b64decode("".join(body)) == SCRIPT
    pipe = first.split(" | ", 1)
    assert pipe[0] == f"base64 -d <<'{jobs.SCRIPT_END}'"
    assert shlex.split(pipe[1])[1:] == ["exec", "-i", "0", "--script", "-"]
