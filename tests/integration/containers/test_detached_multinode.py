"""``pcocc run -N 4 --detach`` on the dev Slurm cluster (n1..n4 on this host): the pod runs
on every node after the command returned, ``pod list``/``logs`` show it, each node's app
reads its own metadata, and ``pod stop`` (graceful and ``--force``) leaves no process of it
on any node. One allocation (``salloc --no-shell``) serves every check."""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid as uuidlib

import pytest

from pcocc.daemon import descendants
from tests.integration.containers.ctrlib import pcocc, pods
from tests.integration.containers.test_detached_pods import pod_processes
from tests.integration.containers.test_mds_service import get

pytestmark = pytest.mark.slow

NODES = ["n1", "n2", "n3", "n4"]


@pytest.fixture
def allocation(slurm, monkeypatch):
    """A 4-node allocation that outlives each command; SLURM_JOB_ID set as inside it."""
    res = subprocess.run(["salloc", "--no-shell", "-N", "4", "-n", "4", "-J", "pcocc-detach"],
                         capture_output=True, text=True, timeout=120, check=False)
    found = re.search(r"Granted job allocation (\d+)", res.stderr)
    assert found, res.stderr
    job_id = found.group(1)
    monkeypatch.setenv("SLURM_JOB_ID", job_id)
    try:
        yield job_id
    finally:
        subprocess.run(["scancel", job_id], check=False, timeout=60)


def wait_gone(*markers: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    left: list[int] = []
    while time.monotonic() < deadline:
        left = [p for m in markers for p in pod_processes(m)]
        if not left:
            return
        time.sleep(0.2)
    pytest.fail(f"processes of the pod left after pod stop: {left}")


def start(pcocc_bin, script: str, marker: str) -> tuple[str, dict, list[dict]]:
    """Start the detached pod on 4 nodes; (its UUID, its record, its members' records)."""
    res = pcocc(pcocc_bin, "run", "-N", "4", "--detach", "--runtime", "crun", "busy", "--",
                "sh", "-c", script, marker, check=0, timeout=300)
    uuid = res.stdout.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", uuid), res.stdout
    recs = {r["uuid"]: r for r in pods(pcocc_bin)}
    group = recs[uuid]
    return uuid, group, [recs[m] for m in group["members"]]


def app_socket(member: dict) -> str:
    """The member's metadata socket as its app sees it."""
    pid = member["apps"][0]["pid"]
    for p in sorted(descendants([pid])):
        path = f"/proc/{p}/root/dev/pcocc/mds/api.sock"
        if os.path.exists(path):
            return path
    pytest.fail(f"no metadata socket in the app of pod {member['uuid']}")


TICKS = "trap 'echo bye; exit 0' TERM; i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.2; done"
DEAF = "trap '' TERM; while :; do sleep 0.2; done"


def test_detached_pod_on_four_nodes_then_stop(allocation, pcocc_bin):
    marker = f"mark-{uuidlib.uuid4().hex[:12]}"
    uuid, group, members = start(pcocc_bin, TICKS, marker)
    # the command returned: the pod runs on every node of the request
    assert group["state"] == "running" and group["job_id"] == allocation
    assert sorted(group["nodes"]) == NODES
    assert [m["state"] for m in members] == ["running"] * 4
    assert sorted(m["task_node"] for m in members) == NODES
    assert {m["group"] for m in members} == {uuid}
    assert len(pod_processes(marker)) >= 4
    table = pcocc(pcocc_bin, "pod", "list", "--full", check=0).stdout
    [row] = [line for line in table.splitlines() if uuid in line]
    assert "running" in row and all(n in row for n in NODES)
    assert not any(m["uuid"] in table for m in members)  # shown as one pod

    # the app of another node than the first reads its own metadata, not its neighbour's
    by_node = {m["task_node"]: m for m in members}
    second, other = by_node["n2"], by_node["n3"]
    sock = app_socket(second)
    assert get(sock, "/pcocc/v1/pod/uuid") == (200, second["uuid"])
    assert get(sock, f"/pcocc/v1/pods/{other['uuid']}")[0] == 403

    time.sleep(0.5)
    logs = pcocc(pcocc_bin, "pod", "logs", uuid[:8], check=0).stdout
    for node in NODES:
        assert f"{node}: tick 0" in logs

    follow = subprocess.Popen([pcocc_bin, "pod", "logs", "--follow", uuid],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    res = pcocc(pcocc_bin, "pod", "stop", uuid[:8], check=0, timeout=120)
    assert uuid in res.stdout
    out, err = follow.communicate(timeout=60)  # it returns once the pod has ended
    assert follow.returncode == 0, err
    for node in NODES:
        assert f"==> {node} <==" in out
    logs = pcocc(pcocc_bin, "pod", "logs", uuid, check=0).stdout
    ends = [(r["task_node"], r["state"], r["apps"][0]["exit_status"]) for r in pods(pcocc_bin)
            if r["group"] == uuid]
    assert out.count("bye") == 4, (out, logs, ends)  # each app's SIGTERM trap, on every node
    wait_gone(marker, *(m["uuid"] for m in members))
    recs = {r["uuid"]: r for r in pods(pcocc_bin)}
    assert recs[uuid]["state"] == "exited"
    for m in members:  # every app ran its SIGTERM trap
        assert recs[m["uuid"]]["state"] == "exited"
        assert recs[m["uuid"]]["apps"][0]["exit_status"] == 0

    # --force: apps that ignore SIGTERM are killed at once on every node
    marker = f"deaf-{uuidlib.uuid4().hex[:12]}"
    uuid, _, members = start(pcocc_bin, DEAF, marker)
    t0 = time.monotonic()
    pcocc(pcocc_bin, "pod", "stop", "--force", uuid, check=0, timeout=120)
    assert time.monotonic() - t0 < 10  # no grace period (default 10 s) was given
    wait_gone(marker, *(m["uuid"] for m in members))
    recs = {r["uuid"]: r for r in pods(pcocc_bin)}
    assert recs[uuid]["state"] == "exited"
    assert {recs[m["uuid"]]["apps"][0]["exit_status"] for m in members} == {128 + 9}
    res = pcocc(pcocc_bin, "pod", "stop", uuid)
    assert res.returncode != 0 and "not running" in res.stderr
