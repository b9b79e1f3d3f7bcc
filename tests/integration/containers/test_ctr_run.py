"""pcocc run / pcocc pod with the real runtimes (crun, runc, unshare), through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import testrootfs
from tests.integration.containers.ctrlib import pcocc, pods, run_image
from tests.nonroot import readable_pcocc


def wait_running(pcocc_bin, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = [p for p in pods(pcocc_bin) if p["state"] == "running"]
        if running and all(a["pid"] for a in running[0]["apps"]):
            return running[0]
        time.sleep(0.1)
    pytest.fail("no pod reached the running state")


# -- exit statuses, output, hostname ---------------------------------------------------
def test_exit_status_propagates(env, pcocc_bin, image_dir, runtime):
    run_image(pcocc_bin, runtime, image_dir, "true", check=0)
    run_image(pcocc_bin, runtime, image_dir, "false", check=1)
    run_image(pcocc_bin, runtime, image_dir, "sh", "-c", "exit 7", check=7)


def test_hostname_output_and_logs(env, pcocc_bin, image_dir, runtime):
    res = run_image(
        pcocc_bin, runtime, image_dir, "sh", "-c", "hostname; echo to-stderr >&2", check=0,
    )
    [pod] = pods(pcocc_bin)
    assert res.stdout.strip() == f"pcocc-{pod['uuid'][:8]}"
    assert "to-stderr" in res.stderr
    assert pod["state"] == "exited" and pod["runtime"] == runtime
    logs = pcocc(pcocc_bin, "pod", "logs", pod["uuid"][:8], check=0).stdout
    assert f"pcocc-{pod['uuid'][:8]}" in logs and "to-stderr" in logs


def test_image_default_command(env, pcocc_bin, image_dir, runtime):
    res = run_image(pcocc_bin, runtime, image_dir, check=0)
    assert res.stdout.strip() == "default-cmd"


def test_runs_as_the_caller_by_default(env, pcocc_bin, image_dir, runtime):
    res = run_image(pcocc_bin, runtime, image_dir, "id", "-u", check=0)
    assert res.stdout.strip() == str(os.getuid())


def test_runtime_from_containers_yaml_and_auto(env, pcocc_bin, image_dir):
    (env["user"] / "containers.yaml").write_text("runtime: runc\n")
    pcocc(pcocc_bin, "run", image_dir, "--", "true", check=0)
    (env["user"] / "containers.yaml").write_text("runtime: auto\n")
    pcocc(pcocc_bin, "run", image_dir, "--", "true", check=0)
    run_image(pcocc_bin, "unshare", image_dir, "true", check=0)
    used = [p["runtime"] for p in pods(pcocc_bin)]
    assert used[0] == "runc" and used[2] == "unshare"
    assert used[1] in ("crun", "runc", "unshare")


def test_interactive_passes_stdin(env, pcocc_bin, image_dir, runtime):
    res = pcocc(
        pcocc_bin,
        "run",
        "--runtime",
        runtime,
        "--interactive",
        image_dir,
        "--",
        "sh",
        "-c",
        "read line; echo got:$line",
        input="hello\n",
        check=0,
    )
    assert res.stdout.strip() == "got:hello"
    res = run_image(
        pcocc_bin, runtime, image_dir, "sh", "-c", "read line; echo got:$line",
        input="hello\n", check=0,
    )
    assert res.stdout.strip() == "got:"  # without -i the app reads /dev/null


# -- environment ------------------------------------------------------------------------
def test_env_precedence(env, pcocc_bin, image_dir, runtime, tmp_path, monkeypatch):
    (env["user"] / "containers.yaml").write_text(
        "env:\n  CONF_VAR: from-config\n  OVERRIDE_ME: config\n  HOST_WINS: config\n"
    )
    env_file = tmp_path / "vars.env"
    env_file.write_text("# set by file\nFILE_VAR=from-file\nOVERRIDE_ME=file\n")
    monkeypatch.setenv("HOST_WINS", "host")
    script = "echo $IMAGE_VAR $CONF_VAR $HOST_WINS $FILE_VAR $OVERRIDE_ME $SET_VAR"
    res = pcocc(
        pcocc_bin,
        "run",
        "--runtime",
        runtime,
        "--inherit-env",
        "--set-env-file",
        env_file,
        "--set-env",
        "OVERRIDE_ME=explicit",
        "--set-env",
        "SET_VAR=a=b",
        image_dir,
        "--",
        "sh",
        "-c",
        script,
        check=0,
    )
    assert res.stdout.split() == [
        "from-image",
        "from-config",
        "host",
        "from-file",
        "explicit",
        "a=b",
    ]
    res = run_image(
        pcocc_bin, runtime, image_dir, "sh", "-c", "echo ${HOST_WINS:-unset}", check=0,
    )
    assert res.stdout.strip() == "config"  # no --inherit-env: the host's value stays out


# -- volumes ----------------------------------------------------------------------------
def test_volumes_read_only_and_read_write(env, pcocc_bin, image_dir, runtime, tmp_path):
    data = tmp_path / "data dir"
    data.mkdir()
    (data / "in.txt").write_text("hello\n")
    ro = pcocc(
        pcocc_bin,
        "run",
        "--runtime",
        runtime,
        "--volume",
        f"d,kind=host,source={data},readOnly=true",
        "--mount",
        "volume=d,target=/data",
        image_dir,
        "--",
        "sh",
        "-c",
        "cat /data/in.txt; touch /data/new",
    )
    assert ro.returncode != 0 and "hello" in ro.stdout
    assert "Read-only file system" in ro.stderr
    assert not (data / "new").exists()
    pcocc(
        pcocc_bin,
        "run",
        "--runtime",
        runtime,
        "--volume",
        f"d,kind=host,source={data}",
        "--mount",
        "volume=d,target=/data",
        image_dir,
        "--",
        "sh",
        "-c",
        "echo written > /data/new",
        check=0,
    )
    assert (data / "new").read_text() == "written\n"


def test_containers_yaml_mounts_and_modules(env, pcocc_bin, image_dir, runtime, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "f").write_text("site-file\n")
    (env["system"] / "containers.yaml").write_text(
        f"mounts:\n  - {{source: '{site}', target: /site, readonly: true}}\n"
        f"modules:\n  tools:\n    mounts: [{{source: '{site}', target: /tools}}]\n"
        f"    env: {{TOOLS: enabled}}\n"
    )
    res = pcocc(
        pcocc_bin,
        "run",
        "--runtime",
        runtime,
        "--module",
        "tools",
        image_dir,
        "--",
        "sh",
        "-c",
        "cat /site/f /tools/f; echo $TOOLS",
        check=0,
    )
    assert res.stdout.split() == ["site-file", "site-file", "enabled"]


# -- pods with several apps -------------------------------------------------------------
def test_two_apps_in_one_pod(env, pcocc_bin, image_dir, runtime):
    res = pcocc(
        pcocc_bin,
        "run",
        "--runtime",
        runtime,
        "--volume",
        "shared,kind=empty",
        "--mount",
        "volume=shared,target=/shared",
        image_dir,
        "--",
        "sh",
        "-c",
        "hostname; echo one > /shared/one",
        "---",
        image_dir,
        "--",
        "sh",
        "-c",
        "hostname; sleep 0.3; cat /shared/one",
        check=0,
    )
    [pod] = pods(pcocc_bin)
    lines = res.stdout.split()
    host = f"pcocc-{pod['uuid'][:8]}"
    assert lines.count(host) == 2 and "one" in lines
    assert [a["name"] for a in pod["apps"]] == ["img", "img-2"]
    status = pcocc(pcocc_bin, "pod", "status", pod["uuid"][:8], check=0).stdout
    assert "img=0" in status and "img-2=0" in status and "state=exited" in status


def test_first_failing_app_gives_the_status(env, pcocc_bin, image_dir, runtime):
    run_image(
        pcocc_bin, runtime, image_dir, "true",
        "---", image_dir, "--", "sh", "-c", "exit 4",
        "---", image_dir, "--", "sh", "-c", "exit 5",
        check=4,
    )


# -- enter, status --wait ---------------------------------------------------------------
def test_enter_a_running_pod(env, pcocc_bin, image_dir, runtime):
    run = subprocess.Popen(
        [pcocc_bin, "run", "--runtime", runtime, str(image_dir), "--", "sleep", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        pod = wait_running(pcocc_bin)
        short = pod["uuid"][:8]
        res = pcocc(
            pcocc_bin,
            "pod",
            "enter",
            short,
            "sh",
            "-c",
            "cat /proc/1/cmdline | tr '\\0' ' '; echo; hostname; echo $IMAGE_VAR",
            check=0,
        )
        assert res.stdout.split() == ["sleep", "30", f"pcocc-{short}", "from-image"]
        assert pcocc(pcocc_bin, "pod", "enter", short, "sh", "-c", "exit 3").returncode == 3
        status = pcocc(pcocc_bin, "pod", "status", short, check=0).stdout
        assert "state=running" in status and "exited=false" in status
        run.send_signal(signal.SIGTERM)
        waited = pcocc(pcocc_bin, "pod", "status", "--wait", short, check=0).stdout
        assert "state=exited" in waited and "img=137" in waited
        run.wait(timeout=20)
        assert run.returncode != 0
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    res = pcocc(pcocc_bin, "pod", "enter", pod["uuid"][:8], "true")
    assert res.returncode == 1 and "not running" in res.stderr


def test_enter_needs_the_app_name_when_several(env, pcocc_bin, image_dir):
    run = subprocess.Popen(
        [
            pcocc_bin,
            "run",
            "--runtime",
            "crun",
            str(image_dir),
            "--",
            "sleep",
            "30",
            "---",
            str(image_dir),
            "--",
            "sleep",
            "30",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        pod = wait_running(pcocc_bin)
        res = pcocc(pcocc_bin, "pod", "enter", pod["uuid"][:8], "true")
        assert res.returncode == 2 and "several apps: img, img-2" in res.stderr
        pcocc(pcocc_bin, "pod", "enter", "--app", "img-2", pod["uuid"][:8], "true", check=0)
    finally:
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=20)


def test_killed_supervisor_shows_exited_and_gc_cleans(env, pcocc_bin, image_dir, runtime):
    run = subprocess.Popen(
        [pcocc_bin, "run", "--runtime", runtime, str(image_dir), "--", "sleep", "29"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pod = wait_running(pcocc_bin)
    run.kill()  # the supervisor dies without recording anything
    run.wait()
    [listed] = pods(pcocc_bin)
    assert listed["state"] == "exited"
    app_pid = pod["apps"][0]["pid"]
    assert Path(f"/proc/{app_pid}").exists(), "the orphan runtime process should still run"
    pcocc(pcocc_bin, "pod", "gc", "--grace-period", "0s", check=0)
    out = pcocc(pcocc_bin, "pod", "gc", "--grace-period", "0s", check=0).stdout
    assert f'Garbage collecting pod "{pod["uuid"]}"' in out
    deadline = time.monotonic() + 10
    while Path(f"/proc/{app_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # killed; reaped by init
    stat = Path(f"/proc/{app_pid}/stat")
    assert not stat.exists() or stat.read_text().split(") ")[1][0] == "Z"
    if runtime != "unshare":
        cid = pod["apps"][0]["container_id"]
        state_root = Path(os.environ["XDG_RUNTIME_DIR"]) / "pcocc" / runtime
        assert not (state_root / cid).exists(), "gc should delete the orphan container"


# -- list and gc ------------------------------------------------------------------------
def test_list_status_and_gc_with_grace_periods(env, pcocc_bin, image_dir):
    run_image(pcocc_bin, "crun", image_dir, "true", check=0)
    run_image(pcocc_bin, "crun", image_dir, "false", check=1)
    first, second = pods(pcocc_bin)
    table = pcocc(pcocc_bin, "pod", "list", check=0).stdout.splitlines()
    assert table[0].split()[:4] == ["UUID", "APP", "IMAGE", "STATE"]
    assert any(line.startswith(first["uuid"][:8]) and "exited" in line for line in table)
    bare = pcocc(pcocc_bin, "pod", "list", "--no-legend", "--full", check=0).stdout
    assert bare.split()[0] == first["uuid"]
    status = pcocc(pcocc_bin, "pod", "status", second["uuid"][:8], check=0).stdout
    assert "exited=true" in status and "img=1" in status and "pid=-1" in status
    assert pcocc(pcocc_bin, "pod", "gc", "--grace-period", "1h", check=0).stdout == ""
    out = pcocc(pcocc_bin, "pod", "gc", "--grace-period", "0s", check=0).stdout
    assert out.count("Moving pod") == 2
    assert {p["state"] for p in pods(pcocc_bin)} == {"garbage"}
    out = pcocc(pcocc_bin, "pod", "gc", "--grace-period", "0s", check=0).stdout
    assert out.count("Garbage collecting pod") == 2
    assert pods(pcocc_bin) == []


def test_rm(env, pcocc_bin, image_dir):
    run_image(pcocc_bin, "crun", image_dir, "true", check=0)
    [pod] = pods(pcocc_bin)
    pcocc(pcocc_bin, "pod", "rm", pod["uuid"][:8], check=0)
    assert pods(pcocc_bin) == []
    res = pcocc(pcocc_bin, "pod", "rm", pod["uuid"][:8])
    assert res.returncode == 1 and "no pod with UUID" in res.stderr


# -- private network --------------------------------------------------------------------
def test_private_net_has_only_loopback(env, pcocc_bin, image_dir, runtime):
    res = pcocc(
        pcocc_bin,
        "run",
        "--runtime",
        runtime,
        "--private-net=loopback",
        image_dir,
        "--",
        "sh",
        "-c",
        "tail -n +3 /proc/net/dev | cut -d: -f1; ip -o link",
        check=0,
    )
    lines = res.stdout.split("\n")
    ifaces = [ln.strip() for ln in lines if ln.strip() and ":" not in ln]
    assert ifaces == ["lo"]
    assert "state UNKNOWN" in res.stdout or "LOOPBACK,UP" in res.stdout  # lo is up
    host_ifaces = [
        ln.split(":")[0].strip() for ln in Path("/proc/net/dev").read_text().splitlines()[2:]
    ]
    shared = run_image(
        pcocc_bin, runtime, image_dir, "sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1",
        check=0,
    )
    assert sorted(shared.stdout.split()) == sorted(host_ifaces)


# -- bad input --------------------------------------------------------------------------
@pytest.mark.slow
def test_bad_inputs_give_clear_errors(env, pcocc_bin, image_dir, tmp_path):
    cases = [
        (["run", tmp_path / "no-such-image"], 1, "image '"),
        (["run", "--volume", "broken", image_dir], 2, "--volume 'broken'"),
        (
            [
                "run",
                "--volume",
                f"v,kind=host,source={tmp_path}/gone",
                "--mount",
                "volume=v,target=/v",
                image_dir,
            ],
            2,
            f"source '{tmp_path}/gone' does not exist",
        ),
        (["run", "--set-env", "NOEQUALS", image_dir], 2, "'NOEQUALS' is not NAME=VALUE"),
        (["run", "--runtime", "nosuch", image_dir], 2, "unknown container runtime 'nosuch'"),
        (["run", "--insecure-options", "image", image_dir], 2, "unknown value 'image'"),
        (["pod", "status", "ffffffff-none"], 1, "no pod with UUID"),
        (["pod", "gc", "--grace-period", "soon"], 2, "invalid duration 'soon'"),
    ]
    for argv, status, message in cases:
        res = pcocc(pcocc_bin, *argv)
        assert res.returncode == status, (argv, res.stderr)
        assert message in res.stderr, (argv, res.stderr)
        assert "Traceback" not in res.stderr
        assert res.stderr.startswith("pcocc: error:"), res.stderr
    assert pods(pcocc_bin) == [], "failed runs must not leave pods behind"


def test_missing_runtime_binary(env, pcocc_bin, image_dir, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("sh", "mount", "unshare"):
        (bindir / tool).symlink_to(shutil.which(tool))
    res = run_image(
        pcocc_bin, "crun", image_dir, "true", env={**os.environ, "PATH": str(bindir)},
    )
    assert res.returncode == 1
    assert (
        "'crun' is not installed" in res.stderr and "hint: install the Debian package" in res.stderr
    )


# -- rootless ---------------------------------------------------------------------------
@pytest.fixture
def throwaway_user():
    """A new local user, with a home, an image and a Python path it can read.

    Everything sits in a fresh 0755 directory of /tmp: pytest's tmp dirs are private to root,
    and our virtualenv's interpreter may sit in /root.
    """
    if os.geteuid() != 0:
        pytest.skip("creating a throwaway user needs root")
    if not shutil.which("useradd") or not os.path.exists("/usr/bin/python3"):
        pytest.skip("useradd or /usr/bin/python3 missing")
    import tempfile

    import click
    import yaml

    name = f"pcocc-t{os.getpid() % 100000}"
    top = Path(tempfile.mkdtemp(prefix="pcocc-rootless-"))
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True)
    try:
        top.chmod(0o755)
        deps = top / "deps"
        for mod in (click, yaml):
            shutil.copytree(Path(mod.__file__).parent, deps / mod.__name__)
        image = testrootfs.build_rootfs(top / "img")
        subprocess.run(["chmod", "-R", "a+rX", str(top)], check=True)
        home = top / "home"
        (home / "run").mkdir(parents=True)
        for d in (home, home / "run"):
            shutil.chown(d, name)
        (home / "run").chmod(0o700)
        readable_pcocc(deps)
        yield name, home, deps, image
    finally:
        subprocess.run(["userdel", "--force", name], check=False)
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.slow
def test_rootless_runs_and_enter(throwaway_user):
    name, home, deps, image_dir = throwaway_user
    base = [
        "runuser",
        "-u",
        name,
        "--",
        "env",
        "-i",
        "PATH=/usr/bin:/bin",
        f"HOME={home}",
        f"XDG_RUNTIME_DIR={home}/run",
        f"PYTHONPATH={deps}:{deps / 'pcocc-src'}",
        "PCOCC_SYSTEM_CONF_DIR=/nonexistent",
        "/usr/bin/python3",
        "-S",
        "-m",
        "pcocc.cli.main",
    ]
    uid = subprocess.run(
        ["id", "-u", name], capture_output=True, text=True, check=True
    ).stdout.strip()
    expected = {"crun": uid, "unshare": uid, "runc": "0"}  # runc needs root mapped
    for runtime, want in expected.items():
        res = subprocess.run(
            [
                *base,
                "run",
                "--runtime",
                runtime,
                str(image_dir),
                "--",
                "sh",
                "-c",
                "id -u; hostname",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=home,
            check=False,
        )
        assert res.returncode == 0, (runtime, res.stderr)
        assert res.stdout.split()[0] == want, (runtime, res.stdout)
    run = subprocess.Popen(
        [*base, "run", "--runtime", "crun", str(image_dir), "--", "sleep", "30"],
        cwd=home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            listed = json.loads(
                subprocess.run(
                    [*base, "pod", "list", "--json"],
                    capture_output=True,
                    text=True,
                    cwd=home,
                    check=True,
                ).stdout
            )
            running = [p for p in listed if p["state"] == "running"]
            if running:
                break
            time.sleep(0.2)
        else:
            pytest.fail("rootless pod never ran")
        res = subprocess.run(
            [
                *base,
                "pod",
                "enter",
                running[0]["uuid"][:8],
                "sh",
                "-c",
                "id -u; cat /proc/1/cmdline",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=home,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        assert res.stdout.split("\n")[0] == uid and "sleep" in res.stdout
    finally:
        run.terminate()
        run.wait(timeout=20)


# -- one task of a multi-node run -------------------------------------------------------
def test_ctr_task_runs_a_saved_request(env, pcocc_bin, image_dir):
    """What each srun task runs: ``pcocc internal ctr-task FILE`` (called here directly)."""
    from pcocc.ctr.launch import RunOptions
    from pcocc.ctr.multinode import write_request
    from pcocc.ctr.pod import RunRequest

    request = write_request(RunRequest(
        [(str(image_dir), ["sh", "-c", "echo task-$TASK_VAR; exit 6"])],
        RunOptions(runtime="crun", set_env=["TASK_VAR=ok"]),
    ))
    code = (
        "import sys; from pcocc.cli.internal_ctr import ctr_task; "
        "from pcocc.cli.context import Session; "
        "ctr_task.main([sys.argv[1]], obj=Session(sys.argv[2], sys.argv[3]))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(request), str(env["system"]), str(env["user"])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 6, res.stderr
    assert res.stdout.strip() == "task-ok"
    [pod] = pods(pcocc_bin)
    assert pod["apps"][0]["exit_status"] == 6


@pytest.mark.parametrize("oci_runtime", ["crun", "runc"])
def test_apps_of_a_pod_share_namespaces(env, pcocc_bin, image_dir, oci_runtime):
    show = "for n in net uts ipc; do readlink /proc/self/ns/$n; done"
    res = pcocc(
        pcocc_bin,
        "run",
        "--runtime",
        oci_runtime,
        "--private-net",
        image_dir,
        "--",
        "sh",
        "-c",
        f"{show}; sleep 2",
        "---",
        image_dir,
        "--",
        "sh",
        "-c",
        f"sleep 0.5; {show}",
        check=0,
    )
    lines = res.stdout.split()
    assert len(lines) == 6
    assert sorted(lines[:3]) == sorted(lines[3:]), "both apps should share net, uts, ipc"
    host_net = os.readlink("/proc/self/ns/net")
    assert host_net not in lines
