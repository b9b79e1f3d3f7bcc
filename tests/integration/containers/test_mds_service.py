"""The pods' metadata service with crun: each pod reaches only its own record through the
socket bound in its container, identity tokens, restart after kill -9, --register-mds=false.

The test image has no HTTP client for unix sockets, so the test connects to the socket as
the container sees it: ``/proc/PID/root/dev/pcocc/mds/api.sock`` of the app's process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from pcocc.daemon import descendants
from tests.integration.containers.ctrlib import pcocc, pods

pytestmark = pytest.mark.slow


@pytest.fixture
def crun():
    if not shutil.which("crun"):
        pytest.skip("crun is not installed")
    return "crun"


def get(sock_path: str, target: str) -> tuple[int, str]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(sock_path)
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: mds\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def start_pod(pcocc_bin, runtime, image_dir, *opts) -> subprocess.Popen:
    return subprocess.Popen(
        [pcocc_bin, "run", "--runtime", runtime, *opts, str(image_dir), "--", "sleep", "60"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def container_socket(pcocc_bin, popen: subprocess.Popen, timeout_s: float = 30) -> tuple[str, str]:
    """(pod UUID, path of its socket as the app sees it) once the pod of ``popen`` runs."""
    deadline = time.monotonic() + timeout_s
    seen: list = []
    while time.monotonic() < deadline:
        assert popen.poll() is None, popen.stderr.read()
        seen = pods(pcocc_bin)
        for pod in seen:
            pid = pod["apps"][0]["pid"]
            if pod["state"] != "running" or not pid or pod["pid"] != popen.pid:
                continue
            for p in sorted(descendants([pid])):
                path = f"/proc/{p}/root/dev/pcocc/mds/api.sock"
                if os.path.exists(path):
                    return pod["uuid"], path
        time.sleep(0.2)
    pytest.fail(f"the pod of pid {popen.pid} did not start with its metadata socket: {seen}")


def stop(*popens: subprocess.Popen) -> None:
    for p in popens:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in popens:
        p.wait(timeout=30)


def service_pid(runtime_dir: Path) -> int | None:
    try:
        text = (runtime_dir / "pcocc" / "mds" / "lock").read_text().strip()
    except FileNotFoundError:
        return None
    pid = int(text) if text else None
    return pid if pid and os.path.exists(f"/proc/{pid}") else None


def test_two_pods_each_read_only_their_own_record(env, pcocc_bin, image_dir, crun, runtime_dir):
    a = start_pod(pcocc_bin, crun, image_dir, "--annotation", "team=a")
    b = start_pod(pcocc_bin, crun, image_dir, "--annotation", "team=b")
    try:
        uuid_a, sock_a = container_socket(pcocc_bin, a)
        uuid_b, sock_b = container_socket(pcocc_bin, b)
        for uuid, other, sock, team in ((uuid_a, uuid_b, sock_a, "a"), (uuid_b, uuid_a, sock_b, "b")):
            assert get(sock, "/pcocc/v1/pod/uuid") == (200, uuid)
            assert get(sock, "/pcocc/v1/app/name") == (200, "img")
            assert get(sock, "/pcocc/v1/pod/annotations/team") == (200, team)
            assert get(sock, "/pcocc/v1/app/image/id")[1].startswith("sha256:")
            status, body = get(sock, f"/pcocc/v1/pods/{uuid}")
            assert status == 200 and json.loads(body)["uuid"] == uuid and "key" not in body
            status, body = get(sock, f"/pcocc/v1/pods/{other}")
            assert status == 403 and other not in body

        # identity: a real token passes, a modified one is refused
        status, token = get(sock_a, "/pcocc/v1/pod/identity")
        assert status == 200
        res = pcocc(pcocc_bin, "pod", "verify-identity", token, check=0)
        assert f"uuid={uuid_a}" in res.stdout and "app=img" in res.stdout
        head, sig = token.split(".")
        claims = json.loads(__import__("base64").urlsafe_b64decode(head + "==="))
        forged_head = __import__("base64").urlsafe_b64encode(
            json.dumps({**claims, "uuid": uuid_b}, sort_keys=True, separators=(",", ":"))
            .encode()).rstrip(b"=").decode()
        res = pcocc(pcocc_bin, "pod", "verify-identity", f"{forged_head}.{sig}", check=1)
        assert "bad signature" in res.stderr and "Traceback" not in res.stderr
        flipped = sig[:5] + ("A" if sig[5] != "A" else "B") + sig[6:]
        pcocc(pcocc_bin, "pod", "verify-identity", f"{head}.{flipped}", check=1)
    finally:
        stop(a, b)
    # the pods are gone: their keys with them, then the service itself
    pcocc(pcocc_bin, "pod", "verify-identity", token, check=1)
    deadline = time.monotonic() + 15
    while service_pid(runtime_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert service_pid(runtime_dir) is None, "the service outlived the last pod"
    assert not list((runtime_dir / "pcocc" / "mds" / "records").iterdir())


def test_service_killed_is_restarted_and_pods_reach_it(env, pcocc_bin, image_dir, crun,
                                                       runtime_dir):
    a = start_pod(pcocc_bin, crun, image_dir)
    try:
        uuid_a, sock_a = container_socket(pcocc_bin, a)
        pid = service_pid(runtime_dir)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(OSError):
            get(sock_a, "/pcocc/v1/pod/uuid")
        # the next run starts the service again (in the background: the run does not wait
        # for it); the running pod is served again
        pcocc(pcocc_bin, "run", "--runtime", crun, image_dir, "--", "true", check=0)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                answer = get(sock_a, "/pcocc/v1/pod/uuid")
                break
            except OSError:
                time.sleep(0.1)
        assert service_pid(runtime_dir) not in (None, pid)
        assert answer == (200, uuid_a)
        status, token = get(sock_a, "/pcocc/v1/pod/identity")
        assert status == 200
        pcocc(pcocc_bin, "pod", "verify-identity", token, check=0)
    finally:
        stop(a)


def test_register_mds_false_gives_no_socket(env, pcocc_bin, image_dir, crun, runtime_dir):
    probe = "test -e /dev/pcocc/mds/api.sock && echo present || echo absent"
    res = pcocc(pcocc_bin, "run", "--runtime", crun, "--register-mds=false", image_dir,
                "--", "sh", "-c", probe, check=0)
    assert res.stdout.strip() == "absent"
    res = pcocc(pcocc_bin, "run", "--runtime", crun, image_dir, "--", "sh", "-c", probe, check=0)
    assert res.stdout.strip() == "present"


def test_a_pod_replayed_from_its_plan_is_served_and_forgotten(env, pcocc_bin, busybox_image,
                                                             crun, runtime_dir, tmp_path):
    """The second identical ``pcocc run`` of a repository image is replayed from the plan
    of the first (pcocc.ctr.runplan): its pod is registered and served as any other, and
    forgotten when it ends."""
    pcocc(pcocc_bin, "image", "import", busybox_image.ref, "busy", check=0)
    argv = [pcocc_bin, "run", "--runtime", crun, "--annotation", "team=p", "busy", "--",
            "sleep", "4"]
    # os.environ for both runs: a plan is for one environment, and pytest's C-level
    # environment (inherited by default) may differ from os.environ
    subprocess.run(argv, check=True, capture_output=True, timeout=60,
                   env=dict(os.environ))  # saves the plan
    marks = tmp_path / "marks"
    p = subprocess.Popen(argv, env={**os.environ, "PCOCC_TIMING": str(marks), "PCOCC_DEBUG": "1"},
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        uuid, sock = container_socket(pcocc_bin, p)
        assert get(sock, "/pcocc/v1/pod/uuid") == (200, uuid)
        assert get(sock, "/pcocc/v1/app/name") == (200, "busy")
        assert get(sock, "/pcocc/v1/pod/annotations/team") == (200, "p")
        status, token = get(sock, "/pcocc/v1/pod/identity")
        assert status == 200
        assert f"uuid={uuid}" in pcocc(pcocc_bin, "pod", "verify-identity", token, check=0).stdout
    finally:
        p.wait(timeout=60)
    err = p.stderr.read()
    assert p.returncode == 0, err
    assert "run: plan checked" in marks.read_text(), err
    assert not list((runtime_dir / "pcocc" / "mds" / "records").iterdir())
    assert not (runtime_dir / "pcocc" / "mds" / "sockets" / uuid).exists()
    pcocc(pcocc_bin, "pod", "verify-identity", token, check=1)
