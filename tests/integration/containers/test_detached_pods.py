"""Detached pods (``pcocc run --detach``), ``pcocc pod stop`` and ``pod logs --follow``, with
crun and runc through the CLI."""

from __future__ import annotations

import os
import selectors
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.containers.ctrlib import pcocc, pods


@pytest.fixture(params=["crun", "runc"])
def oci(request) -> str:
    if not shutil.which(request.param):
        pytest.skip(f"{request.param} is not installed")
    return request.param


def detach(pcocc_bin, runtime, image, script, *opts, check=0):
    res = pcocc(pcocc_bin, "run", "--detach", "--runtime", runtime, *opts, str(image),
                "--", "sh", "-c", script, check=check)
    return res.stdout.strip()


def record(pcocc_bin, uuid) -> dict:
    [rec] = [p for p in pods(pcocc_bin) if p["uuid"] == uuid]
    return rec


def alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def pod_processes(uuid) -> list[int]:
    """Processes whose command line names the pod (the runtimes run 'pcocc-UUID-app')."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if uuid.encode() in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
            except OSError:
                continue
    return found


def assert_nothing_left(rec):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [p for p in [rec["pid"], *(a["pid"] for a in rec["apps"])] if p and alive(p)]
        left += pod_processes(rec["uuid"])
        if not left:
            return
        time.sleep(0.1)
    pytest.fail(f"processes of pod {rec['uuid']} left: {left}")


def tty_nr(pid) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[4])


TICKS = "trap 'echo bye; exit 0' TERM; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"


def test_detached_pod_outlives_the_cli_and_its_shell_then_stops_gracefully(
    env, pcocc_bin, image_dir, oci, tmp_path
):
    out = tmp_path / "uuid"
    cmd = (f"{shlex.quote(pcocc_bin)} run --detach --runtime {oci} {shlex.quote(str(image_dir))}"
           f" -- sh -c {shlex.quote(TICKS)} > {out}; touch {out}.done; sleep 600")
    shell = subprocess.Popen(["setsid", "sh", "-c", cmd], env=os.environ)
    try:
        deadline = time.monotonic() + 120
        while not Path(f"{out}.done").exists():
            assert time.monotonic() < deadline and shell.poll() is None, "run --detach hung"
            time.sleep(0.1)
    finally:
        os.killpg(shell.pid, signal.SIGHUP)  # the shell's session ends, as on a logout
        os.killpg(shell.pid, signal.SIGKILL)
        shell.wait()
    uuid = out.read_text().strip()
    rec = record(pcocc_bin, uuid)
    assert rec["state"] == "running" and rec["detached"] is True
    # the supervisor has a session of its own and no controlling terminal
    assert os.getsid(rec["pid"]) not in (shell.pid, os.getsid(0))
    assert tty_nr(rec["pid"]) == 0
    time.sleep(1.0)  # the shell and its session are gone: the pod still runs and writes
    logs = pcocc(pcocc_bin, "pod", "logs", uuid[:8], check=0).stdout
    assert "tick 2" in logs
    assert record(pcocc_bin, uuid)["state"] == "running"

    res = pcocc(pcocc_bin, "pod", "stop", uuid[:8], check=0)
    assert uuid in res.stdout
    rec = record(pcocc_bin, uuid)
    assert rec["state"] == "exited"
    assert rec["apps"][0]["exit_status"] == 0  # it ran its SIGTERM trap
    assert pcocc(pcocc_bin, "pod", "logs", uuid, check=0).stdout.rstrip().endswith("bye")
    assert_nothing_left(rec)


def test_stop_kills_an_app_that_ignores_sigterm(env, pcocc_bin, image_dir, oci):
    deaf = "trap '' TERM; while true; do sleep 0.1; done"
    forced = detach(pcocc_bin, oci, image_dir, deaf)
    late = detach(pcocc_bin, oci, image_dir, deaf)
    assert {record(pcocc_bin, u)["state"] for u in (forced, late)} == {"running"}

    pcocc(pcocc_bin, "pod", "stop", "--force", forced, check=0)
    rec = record(pcocc_bin, forced)
    assert rec["state"] == "exited" and rec["apps"][0]["exit_status"] == 128 + 9
    assert_nothing_left(rec)

    t0 = time.monotonic()
    pcocc(pcocc_bin, "pod", "stop", "--timeout", "1", late, check=0)
    assert time.monotonic() - t0 >= 1.0  # the grace period was given
    rec = record(pcocc_bin, late)
    assert rec["state"] == "exited" and rec["apps"][0]["exit_status"] == 128 + 9
    assert_nothing_left(rec)


def read_until(proc, text, timeout_s=30.0) -> str:
    """Output of ``proc`` until ``text`` appears."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    got = b""
    deadline = time.monotonic() + timeout_s
    while text.encode() not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"no {text!r} in {got!r}"
        if sel.select(left):
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, f"output ended without {text!r}: {got!r}"
            got += chunk
    return got.decode()


def test_logs_follow_shows_lines_as_the_app_writes_them(
    env, pcocc_bin, image_dir, oci, tmp_path
):
    gate = tmp_path / "gate"
    gate.mkdir()
    script = ("echo first; while [ ! -e /gate/go ]; do sleep 0.1; done; echo second; "
              "while [ ! -e /gate/end ]; do sleep 0.1; done; echo last")
    uuid = detach(pcocc_bin, oci, image_dir, script,
                  "--volume", f"gate,kind=host,source={gate}", "--mount", "volume=gate,target=/gate")
    follow = subprocess.Popen([pcocc_bin, "pod", "logs", "--follow", uuid[:8]],
                              stdout=subprocess.PIPE)
    try:
        assert "second" not in read_until(follow, "first\n")
        (gate / "go").touch()
        assert "last" not in read_until(follow, "second\n")
        (gate / "end").touch()
        read_until(follow, "last\n")
        assert follow.wait(timeout=30) == 0  # it ends with the pod
    finally:
        if follow.poll() is None:
            follow.kill()
    assert record(pcocc_bin, uuid)["state"] == "exited"


def test_a_start_error_fails_the_command(env, pcocc_bin, image_dir, oci):
    res = pcocc(pcocc_bin, "run", "--detach", "--runtime", oci, str(image_dir),
                "--", "/no/such/program", check=1)
    assert "failed to start" in res.stderr and "Traceback" not in res.stderr
    assert "/no/such/program" in res.stderr  # the runtime says why
    assert res.stdout == ""
    [rec] = pods(pcocc_bin)
    assert rec["state"] == "exited"
    assert_nothing_left(rec)


def test_stop_errors_change_nothing(env, pcocc_bin, image_dir, oci):
    running = detach(pcocc_bin, oci, image_dir, "sleep 600")
    ended = detach(pcocc_bin, oci, image_dir, "true")
    deadline = time.monotonic() + 30
    while record(pcocc_bin, ended)["state"] != "exited":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    before = record(pcocc_bin, ended)

    res = pcocc(pcocc_bin, "pod", "stop", running, "0000dead", check=1)
    assert "no pod with UUID '0000dead'" in res.stderr and "Traceback" not in res.stderr
    res = pcocc(pcocc_bin, "pod", "stop", running, ended, check=1)
    assert f"pod {ended} is exited, not running" in res.stderr
    assert record(pcocc_bin, ended) == before
    assert record(pcocc_bin, running)["state"] == "running"  # not stopped on the way

    res = pcocc(pcocc_bin, "pod", "logs", "--follow", "--app", "nope", running, check=2)
    assert "has no app 'nope'" in res.stderr
    pcocc(pcocc_bin, "pod", "stop", "--force", running, check=0)
    assert_nothing_left(record(pcocc_bin, running))
