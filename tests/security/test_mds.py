"""Another user can neither reach a user's metadata service nor read the keys that sign
its pods' identity tokens.

The victim runs a pod (its service starts on demand, in ``/tmp/pcocc-<uid>/mds``). The
attacker connects to every socket of that service (the pod's, the control socket, and the
pod's socket through ``/proc/PID/root`` of the container), reads the records that hold the
keys, and lists the directory: every attempt fails, and the victim's pod is still served.
"""

from __future__ import annotations

import glob
import json
import signal
import socket
import time
from pathlib import Path

import pytest

from pcocc.daemon import descendants
from tests.nonroot import SYSTEM_PYTHON
from tests.security.test_private_dirs import fresh_victim, image_ref, victim_tmp  # noqa: F401

pytestmark = pytest.mark.slow

ATTACK = r"""
import json, os, socket, sys
out = {"reached": [], "read": [], "listed": []}
for path in json.loads(sys.argv[1]):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
        s.sendall(b"GET /pcocc/v1/pod/identity HTTP/1.1\r\n\r\n")
        out["reached"].append([path, s.recv(4096).decode(errors="replace")])
    except OSError:
        pass
for path in json.loads(sys.argv[2]):
    try:
        out["read"].append([path, open(path).read()])
    except OSError:
        pass
    try:
        out["listed"].append([path, os.listdir(os.path.dirname(path))])
    except OSError:
        pass
print(json.dumps(out))
"""


def _get(path: str, target: str) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(f"GET {target} HTTP/1.1\r\n\r\n".encode())
        return s.recv(65536)


def test_another_user_cannot_reach_the_service_or_its_keys(fresh_victim, attacker,  # noqa: F811
                                                          victim_tmp, image_ref):  # noqa: F811
    res = fresh_victim.pcocc("image", "import", image_ref, "user:img")
    assert res.returncode == 0, res.stderr
    pod = fresh_victim.popen(
        [SYSTEM_PYTHON, "-m", "pcocc.cli.main", "run", "img", "--", "sleep", "60"]
    )
    try:
        mds = victim_tmp / "mds"
        deadline = time.monotonic() + 60
        while not glob.glob(f"{mds}/sockets/*/*/api.sock") and time.monotonic() < deadline:
            assert pod.poll() is None, "the victim's pod ended"
            time.sleep(0.2)
        [api] = glob.glob(f"{mds}/sockets/*/*/api.sock")
        records = glob.glob(f"{mds}/records/*.json")
        assert records
        uuid = Path(records[0]).stem
        # the socket as the container sees it: through /proc/PID/root of the app
        in_ctr: list[str] = []
        while not any(Path(p).exists() for p in in_ctr) and time.monotonic() < deadline:
            in_ctr = [f"/proc/{p}/root/dev/pcocc/mds/api.sock" for p in descendants([pod.pid])]
            time.sleep(0.2)
        assert any(Path(p).exists() for p in in_ctr), "the app has no metadata socket"

        res = attacker.run(
            [SYSTEM_PYTHON, "-c", ATTACK, json.dumps([api, str(mds / "control.sock"), *in_ctr]),
             json.dumps([*records, str(mds / "lock")])],
            timeout=60,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert out == {"reached": [], "read": [], "listed": []}, out

        # the victim's pod is still served, and signs with a key the attacker never saw
        answer = _get(api, "/pcocc/v1/pod/uuid")
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(uuid.encode())
        token = _get(api, "/pcocc/v1/pod/identity").split(b"\r\n\r\n", 1)[1].decode()
        res = fresh_victim.pcocc("pod", "verify-identity", token)
        assert res.returncode == 0 and f"uuid={uuid}" in res.stdout, res.stderr
        # the attacker's pcocc does not vouch for the victim's token either
        res = attacker.pcocc("pod", "verify-identity", token)
        assert res.returncode == 1 and "not registered" in res.stderr, res.stderr
    finally:
        pod.send_signal(signal.SIGTERM)
        pod.wait(timeout=30)
