"""pcocc run --private-net with the real slirp4netns and the real runtimes (crun, runc, unshare).

Traffic stays on this machine: the pod only connects to TCP servers the test runs on the
host's own addresses (its loopback, through slirp's 10.0.2.2, or its non-loopback address).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.containers.ctrlib import pcocc, pods

pytestmark = pytest.mark.skipif(
    shutil.which("slirp4netns") is None, reason="slirp4netns is not installed"
)


@contextlib.contextmanager
def tcp_server(host: str) -> Iterator[tuple[int, str]]:
    """A server on ``host`` that answers every connection with a fresh token."""
    token = f"pong-{secrets.token_hex(4)}"
    srv = socket.create_server((host, 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.sendall(f"{token}\n".encode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1], token
    finally:
        stop.set()
        thread.join(5)
        srv.close()


def host_address() -> str:
    """An IPv4 address of this machine other than loopback (or skip)."""
    res = subprocess.run(
        ["ip", "-o", "-4", "addr", "show", "scope", "global"], capture_output=True, text=True
    )
    for line in res.stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            return fields[fields.index("inet") + 1].split("/")[0]
    pytest.skip("this machine has no non-loopback IPv4 address")


def connect_cmd(addr: str, port: int) -> str:
    return f"busybox nc -w 5 {addr} {port} </dev/null; echo rc=$?"


# -- the pod's interfaces ---------------------------------------------------------------
def test_pod_sees_lo_and_tap0_only(env, pcocc_bin, image_dir, runtime):
    res = pcocc(
        pcocc_bin,
        "run",
        "--runtime",
        runtime,
        "--private-net",
        image_dir,
        "--",
        "sh",
        "-c",
        "tail -n +3 /proc/net/dev | cut -d: -f1; echo ---; ip -o -4 addr; ip route",
        check=0,
    )
    names, _, rest = res.stdout.partition("---")
    assert sorted(n.strip() for n in names.split()) == ["lo", "tap0"]
    assert "tap0    inet 10.0.2.100/24" in rest
    assert "default via 10.0.2.2 dev tap0" in rest
    host_ifaces = {
        ln.split(":")[0].strip() for ln in Path("/proc/net/dev").read_text().splitlines()[2:]
    }
    assert host_ifaces - {"lo"}, "the host should have interfaces the pod does not see"
    assert not (host_ifaces - {"lo", "tap0"}) & set(names.split())


def test_all_apps_of_a_pod_share_the_slirp_network(env, pcocc_bin, image_dir):
    res = pcocc(
        pcocc_bin,
        "run",
        "--runtime",
        "crun",
        "--private-net",
        image_dir,
        "--",
        "sh",
        "-c",
        "sleep 1",
        "---",
        image_dir,
        "--",
        "sh",
        "-c",
        "ip -o -4 addr show tap0",
        check=0,
    )
    assert "10.0.2.100/24" in res.stdout


# -- reachability -------------------------------------------------------------------------
def test_pod_reaches_the_host_address(env, pcocc_bin, image_dir, runtime):
    addr = host_address()
    with tcp_server(addr) as (port, token):
        res = pcocc(
            pcocc_bin,
            "run",
            "--runtime",
            runtime,
            "--private-net",
            image_dir,
            "--",
            "sh",
            "-c",
            connect_cmd(addr, port),
            check=0,
        )
    assert token in res.stdout and "rc=0" in res.stdout, res.stdout + res.stderr


def test_host_loopback_is_refused_by_default(env, pcocc_bin, image_dir, runtime):
    with tcp_server("127.0.0.1") as (port, token):
        res = pcocc(
            pcocc_bin,
            "run",
            "--runtime",
            runtime,
            "--private-net",
            image_dir,
            "--",
            "sh",
            "-c",
            connect_cmd("10.0.2.2", port),
            check=0,
        )
    assert token not in res.stdout
    assert "rc=0" not in res.stdout, res.stdout + res.stderr


def test_allow_host_loopback_reaches_the_host_loopback(env, pcocc_bin, image_dir, runtime):
    with tcp_server("127.0.0.1") as (port, token):
        res = pcocc(
            pcocc_bin,
            "run",
            "--runtime",
            runtime,
            "--private-net",
            "--allow-host-loopback",
            image_dir,
            "--",
            "sh",
            "-c",
            connect_cmd("10.0.2.2", port),
            check=0,
        )
    assert token in res.stdout and "rc=0" in res.stdout, res.stdout + res.stderr


# -- port forwarding ---------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_port_forwarding_reaches_the_app(env, pcocc_bin, image_dir, runtime):
    port, token = _free_port(), f"tok-{secrets.token_hex(4)}"
    p = subprocess.Popen(
        [
            pcocc_bin, "run", "--runtime", runtime, "--private-net",
            "--port", f"127.0.0.1:{port}:8080", image_dir,
            "--", "sh", "-c", f"echo {token} | busybox nc -l -p 8080",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    got = b""
    try:
        deadline = time.monotonic() + 30
        # slirp4netns accepts at once and closes when the app does not listen yet: retry
        while not got and time.monotonic() < deadline and p.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", port), timeout=5
            ) as conn:
                got = conn.recv(100)
            time.sleep(0.1)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert got.decode().strip() == token, err
    assert p.returncode == 0, err


def test_port_in_use_fails_the_pod(env, pcocc_bin, image_dir):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        res = pcocc(
            pcocc_bin, "run", "--runtime", "crun", "--private-net",
            "--port", f"127.0.0.1:{port}:80", image_dir, "--", "echo", "app-ran",
        )  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert f"cannot forward port 127.0.0.1:{port} -> 80/tcp" in res.stderr
    assert "app-ran" not in res.stdout
    [pod] = pods(pcocc_bin)
    assert pod["state"] == "exited"


# -- loopback-only mode and fallback --------------------------------------------------------
def test_explicit_loopback_mode(env, pcocc_bin, image_dir):
    res = pcocc(
        pcocc_bin,
        "run",
        "--runtime",
        "crun",
        "--private-net=loopback",
        image_dir,
        "--",
        "sh",
        "-c",
        "tail -n +3 /proc/net/dev | cut -d: -f1",
        check=0,
    )
    assert res.stdout.split() == ["lo"]
    assert "slirp4netns" not in res.stderr


def test_falls_back_to_loopback_without_slirp4netns(env, pcocc_bin, image_dir, tmp_path):
    """PATH without slirp4netns: one warning line, and the pod still runs with lo only."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("crun", "unshare", "nsenter", "sh", "mount"):
        (bindir / tool).symlink_to(shutil.which(tool))
    path = f"{bindir}:{Path(pcocc_bin).parent}"
    res = pcocc(
        pcocc_bin,
        "run",
        "--runtime",
        "crun",
        "--private-net",
        image_dir,
        "--",
        "sh",
        "-c",
        "tail -n +3 /proc/net/dev | cut -d: -f1",
        check=0,
        env={**os.environ, "PATH": path},
    )
    assert res.stdout.split() == ["lo"]
    warnings = [ln for ln in res.stderr.splitlines() if "slirp4netns" in ln]
    assert len(warnings) == 1 and "loopback only" in warnings[0], res.stderr
    explicit = pcocc(
        pcocc_bin,
        "run",
        "--runtime",
        "crun",
        "--private-net=slirp",
        image_dir,
        "--",
        "true",
        env={**os.environ, "PATH": path},
    )
    assert explicit.returncode != 0 and "slirp4netns" in explicit.stderr


def test_bad_mode_is_a_usage_error(env, pcocc_bin, image_dir):
    res = pcocc(pcocc_bin, "run", "--private-net=bridge", image_dir, "--", "true")
    assert res.returncode == 2 and "--private-net: unknown mode 'bridge'" in res.stderr


# -- no slirp4netns left behind -------------------------------------------------------------
def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _descendants(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        kids = _children(todo.pop())
        seen += kids
        todo += kids
    return seen


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _start_sleeping_pod(pcocc_bin, image_dir, runtime) -> tuple[subprocess.Popen, int, int]:
    """A pod whose app sleeps; returns (pcocc run, its slirp4netns pid, the app's sleep pid)."""
    p = subprocess.Popen(
        [pcocc_bin, "run", "--runtime", runtime, "--private-net", image_dir, "--", "sleep", "60"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        kids = _descendants(p.pid)
        slirp = [k for k in kids if _comm(k) == "slirp4netns"]
        sleeper = [k for k in kids if _comm(k) == "sleep"]
        if slirp and sleeper:
            return p, slirp[0], sleeper[0]
        if p.poll() is not None:
            pytest.fail(f"pcocc run ended early: {p.stderr.read().decode()}")
        time.sleep(0.05)
    p.kill()
    pytest.fail("the pod never ran its app with slirp4netns")


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_slirp_stops_when_the_app_is_killed(env, pcocc_bin, image_dir, runtime):
    p, slirp, sleeper = _start_sleeping_pod(pcocc_bin, image_dir, runtime)
    try:
        os.kill(sleeper, signal.SIGKILL)
        status = p.wait(timeout=30)
        # util-linux unshare reports a signalled child as a failure of its own (status 1)
        assert status == (1 if runtime == "unshare" else 137), p.stderr.read().decode()
        assert _gone(slirp), "slirp4netns outlived the pod"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    [pod] = pods(pcocc_bin)
    assert pod["state"] == "exited"


def test_slirp_stops_when_the_pod_is_terminated(env, pcocc_bin, image_dir):
    p, slirp, _ = _start_sleeping_pod(pcocc_bin, image_dir, "crun")
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)
    assert _gone(slirp), "slirp4netns outlived the pod"


def test_slirp_stops_when_the_supervisor_dies(env, pcocc_bin, image_dir):
    """SIGKILL leaves no chance to clean up: the closed --exit-fd stops slirp4netns."""
    p, slirp, sleeper = _start_sleeping_pod(pcocc_bin, image_dir, "crun")
    try:
        p.kill()
        p.wait()
        assert _gone(slirp), "slirp4netns outlived its supervisor"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(sleeper, signal.SIGKILL)
