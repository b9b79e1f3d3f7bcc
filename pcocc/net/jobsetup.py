"""Per-job node state that needs root, set up and torn down by the Slurm plugin.

``pcocc internal setup init|cleanup`` (run as root by slurm-plugin/ from the job's prolog and
epilog) calls :func:`init` and :func:`cleanup`. For each ``ethernet`` network of the admin's
networks.yaml, init makes on this node a bridge, a VXLAN to the job's other nodes, one TAP
per VM of the job owned by the job's user, a dnsmasq (DHCP and DNS), and one nftables table
per family for the job (NAT out, reverse NAT in); see :mod:`pcocc.net.ethsetup`.

Everything created for a job is recorded *before* it is created in
``STATE_ROOT/<node>/<jobid>/state.json`` (directories 0700 root; per node, as nodes of a
test cluster may share /run), so that cleanup removes exactly what the record names, also
after a crash half-way through init. The state file is JSON: ``{"version": 2, "job": <int>,
"node": <str>, "user": <str>, "uid": <int>, "resources": [{"kind": "bridge", "name":
"pb2a0"}, ...]}``, ordered by creation and removed in reverse. A reader refuses another
``version`` or a kind it does not know rather than guessing, and every name in the file is
checked against the names the job id gives, so a tampered file cannot make cleanup remove
another device. VXLAN ids, subnets and the host ports of reverse NAT are taken in the site
etcd (:mod:`pcocc.net.netalloc`) and released by cleanup; the ports are published
(root-owned, world-readable) in ``INFO_ROOT/<node>/<jobid>.json`` for the job's VMs
(:func:`read_forwards`).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pcocc import fsutil
from pcocc.errors import Busy, ConfigError, Corrupt, PcoccError, UsageError
from pcocc.net import ethernet, ethsetup, netalloc, slurmjob
from pcocc.net.ethernet import EthernetNet

STATE_ROOT = Path("/run/pcocc/jobs")
INFO_ROOT = Path("/run/pcocc/ethernet")
STATE_FILE = "state.json"
STATE_VERSION = 2
#: Slurm job ids are uint32; NO_VAL and friends sit at the top of the range
MAX_JOB_ID = 0xFFFFFFF0
KINDS = ("bridge", "vxlan", "tap", "dnsmasq", "nftables", "ports", "info")
_FAMILIES = ("inet", "bridge")


def parse_job_id(text: str) -> int:
    """A Slurm job id given on the command line (decimal digits only).

    :raise UsageError: not a job id
    """
    if not re.fullmatch(r"[0-9]{1,10}", text or "") or not 0 < int(text) <= MAX_JOB_ID:
        raise UsageError(f"--job {text!r}: expected a Slurm job id (a positive number)")
    return int(text)


def resolve_user(user: str) -> tuple[str, int]:
    """(name, uid) of a local user given by name or numeric uid.

    :raise UsageError: no such user
    """
    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, ValueError):
        raise UsageError(f"--user {user!r}: no such user on this node") from None
    return pw.pw_name, pw.pw_uid


def _check_resource(res: Any, job: int) -> str | None:
    """Why ``res`` is not a resource that this job could have created, or None."""
    if not isinstance(res, dict) or res.get("kind") not in KINDS:
        return f"unknown resource {res!r}"
    kind, name = res["kind"], res.get("name")
    ids = range(ethernet.MAX_NETWORKS)
    if kind == "bridge" and name not in {ethernet.bridge_name(job, i) for i in ids}:
        return f"bridge {name!r} is not one of the job's"
    if kind == "vxlan" and name not in {ethernet.vxlan_name(job, i) for i in ids}:
        return f"VXLAN {name!r} is not one of the job's"
    if kind == "tap" and not (isinstance(name, str) and re.fullmatch(
            f"pt{job:x}[0-9a-f](0|[1-9][0-9]{{0,2}})", name)):
        return f"TAP {name!r} is not one of the job's"
    if kind == "dnsmasq" and res.get("net") not in ids:
        return f"dnsmasq of network {res.get('net')!r}"
    if kind == "nftables" and (name != ethernet.table_name(job)
                               or res.get("family") not in _FAMILIES):
        return f"nftables table {name!r} is not the job's"
    if kind == "ports":
        ports = res.get("ports")
        if not isinstance(ports, list) or not all(
                type(p) is int and 1024 <= p <= 65535 for p in ports):
            return f"bad ports {ports!r}"
    return None


@dataclass
class JobState:
    """What ``init`` created on this node for one job."""

    job: int
    node: str
    user: str
    uid: int
    resources: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"version": STATE_VERSION, "job": self.job, "node": self.node,
                           "user": self.user, "uid": self.uid,
                           "resources": self.resources}, indent=1) + "\n"

    @property
    def ports(self) -> set[int]:
        return {p for r in self.resources if r["kind"] == "ports" for p in r["ports"]}

    @classmethod
    def parse(cls, text: str, job: int, node: str, where: str) -> JobState:
        """Parse and check a state file of ``job`` on ``node``; anything unexpected is refused.

        :raise Corrupt: not a state file this version wrote for this job
        """
        def bad(why: str) -> Corrupt:
            return Corrupt(f"{where}: {why}", hint="remove what it names by hand, then the file")

        try:
            data = json.loads(text)
        except ValueError as err:
            raise bad(f"not JSON ({err})") from None
        if not isinstance(data, dict):
            raise bad("not a JSON object")
        if data.get("version") != STATE_VERSION:
            raise bad(f"state version {data.get('version')!r}, this pcocc reads {STATE_VERSION}")
        if data.get("job") != job or type(data.get("job")) is not int:
            raise bad(f"records job {data.get('job')!r}, expected {job}")
        if data.get("node") != node:
            raise bad(f"records node {data.get('node')!r}, expected {node}")
        user, uid, resources = data.get("user"), data.get("uid"), data.get("resources")
        if not isinstance(user, str) or type(uid) is not int or uid < 0:
            raise bad("bad user or uid")
        if not isinstance(resources, list):
            raise bad("'resources' is not a list")
        for res in resources:
            why = _check_resource(res, job)
            if why:
                raise bad(why)
        return cls(job, node, user, uid, list(resources))


def _require_root() -> None:
    if os.geteuid() != 0:
        raise UsageError("pcocc internal setup must run as root",
                         hint="the Slurm plugin runs it in the job's prolog and epilog")


def _private_dir(path: Path, create: bool, mode: int = 0o700) -> bool:
    """Check (or make) a real directory owned by root, not writable by others (and, mode
    0700, private to root); False if absent."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            return False
        os.mkdir(path, mode)
        os.chmod(path, mode)
        st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o777 & ~mode:
        which = "private to root" if mode == 0o700 else "of root that only root writes"
        raise PcoccError(f"{path} is not a directory {which}", hint="remove it; pcocc recreates it")
    return True


def node_dir(node: str, root: Path = STATE_ROOT) -> Path:
    if not slurmjob.NODE_NAME.match(node):
        raise UsageError(f"{node!r} is not a node name")
    return root / node


def job_dir(job: int, node: str, root: Path = STATE_ROOT) -> Path:
    return node_dir(node, root) / str(job)


def info_path(job: int, node: str, info_root: Path = INFO_ROOT) -> Path:
    return node_dir(node, info_root) / f"{job}.json"


def _prepare(root: Path, node: str) -> None:
    root.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    _private_dir(root, create=True)
    _private_dir(node_dir(node, root), create=True)


def read_state(job: int, node: str, root: Path = STATE_ROOT) -> JobState | None:
    """The recorded state of ``job`` on this node, or None if there is none."""
    if not (_private_dir(root, False) and _private_dir(node_dir(node, root), False)
            and _private_dir(job_dir(job, node, root), False)):
        return None
    path = job_dir(job, node, root) / STATE_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise fsutil.os_error(err, f"read {path}") from err
    with os.fdopen(fd) as f:
        return JobState.parse(f.read(1 << 20), job, node, str(path))


def _remove(res: dict[str, Any], state: JobState, root: Path, info_root: Path) -> None:
    kind = res["kind"]
    directory = job_dir(state.job, state.node, root)
    if kind in ("bridge", "vxlan", "tap"):
        ethsetup.delete_link(res["name"])
    elif kind == "dnsmasq":
        ethsetup.stop_dnsmasq(directory / f"dnsmasq-{res['net']}.conf",
                              directory / f"dnsmasq-{res['net']}.pid")
    elif kind == "nftables":
        ethsetup.delete_table(res["family"], res["name"])
    elif kind == "info":
        info_path(state.job, state.node, info_root).unlink(missing_ok=True)


class _Recorder:
    """Write the state file with a resource added, before that resource is created."""

    def __init__(self, state: JobState, root: Path):
        self.state, self.path = state, job_dir(state.job, state.node, root) / STATE_FILE

    def add(self, **res: Any) -> None:
        self.state.resources.append(res)
        fsutil.write_atomic(self.path, self.state.to_json(), 0o600)


def init(job: int, user: str, networks: Mapping[str, Mapping[str, Any]],
         env: Mapping[str, str], root: Path = STATE_ROOT, info_root: Path = INFO_ROOT,
         kv: netalloc.AllocKv | None = None) -> JobState:
    """Create the job's node state for the ethernet networks of ``networks`` (the admin's
    networks.yaml); ``env``: the prolog's (node name, Slurm configuration); ``kv``: the
    site etcd. A previous record of the same job is cleaned up first, so init is safe to
    repeat."""
    _require_root()
    name, uid = resolve_user(user)
    nets = ethernet.all_from_config(networks)
    node = slurmjob.this_node(env)
    _prepare(root, node)
    if nets and kv is None:
        raise ConfigError("networks.yaml defines ethernet networks, whose VXLAN ids, subnets"
                          " and ports are taken in the site etcd, but batch.yaml names none",
                          hint="set etcd.endpoints in the system batch.yaml (admin guide,"
                               " 'Ethernet networks')")
    cleanup(job, env, root, info_root, kv, whole_job=False)
    ethsetup.check_forwarding(nets)
    sjob = slurmjob.query_job(job, env) if nets else None
    if sjob is not None and sjob.uid != uid:
        raise Corrupt(f"job {job} belongs to uid {sjob.uid} for Slurm, not to {user}")
    os.mkdir(job_dir(job, node, root), 0o700)
    rec = _Recorder(JobState(job, node, name, uid), root)
    rec.add(kind="ports", ports=[])  # the record exists before anything is created
    if sjob is None or kv is None:
        return rec.state
    if sjob.ntasks > ethernet.MAX_VMS:
        raise UsageError(f"job {job} has {sjob.ntasks} tasks; ethernet networks support"
                         f" at most {ethernet.MAX_VMS} VMs")
    try:
        netalloc.join(kv, job, node)
        nets = [netalloc.job_network(kv, job, n) for n in nets]
        forwards = _take_ports(rec, kv, nets, sjob.ntasks)
        peers = [slurmjob.node_address(n, env) for n in sjob.nodes if n != node]
        _publish(rec, forwards, info_root)
        for net in nets:
            _setup_network(rec, net, sjob, peers)
        _setup_nft(rec, nets, forwards, peers)
    except BaseException:
        # nothing half made stays (the epilog may not run); the job's VNIs and subnets are
        # released by the cleanup of its last node, as another node may be using them
        cleanup(job, env, root, info_root, kv, whole_job=False)
        raise
    return rec.state


def _take_ports(rec: _Recorder, kv: netalloc.AllocKv, nets: list[EthernetNet],
                ntasks: int) -> dict[str, dict[int, int]]:
    """A host port per VM for each network with reverse NAT, taken in etcd, then recorded
    in the state (cleanup releases them in etcd by the job's id, recorded or not)."""
    forwards: dict[str, dict[int, int]] = {}
    mine: list[int] = []
    for net in nets:
        if net.reverse_nat is None:
            continue
        rnat = net.reverse_nat
        try:
            ports = netalloc.take_ports(kv, rec.state.job, rec.state.node, rnat.low,
                                        rnat.high, ntasks, ethsetup.bindable)
        except Busy as err:
            raise Busy(f"network '{net.name}': {err}", hint=err.hint) from None
        mine += ports
        forwards[net.name] = dict(enumerate(ports))
    rec.state.resources[0]["ports"] = mine
    rec.add(kind="info")
    return forwards


def _publish(rec: _Recorder, forwards: dict[str, dict[int, int]], info_root: Path) -> None:
    """The job's reverse NAT ports, world-readable for the job's VMs (ports are no secret)."""
    info_root.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    _private_dir(info_root, True, 0o755)
    _private_dir(node_dir(rec.state.node, info_root), True, 0o755)
    text = json.dumps({"version": 1, "job": rec.state.job, "forwards": {
        net: {str(rank): port for rank, port in ports.items()}
        for net, ports in forwards.items()}}) + "\n"
    fsutil.write_atomic(info_path(rec.state.job, rec.state.node, info_root), text, 0o644)


def _setup_network(rec: _Recorder, net: EthernetNet, sjob: slurmjob.SlurmJob,
                   peers: list[str]) -> None:
    job, directory = sjob.job, rec.path.parent
    rec.add(kind="bridge", name=ethernet.bridge_name(job, net.net_id))
    ethsetup.add_bridge(job, net)
    if peers:
        rec.add(kind="vxlan", name=ethernet.vxlan_name(job, net.net_id))
        ethsetup.add_vxlan(job, net, peers)
    for rank in range(sjob.ntasks):
        rec.add(kind="tap", name=ethernet.tap_name(job, net.net_id, rank))
        ethsetup.add_tap(job, net, rank, rec.state.uid)
    conf = directory / f"dnsmasq-{net.net_id}.conf"
    fsutil.write_atomic(conf, ethernet.dnsmasq_conf(
        job, net, range(sjob.ntasks), str(directory / f"dnsmasq-{net.net_id}.pid")), 0o600)
    rec.add(kind="dnsmasq", net=net.net_id)
    ethsetup.start_dnsmasq(conf)


def _setup_nft(rec: _Recorder, nets: list[EthernetNet], forwards: dict[str, dict[int, int]],
               peers: list[str]) -> None:
    by_name = {n.name: n for n in nets}
    text = ethernet.nft_ruleset(rec.state.job, nets, ethsetup.forwards_by_net(forwards, by_name),
                                nets if peers else [], uid=rec.state.uid, peers=peers)
    path = rec.path.parent / "rules.nft"
    fsutil.write_atomic(path, text, 0o600)
    for family in _FAMILIES[:2 if peers else 1]:
        rec.add(kind="nftables", family=family, name=ethernet.table_name(rec.state.job))
    ethsetup.load_nft(path)


def cleanup(job: int, env: Mapping[str, str], root: Path = STATE_ROOT,
            info_root: Path = INFO_ROOT, kv: netalloc.AllocKv | None = None,
            whole_job: bool = True) -> JobState | None:
    """Remove what the job's record names, then the record; nothing recorded: nothing done.
    Then release what the job holds in the site etcd ``kv`` for this node (and, with
    ``whole_job``, for the job when no other node of it remains set up)."""
    _require_root()
    node = slurmjob.this_node(env)
    state = read_state(job, node, root)
    directory = job_dir(job, node, root)
    if state is not None:
        for res in reversed(state.resources):
            _remove(res, state, root, info_root)
    if _private_dir(root, False) and _private_dir(node_dir(node, root), False) \
            and _private_dir(directory, False):
        for entry in os.listdir(directory):  # the record last: it names what to remove
            if entry != STATE_FILE:
                (directory / entry).unlink()
        (directory / STATE_FILE).unlink(missing_ok=True)
        os.rmdir(directory)
    if kv is not None:
        netalloc.release(kv, job, node, whole_job)
    return state


def site_kv_for(networks: Mapping[str, Mapping[str, Any]], etcd: Any) -> Any:
    """The site etcd client that setup needs for ``networks`` (None without ethernet
    networks or without a site etcd in batch.yaml, which ``init`` then refuses)."""
    return netalloc.site_kv(etcd) if ethernet.ethernet_names(networks) else None


def read_forwards(job: int, node: str, info_root: Path = INFO_ROOT) -> dict[str, dict[int, int]]:
    """The reverse NAT host ports of the job's VMs on ``node`` ({network: {rank: port}}),
    as root published them; {} if there are none.

    :raise Corrupt: the file is not what root writes
    """
    path = info_path(job, node, info_root)
    try:
        st = os.lstat(path)
        text = path.read_text()[: 1 << 20] if stat.S_ISREG(st.st_mode) else ""
    except FileNotFoundError:
        return {}
    if st.st_uid != 0 or st.st_mode & 0o022:
        raise Corrupt(f"{path} is not a file of root", hint="remove it")
    try:
        data = json.loads(text)
        assert data["version"] == 1 and data["job"] == job
        return {str(net): {int(r): int(p) for r, p in ports.items()
                           if str(r).isdigit() and 1024 <= int(p) <= 65535}
                for net, ports in data["forwards"].items()}
    except (ValueError, KeyError, TypeError, AssertionError, AttributeError):
        raise Corrupt(f"{path}: not a forwards file of job {job}", hint="remove it") from None


def vm_forwards(networks: Any, job: str, rank: int, env: Mapping[str, str],
                info_root: Path = INFO_ROOT) -> dict[int, int]:
    """{guest port: host port} of VM ``rank`` by the reverse NAT of its ethernet networks
    on this node (``networks``: its resolved definitions)."""
    nets = [n for n in networks if n.get("type") == ethernet.TYPE and n.get("reverse-nat")]
    if not nets or not job.isdigit():
        return {}
    published = read_forwards(int(job), slurmjob.this_node(env), info_root)
    result: dict[int, int] = {}
    for net in nets:
        port = published.get(str(net["name"]), {}).get(rank)
        if port is not None:
            result.setdefault(int(net["reverse-nat"].get("vm-port", 22)), port)
    return result
