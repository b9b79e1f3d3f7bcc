"""Forwarded guest ports and the job's sockets, attacked by another user of the same node.

The victim runs a real local-mode cluster of the test VM whose user network forwards guest
port 7777 (a secret service) and declares guest port 7778 public. While it runs, the
attacker tries every TCP port the victim's processes listen on (found with ``ss`` as root,
the way an attacker scans a node), ssh -W to the secret port without the victim's key, and
every unix socket the victim's processes listen on (QMP, console, guest agent...). The
attacker must read nothing of the secret; the victim's ``pcocc nc root@vm0 7777`` must still
work, and the public port must answer anyone (the explicit setting works).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.security.clusterlib import victim_cluster

pytestmark = pytest.mark.slow

SECRET = "s3cret-of-7777"
PUBLIC = "public-of-7778"

#: The victim's -E script: serve the two guest ports, check pcocc nc, wait for the attack.
VICTIM_SCRIPT = f"""
set -e
serve() {{
    pcocc ssh root@vm0 "while true; do nc -l -p $1 -e echo $2; done </dev/null >/dev/null 2>&1 &"
}}
serve 7777 {SECRET}
serve 7778 {PUBLIC}
for i in $(seq 40); do
    pcocc nc root@vm0 7777 </dev/null > nc-before.out 2> nc-before.err || true
    grep -q {SECRET} nc-before.out && break
    sleep 0.5
done
touch attack-now
for i in $(seq 600); do [ -e attack-done ] && break; sleep 0.5; done
pcocc nc root@vm0 7777 </dev/null > nc-after.out 2> nc-after.err
"""

#: The attacker's TCP probe: connect, read what comes within a second, print it as JSON.
TCP_PROBE = """
import json, socket, sys
found = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    host = host.strip("[]")
    host = {"*": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        with socket.create_connection((host, int(port)), timeout=3) as s:
            s.settimeout(1.5)
            data = b""
            try:
                while len(data) < 4096:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
            found[target] = "read:" + data.decode(errors="replace")
    except OSError as err:
        found[target] = "error:" + str(err)
print(json.dumps(found))
"""

#: The attacker's unix socket probe (paths, or @abstract names).
UNIX_PROBE = """
import json, socket, sys
found = {}
for name in sys.argv[1:]:
    address = "\\0" + name[1:] if name.startswith("@") else name
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(address)
        s.settimeout(1.5)
        try:
            data = s.recv(4096)
        except OSError:
            data = b""
        found[name] = "connected:" + data.decode(errors="replace")
    except OSError as err:
        found[name] = "error:" + str(err)
    finally:
        s.close()
print(json.dumps(found))
"""


def _uid_of(pid: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _listeners(kind: str, uid: int) -> list[tuple[str, str]]:
    """(local address, process) of the listening sockets of ``uid``'s processes;
    ``kind`` is ``-t`` (TCP) or ``-x`` (unix)."""
    out = subprocess.run(["ss", "-H", "-l", "-n", "-p", kind], capture_output=True,
                         text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        pids = re.findall(r"pid=(\d+)", line)
        if not any(_uid_of(pid) == uid for pid in pids):
            continue
        fields = line.split()
        local = fields[4] if kind == "-x" else fields[3]
        if kind == "-x" and not local.startswith(("/", "@", "*")):
            # QEMU binds names relative to its run directory, its working directory
            local = os.path.join(os.readlink(f"/proc/{pids[0]}/cwd"), local)
        process = ",".join(re.findall(r'"([^"]+)"', line))
        found.append((local, process))
    return found


def test_forwarded_ports_and_vm_sockets_are_closed_to_another_user(
    victim, attacker, victim_cluster_conf
):
    with victim_cluster(victim, victim_cluster_conf, "-E", VICTIM_SCRIPT, "testvm:1",
                        files=("nc-before.out", "nc-after.out")) as run:
        before = (victim.home / "nc-before.out").read_text()
        assert SECRET in before, (victim.home / "nc-before.err").read_text()

        # every TCP port the victim's processes listen on, tried by the attacker
        tcp = _listeners("-t", victim.uid)
        qemu_ports = [local for local, process in tcp if "qemu" in process]
        assert qemu_ports, tcp
        probe = attacker.run(["/usr/bin/python3", "-c", TCP_PROBE,
                              *(local for local, _ in tcp)])
        assert probe.returncode == 0, probe.stderr
        seen = json.loads(probe.stdout)
        assert not [t for t, what in seen.items() if SECRET in what], seen
        # QEMU listens for ssh (its banner, the key protects it) and the public port only
        qemu_seen = {t: seen[t] for t in qemu_ports}
        ssh = [t for t, what in qemu_seen.items() if what.startswith("read:SSH-")]
        public = [t for t, what in qemu_seen.items() if PUBLIC in what]
        assert len(ssh) == 1 and len(public) == 1, qemu_seen
        assert len(qemu_ports) == 2, qemu_seen

        # the ssh port does not relay to the secret port without the victim's key
        host, port = ssh[0].rsplit(":", 1)
        hop = attacker.run(["ssh", "-p", port, "-o", "BatchMode=yes", "-o",
                            "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                            "-o", "ConnectTimeout=10", "-W", "127.0.0.1:7777", f"root@{host}"],
                           timeout=60)
        assert hop.returncode != 0 and SECRET not in hop.stdout, hop

        # every unix socket the victim's processes listen on: QMP, console, agent...
        unix = [local for local, _ in _listeners("-x", victim.uid) if local != "*"]
        assert any(name.endswith("/qmp.sock") for name in unix), unix
        assert any(name.endswith("/console.sock") for name in unix), unix
        paths = [name for name in unix if not name.startswith("@")]
        assert all(os.path.exists(path) for path in paths), paths  # no false "not found"
        probe = attacker.run(["/usr/bin/python3", "-c", UNIX_PROBE, *unix])
        assert probe.returncode == 0, probe.stderr
        tried = json.loads(probe.stdout)
        reached = {n: what for n, what in tried.items() if not what.startswith("error:")}
        assert not reached, reached
        assert all("Permission denied" in tried[path] for path in paths), tried
    assert run.returncode == 0, run.stderr
    # the owner still reaches the private forward
    assert SECRET in (victim.home / "nc-after.out").read_text(), run.stderr
