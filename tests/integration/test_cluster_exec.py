"""``pcocc exec`` and VM sets on a real 4-VM cluster of the test VM on the Slurm dev cluster
(one boot for every check, in order), and ``pcocc batch -b`` running a script in vm0."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.fixtures.cluster import Env, _endpoints, assert_nothing_left

pytestmark = pytest.mark.slow

#: prints, then waits (at most 60 s) until /tmp/go exists in the guest, then prints again:
#: the host sees the first line only if output is streamed, and only then makes /tmp/go
WAITS_FOR_GO = (
    "echo first; i=0; while [ ! -e /tmp/go ] && [ $i -lt 300 ]; do sleep 0.2; i=$((i+1)); "
    "done; if [ -e /tmp/go ]; then echo second; else echo 'no go'; fi"
)


def _lines(text: str) -> list[str]:
    return sorted(text.splitlines())


def _check_exec(env: Env, job_id: str) -> None:
    # every VM (the default), each line prefixed by its VM
    res = env.run("exec", "hostname", timeout_s=120)
    assert res.returncode == 0, res.stderr
    assert _lines(res.stdout) == [f"vm{i}: vm{i}" for i in range(4)]

    # the worst status wins; stderr is kept apart and prefixed too
    res = env.run("exec", "-i", "vm[1-3]",
                  "case $(hostname) in vm2) echo bad >&2; exit 5;; vm3) exit 2;; esac",
                  timeout_s=120)
    assert res.returncode == 5, res.stderr
    assert res.stdout == "" and res.stderr == "vm2: bad\n"
    res = env.run("exec", "-i", "1,3", "hostname; exit 3", timeout_s=120)
    assert res.returncode == 3 and _lines(res.stdout) == ["vm1: vm1", "vm3: vm3"], res.stderr

    # streaming: the first line arrives while the command still runs
    waiting = env.start("exec", "-i", "0", WAITS_FOR_GO)
    try:
        assert waiting.stdout.readline() == "first\n"
        assert waiting.poll() is None
        assert env.run("exec", "-i", "0", "touch /tmp/go", timeout_s=120).returncode == 0
        out, err = waiting.communicate(timeout=120)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert (waiting.returncode, out) == (0, "second\n"), err

    # standard input, another user, environment variables
    res = env.run("exec", "-i", "2", "-s", "tr a-z A-Z", input="hello\nvm\n", timeout_s=120)
    assert (res.returncode, res.stdout) == (0, "HELLO\nVM\n"), res.stderr
    res = env.run("exec", "-i", "1", "echo 'bob:x:1000:1000::/tmp:/bin/sh' >> /etc/passwd",
                  timeout_s=120)
    assert res.returncode == 0, res.stderr
    res = env.run("exec", "-i", "1", "-u", "bob", "--env", "GREETING=a 'b' $c",
                  'echo "$(id -u) $GREETING"', timeout_s=120)
    assert (res.returncode, res.stdout) == (0, "1000 a 'b' $c\n"), res.stderr

    # monitor-cmd on a VM set, and its default vm0
    res = env.run("monitor-cmd", "vm[0-1]", "info", "status", timeout_s=120)
    assert res.returncode == 0, res.stderr
    assert _lines(res.stdout) == ["vm0: VM status: running", "vm1: VM status: running"]
    res = env.run("monitor-cmd", "info", "status", timeout_s=120)
    assert (res.returncode, res.stdout.strip()) == (0, "VM status: running"), res.stderr

    # Ctrl-C: stops waiting and kills the guest processes
    sleeper = env.start("exec", "-i", "3", "echo started; sleep 321; echo not killed")
    try:
        assert sleeper.stdout.readline() == "started\n"
        os.killpg(sleeper.pid, signal.SIGINT)
        out, err = sleeper.communicate(timeout=60)
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
    assert sleeper.returncode == 130 and "not killed" not in out, err
    assert "Traceback" not in err
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        res = env.run("exec", "-i", "3", "ps", timeout_s=120)
        if "sleep 321" not in res.stdout:
            break
        time.sleep(1)
    assert "sleep 321" not in res.stdout

    # nothing of pcocc exec is left in the guests' /tmp
    res = env.run("exec", "ls -a /tmp", timeout_s=120)
    assert res.returncode == 0 and ".pcocc-exec" not in res.stdout, res.stdout

    # a VM whose agent stops answering, and one whose agent socket is gone: one line each
    res = env.run("exec", "-i", "2", "kill -STOP $(pidof qemu-ga)", timeout_s=120)
    assert res.returncode == 1
    sockets = list((env.run_dir / job_id / "vm3").rglob("qga.sock"))
    assert len(sockets) == 1, sorted(env.tmp.rglob("qga.sock"))
    sockets[0].unlink()
    res = env.run("exec", "hostname", timeout_s=120)
    assert res.returncode == 1
    assert _lines(res.stdout) == ["vm0: vm0", "vm1: vm1"]
    errors = sorted(res.stderr.splitlines())
    assert len(errors) == 2 and "Traceback" not in res.stderr, res.stderr
    assert errors[0].startswith("pcocc: error: vm2: the guest agent on ")
    assert errors[0].endswith("did not answer in time (is qemu-guest-agent running in vm2?)")
    assert errors[1].startswith("pcocc: error: vm3: vm3 has no guest agent socket: ")


def test_exec_on_four_vms_of_the_slurm_cluster(slurm_test_env):
    env = slurm_test_env
    alloc = env.start("alloc", "-E", "sleep 900", "testvm:4")
    try:
        [cluster] = env.wait_ps(
            lambda cs: len(cs) == 1 and cs[0]["running"] == 4, "the VMs to run", proc=alloc
        )
        _check_exec(env, cluster["id"])
    finally:
        if alloc.poll() is None:
            os.killpg(alloc.pid, signal.SIGINT)
        alloc.communicate(timeout=180)
    assert_nothing_left(env, _endpoints(env))


def test_batch_script_runs_in_vm0_and_gives_the_job_its_status(slurm_test_env):
    env = slurm_test_env
    script = env.tmp / "job.sh"
    script.write_text("#!/bin/sh\necho \"in-vm: $(hostname)\"\necho oops >&2\nexit 3\n")
    res = env.run("batch", "-b", str(script), "testvm:2")
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.strip()
    deadline = time.monotonic() + 600
    info = ""
    while time.monotonic() < deadline:
        info = subprocess.run(["scontrol", "show", "job", job_id], env=env.env,
                              capture_output=True, text=True).stdout
        if "JobState=COMPLETED" in info or "JobState=FAILED" in info:
            break
        time.sleep(1)
    assert "JobState=FAILED" in info and "ExitCode=3:0" in info, info
    text = (env.tmp / f"slurm-{job_id}.out").read_text()
    assert "in-vm: vm0\n" in text and "oops\n" in text, text
    assert "Traceback" not in text
    assert_nothing_left(env, _endpoints(env))
