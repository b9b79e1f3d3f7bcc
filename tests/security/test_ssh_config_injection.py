"""Hostile records in etcd: what a writer of the victim's cluster keys could make the
victim's own pcocc commands do.

Until etcd refuses such writers (the per-user etcd roles), nothing stops one: the test
writes the hostile records as root, as an attacker who could write there would. What is
tested here is the reading side: every record goes through its strict parser, so a VM
state whose ``address`` carries a newline and a ``ProxyCommand`` never reaches the
ssh_config that ``pcocc ssh`` hands to ssh, and a ``console_socket`` outside the VM's run
directory is never connected to.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
import uuid

import pytest

from pcocc.kv import keys
from pcocc.cluster.definition import build_definition
from pcocc.cluster.record import ClusterRecord
from pcocc.cluster.state import ClusterState
from pcocc.kv.client import KvClient
from tests.nonroot import SYSTEM_PYTHON

pytestmark = pytest.mark.slow


def _host_key() -> str:
    blob = b"\0\0\0\x0bssh-ed25519\0\0\0\x20" + bytes(range(32))
    return "ssh-ed25519 " + base64.b64encode(blob).decode()


def _plant_cluster(etcd_server, user: str, vm_state: dict) -> str:
    """Write a cluster record and the state of its vm0 under ``user``'s keys."""
    batchid = str(900000 + uuid.uuid4().int % 99999)
    definition = build_definition("tpl:1", {"tpl": {"kernel": "/k"}}, owner=user)
    record = ClusterRecord(batchid, definition, ClusterState.RUNNING, "n1", 4242, batch="slurm")
    state = {"rank": 0, "host": "n1", "status": "running", "node_pid": 4243, **vm_state}
    with KvClient(etcd_server.endpoints) as kv:
        kv.put(keys.cluster_definition(user, batchid), record.to_json())
        kv.put(keys.vm_state(user, batchid, 0), json.dumps(state))
    return batchid


def _remove_cluster(etcd_server, user: str, batchid: str) -> None:
    with KvClient(etcd_server.endpoints) as kv:
        kv.delete_prefix(keys.cluster_prefix(user, batchid))


def test_proxycommand_in_a_vm_address_runs_nothing(etcd_server, victim):
    marker = victim.home / "proxycommand-ran"
    hostile = {
        "address": f"127.0.0.1\n    ProxyCommand /bin/touch {marker}",
        "ssh_port": 2222,
        "host_key": _host_key(),
    }
    batchid = _plant_cluster(etcd_server, victim.name, hostile)
    endpoints = ",".join(etcd_server.endpoints)
    try:
        res = victim.pcocc("ssh", "-j", batchid, "vm0", "true",
                           env={"PCOCC_ETCD_ENDPOINTS": endpoints}, timeout=60)
        assert not marker.exists(), "the ProxyCommand of the record ran as the victim"
        assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
        assert "address" in res.stderr and keys.vm_state(victim.name, batchid, 0) in res.stderr
        assert "Traceback" not in res.stderr
        config = victim.home / ".pcocc" / "run" / batchid / "ssh_config"
        assert not config.exists() or "ProxyCommand" not in config.read_text()

        # the victim's other commands still work: the cluster is listed
        ps = victim.pcocc("ps", env={"PCOCC_ETCD_ENDPOINTS": endpoints})
        assert ps.returncode == 0 and batchid in ps.stdout, ps.stderr
    finally:
        _remove_cluster(etcd_server, victim.name, batchid)


def test_console_never_connects_to_a_socket_the_record_names_elsewhere(
    etcd_server, victim, attacker, two_users
):
    trap = two_users.shared / f"trap-{uuid.uuid4().hex[:8]}"
    trap.mkdir(mode=0o755)
    attacker.chown(trap)
    sock_path, got = trap / "console.sock", trap / "received"
    listener = attacker.popen(
        [SYSTEM_PYTHON, "-c", (
            "import os, socket\n"
            f"s = socket.socket(socket.AF_UNIX); s.bind({str(sock_path)!r})\n"
            f"os.chmod({str(sock_path)!r}, 0o777); s.listen(1); s.settimeout(60)\n"
            f"c, _ = s.accept(); c.settimeout(5)\n"
            "data = b''\n"
            "try:\n"
            "    while len(data) < 100:\n"
            "        chunk = c.recv(100)\n"
            "        if not chunk: break\n"
            "        data += chunk\n"
            "except OSError: pass\n"
            f"open({str(got)!r}, 'wb').write(data)\n"
        )],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not sock_path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    hostile = {"host": socket.gethostname(), "console_socket": str(sock_path)}
    batchid = _plant_cluster(etcd_server, victim.name, hostile)
    endpoints = ",".join(etcd_server.endpoints)
    try:
        res = victim.pcocc("console", "-j", batchid, "vm0", input="victim-password\n",
                           env={"PCOCC_ETCD_ENDPOINTS": endpoints}, timeout=60)
        time.sleep(0.5)
        assert not (got.exists() and b"victim-password" in got.read_bytes()), \
            "the victim typed into the attacker's socket"
        assert not got.exists(), "the victim connected to the attacker's socket"
        assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
        assert "run directory" in res.stderr and "Traceback" not in res.stderr
    finally:
        listener.kill()
        listener.wait()
        _remove_cluster(etcd_server, victim.name, batchid)
        shutil.rmtree(trap, ignore_errors=True)
