"""What root's node setup knows of a job, asked of Slurm (never of the job's user): its
user, how many tasks (VMs) it has, and its nodes with their addresses.

``pcocc internal setup`` runs from the job's prolog, where Slurm gives the job id and user
(the plugin passes them) and the node's name (``SLURMD_NODENAME``); the rest comes from
``scontrol``, which reads slurmctld's record of the job.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from pcocc import proc
from pcocc.batch.slurm import hostnames_argv, parse_job_info, scontrol_show_job_argv
from pcocc.errors import Corrupt

NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class SlurmJob:
    job: int
    uid: int
    ntasks: int
    nodes: tuple[str, ...]


def parse_job(text: str, job: int) -> SlurmJob:
    """``scontrol --oneliner show job`` of ``job``, checked.

    :raise Corrupt: a field is missing or not what Slurm writes
    """
    fields = parse_job_info(text)

    def bad(what: str) -> Corrupt:
        return Corrupt(f"scontrol show job {job}: {what}: {text.strip()[:200]!r}")

    if fields.get("JobId") != str(job):
        raise bad("not this job")
    uid = re.fullmatch(r"[^()\s]*\(([0-9]{1,10})\)", fields.get("UserId", ""))
    tasks = fields.get("NumTasks", "")
    if not uid or not tasks.isdigit() or int(tasks) < 1:
        raise bad("no UserId or NumTasks")
    nodelist = fields.get("NodeList", "")
    if not re.fullmatch(r"[A-Za-z0-9_.,\[\]-]+", nodelist):
        raise bad("no NodeList")
    return SlurmJob(job, int(uid.group(1)), int(tasks), (nodelist,))


def parse_node_addr(text: str, node: str) -> str:
    """The NodeAddr of ``scontrol --oneliner show node NODE``."""
    addr = parse_job_info(text).get("NodeAddr", "")
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,253}", addr):
        raise Corrupt(f"scontrol show node {node}: no NodeAddr in {text.strip()[:200]!r}")
    return addr


def query_job(job: int, env: Mapping[str, str]) -> SlurmJob:
    """The job as slurmctld records it, with its node list expanded."""
    res = proc.run(scontrol_show_job_argv(str(job)), env=dict(env), timeout_s=30,
                   what=f"read job {job} from Slurm")
    info = parse_job(res.stdout, job)
    out = proc.run(hostnames_argv(info.nodes[0]), env=dict(env), timeout_s=30,
                   what="expand the job's node list").stdout.split()
    if not out or not all(NODE_NAME.match(n) for n in out):
        raise Corrupt(f"scontrol show hostnames {info.nodes[0]}: unexpected {out[:5]!r}")
    return SlurmJob(job, info.uid, info.ntasks, tuple(out))


def node_address(node: str, env: Mapping[str, str]) -> str:
    """The IPv4 address of a node of the cluster (its NodeAddr, resolved)."""
    res = proc.run(["scontrol", "--oneliner", "show", "node", node], env=dict(env),
                   timeout_s=30, what=f"read node {node} from Slurm")
    addr = parse_node_addr(res.stdout, node)
    try:
        return socket.getaddrinfo(addr, None, socket.AF_INET)[0][4][0]
    except OSError as err:
        raise Corrupt(f"node {node}: cannot resolve its address {addr!r} ({err})") from err


def this_node(env: Mapping[str, str]) -> str:
    """This node's Slurm name: ``SLURMD_NODENAME`` (the prolog's), else the short host name."""
    name = env.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]
    if not NODE_NAME.match(name):
        raise Corrupt(f"node name {name!r} is not a Slurm node name")
    return name
