#!/usr/bin/env python3
"""A development cluster on this host: munged, slurmctld, 4 slurmd and etcd, in one directory.

Everything (keys, sockets, state, spool, pid and log files, etcd data) stays inside DIR; the
daemons are plain processes on free loopback ports. Nothing uses systemd or /etc/slurm.

    python helpers/devcluster.py start DIR     # start and wait until nodes are idle
    eval "$(python helpers/devcluster.py env DIR)"
    srun -N4 -l hostname
    python helpers/devcluster.py stop DIR      # no process is left behind

Tests use ``DevCluster`` as a context manager (see tests/fixtures/services.py).

With ``node_netns=True`` (``--netns``; root only) each slurmd runs in a network namespace of
its own, as if it were another host. One Linux bridge on this host joins them: each node's
veth pair has its host end enslaved to the bridge, and the host and the nodes share a private
/24 (10.213.T.0/24, T picked per cluster): the host is 10.213.T.1 (on the bridge), node k
(from 0) is 10.213.T.(k+2). The node's NodeAddr is its address; slurmctld (and etcd) listen
on the host's address, and every namespace routes to the host by default. Bridging is layer 2, so the
nodes reach each other and the host without IP forwarding (off on this host, and the helper
does not change it): a launcher may run on a node (``pcocc batch``) and a private network's
switch on one node serves VMs on the others. The namespaces, veths and the bridge are named
``pcd<tag>...`` (``tag`` derived from DIR): ``stop`` deletes them, also those a crashed run
left behind, and ``start`` removes any ``pcd*`` namespace left empty for a while and any
``pcd<tag>br`` bridge whose namespaces are all gone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import socket
import stat
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

try:
    import pcocc  # noqa: F401
except ImportError:  # run from a checkout without the virtualenv: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pcocc import proc
from pcocc.errors import PcoccError, ServiceUnavailable
from pcocc import daemon
from pcocc.kv.endpoints import ENDPOINTS_VAR
from pcocc.kv.server import EtcdServer

#: set in the environment of every daemon, so that ``stop`` can find stray ones
MARKER_VAR = "PCOCC_DEVCLUSTER_DIR"
#: prefix of the network namespaces and veth devices of ``node_netns`` clusters
NETNS_PREFIX = "pcd"
#: hex digits of the directory's hash after NETNS_PREFIX in the names of one cluster
TAG_HASH_CHARS = 5
#: a namespace with this prefix, no process and older than this is a leftover
STALE_NETNS_S = 120.0
SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sinfo", "srun", "sbatch", "scontrol")


def missing_binaries(with_etcd: bool = True) -> list[str]:
    """Programs the dev cluster needs that are not installed."""
    import shutil

    names = list(SLURM_BINARIES) + (["etcd"] if with_etcd else [])
    return [n for n in names if shutil.which(n) is None]


def _unsearchable_ancestor(path: Path) -> Path | None:
    """munged refuses a socket below a directory that others cannot traverse."""
    for d in path.parents:
        if not d.stat().st_mode & stat.S_IXOTH:
            return d
    return None


class DevCluster:
    """munged + slurmctld + ``nodes`` slurmd (+ etcd) in ``directory``; start, use, stop."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        nodes: int = 4,
        cpus_per_node: int = 2,
        with_etcd: bool = True,
        start_timeout_s: float = 60.0,
        extra_conf: Sequence[str] = (),
        node_netns: bool = False,
        plugstack: Sequence[str] = (),
    ):
        """``extra_conf``: more slurm.conf lines (they win over the generated ones);
        ``node_netns``: each slurmd in a network namespace of its own (see the module doc);
        ``plugstack``: lines of plugstack.conf (SPANK plugins every daemon and client loads)."""
        self.directory = Path(directory).resolve()
        self.nodes = [f"n{i}" for i in range(1, nodes + 1)]
        self.cpus_per_node = cpus_per_node
        self.with_etcd = with_etcd
        self.start_timeout_s = start_timeout_s
        self.extra_conf = list(extra_conf)
        self.node_netns = node_netns
        self.plugstack = list(plugstack)
        self.netns: NodeNetns | None = None
        self.etcd: EtcdServer | None = None
        self._procs: dict[str, object] = {}
        self._pids: dict[str, int] = {}

    # paths -----------------------------------------------------------------------------
    @property
    def slurm_conf(self) -> Path:
        return self.directory / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.directory / "munge" / "munge.sock"

    @property
    def state_path(self) -> Path:
        return self.directory / "devcluster.json"

    def log_path(self, name: str) -> Path:
        return self.directory / "log" / f"{name}.log"

    # environment -----------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """Variables that point Slurm clients and pcocc at this cluster."""
        env = {"SLURM_CONF": str(self.slurm_conf)}
        if self.etcd is not None:
            env[ENDPOINTS_VAR] = ",".join(self.etcd.endpoints)
            env["ETCDCTL_API"] = "3"
            env["ETCDCTL_ENDPOINTS"] = ",".join(self.etcd.endpoints)
        return env

    def _daemon_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_"))
        }
        env.update(self.env())
        env[MARKER_VAR] = str(self.directory)
        return env

    # configuration ---------------------------------------------------------------------
    def node_address(self, name: str) -> str:
        """The address slurmctld reaches node ``name`` at."""
        return self.netns.node_address(name) if self.netns else "127.0.0.1"

    @property
    def controller_address(self) -> str:
        return self.netns.controller_address if self.netns else "127.0.0.1"

    def _write_config(self, ctld_port: int, node_ports: list[int]) -> None:
        d = self.directory
        host = socket.gethostname()
        lines = [
            "# generated by helpers/devcluster.py: a private development cluster",
            "ClusterName=pcoccdev",
            f"SlurmctldHost={host}({self.controller_address})",
            f"SlurmctldPort={ctld_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "CredType=cred/munge",
            f"StateSaveLocation={d / 'state'}",
            f"SlurmdSpoolDir={d / 'spool' / '%n'}",
            f"SlurmctldPidFile={d / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={d / 'run' / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={self.log_path('slurmctld')}",
            f"SlurmdLogFile={d / 'log' / 'slurmd-%n.log'}",
            f"PlugStackConfig={d / 'plugstack.conf'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            "InactiveLimit=0",
            "MinJobAge=300",
            "KillWait=2",
            "Waittime=0",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
        ]
        for name, port in zip(self.nodes, node_ports):
            lines.append(
                f"NodeName={name} NodeHostname={host} NodeAddr={self.node_address(name)} "
                f"Port={port} "
                f"CPUs={self.cpus_per_node} RealMemory=1000 State=UNKNOWN"
            )
        lines.append(
            f"PartitionName=debug Nodes={','.join(self.nodes)} Default=YES "
            "MaxTime=INFINITE State=UP OverSubscribe=NO"
        )
        lines.extend(self.extra_conf)
        self.slurm_conf.write_text("\n".join(lines) + "\n")
        (d / "plugstack.conf").write_text("".join(line + "\n" for line in self.plugstack))

    # lifecycle -------------------------------------------------------------------------
    def start(self) -> DevCluster:
        """Start every daemon and wait until all nodes are idle (and etcd is healthy).

        :raise ToolMissing: a Slurm, munge or etcd program is not installed
        :raise ServiceUnavailable: a daemon did not come up (names its log file)
        """
        for name in SLURM_BINARIES:
            proc.which(name)
        if self.is_running():
            raise PcoccError(
                f"a dev cluster already runs in {self.directory}",
                hint=f"stop it first: helpers/devcluster.py stop {self.directory}",
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        bad = _unsearchable_ancestor(self.directory)
        if bad is not None:
            raise PcoccError(
                f"munged needs every directory above its socket to be searchable by all: "
                f"{bad} is not",
                hint="use a directory made with tempfile.mkdtemp() under /tmp, or chmod o+x it",
            )
        for sub in ("munge", "state", "run", "log", "spool", *(f"spool/{n}" for n in self.nodes)):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o755)
        os.chmod(self.directory / "munge", 0o755)
        try:
            if self.node_netns:
                NodeNetns.remove_stale()
                self.netns = NodeNetns(netns_tag(self.directory), self.nodes)
                self.netns.create()
            self._start_munge()
            self._start_slurm()
            if self.with_etcd:
                self.etcd = EtcdServer(self.directory / "etcd", address=self.controller_address)
                self.etcd.start()
            self._save_state()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        p = proc.spawn(argv, env=self._daemon_env(), log_path=self.log_path(name + ".out"))
        self._procs[name] = p
        self._pids[name] = p.pid
        self._save_state()

    def _start_munge(self) -> None:
        key = self.directory / "munge" / "munge.key"
        if not key.exists():
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(128))
        self._spawn("munged", [
            "munged", "-F",
            f"--socket={self.munge_socket}",
            f"--key-file={key}",
            f"--log-file={self.log_path('munged')}",
            f"--pid-file={self.directory / 'run' / 'munged.pid'}",
            f"--seed-file={self.directory / 'munge' / 'munged.seed'}",
        ])  # fmt: skip
        self._wait(lambda: self.munge_socket.exists(), "munged", self.log_path("munged"), "munged")

    def _start_slurm(self) -> None:
        ctld_port, *node_ports = daemon.free_ports(1 + len(self.nodes))
        self._write_config(ctld_port, node_ports)
        self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-i", "-f", str(self.slurm_conf)])
        for name in self.nodes:
            argv = ["slurmd", "-D", "-N", name, "-f", str(self.slurm_conf)]
            if self.netns is not None:
                # not 'ip netns exec': it remounts /sys, and slurmd loses /sys/fs/cgroup
                argv = ["nsenter", f"--net=/run/netns/{self.netns.netns_name(name)}", *argv]
            self._spawn(name, argv)
        self._wait(self._all_idle, "slurm nodes to be idle", self.log_path("slurmctld"), None)

    def _exited_daemons(self) -> list[str]:
        """Names of the daemons that exited, in start order (munged, slurmctld, the nodes).

        A bad slurm.conf makes slurmctld and every slurmd exit within moments of each other,
        in either order: once one is seen gone, the others get a second to settle so the
        report names the controller first rather than whichever node lost the race.
        """
        if all(p.poll() is None for p in self._procs.values()):
            return []
        settle = time.monotonic() + 1.0
        while time.monotonic() < settle and any(p.poll() is None for p in self._procs.values()):
            time.sleep(0.05)
        return [name for name, p in self._procs.items() if p.poll() is not None]

    def _all_idle(self) -> bool:
        exited = self._exited_daemons()
        if exited:
            name, p = exited[0], self._procs[exited[0]]
            log = self.log_path(name if name in ("slurmctld", "munged") else f"slurmd-{name}")
            also = f" (also exited: {', '.join(exited[1:])})" if exited[1:] else ""
            raise ServiceUnavailable(
                f"{name} exited with status {p.returncode} during start-up{also}",
                hint=f"see {log} and {self.log_path(name + '.out')}",
            )
        res = proc.run(
            ["sinfo", "-h", "-N", "-o", "%N %T"], env=self._daemon_env(), check=False, timeout_s=10
        )
        if res.returncode != 0:
            return False
        states = dict(line.split() for line in res.stdout.splitlines() if line.strip())
        return all(states.get(n) == "idle" for n in self.nodes)

    def _wait(self, ready, what: str, log: Path, name: str | None) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if name is not None and self._procs[name].poll() is not None:
                raise ServiceUnavailable(
                    f"{name} exited with status {self._procs[name].returncode} during start-up",
                    hint=f"see {log}",
                )
            if ready():
                return
            time.sleep(0.2)
        raise ServiceUnavailable(
            f"timed out after {self.start_timeout_s:g} s waiting for {what}", hint=f"see {log}"
        )

    def _recorded_pids(self) -> dict[str, int]:
        try:
            return json.loads(self.state_path.read_text()).get("pids", {})
        except (OSError, ValueError):
            return {}

    def is_running(self) -> bool:
        """True if a daemon recorded in ``directory`` still runs."""
        pids = self._pids or self._recorded_pids()
        return any(daemon.is_alive(pid) for pid in pids.values())

    def _save_state(self) -> None:
        state = {"pids": self._pids, "env": self.env()}
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.state_path)

    def stop(self) -> None:
        """Stop every daemon (also those started by another process); verify none is left.

        :raise PcoccError: a process of this cluster survived
        """
        pids = dict(self._pids) or self._recorded_pids()
        etcd = self.etcd or EtcdServer.attach(self.directory / "etcd")
        errors = []
        try:
            etcd.stop()
        except PcoccError as err:
            errors.append(str(err))
        # slurmd first (with its slurmstepd and tasks), then slurmctld, munged last
        order = [n for n in pids if n not in ("slurmctld", "munged")] + ["slurmctld", "munged"]
        for name in order:
            if name in pids:
                try:
                    daemon.stop_pids([pids[name]], what=name)
                except PcoccError as err:
                    errors.append(str(err))
        for p in self._procs.values():
            p.wait()
        stray = daemon.processes_mentioning(f"{MARKER_VAR}={self.directory}")
        # command lines only: a user's shell may have SLURM_CONF in its environment
        stray += daemon.processes_mentioning(str(self.directory), environ=False)
        stray = [p for p in set(stray) if p not in _ancestors()]
        if stray:
            daemon.stop_pids(stray, what=f"leftovers of {self.directory}")
        self._procs.clear()
        self._pids.clear()
        self.etcd = None
        try:
            NodeNetns.remove(netns_tag(self.directory))
        except PcoccError as err:
            errors.append(str(err))
        self.netns = None
        self.state_path.unlink(missing_ok=True)
        if errors:
            raise PcoccError("; ".join(errors))

    @classmethod
    def attach(cls, directory: str | os.PathLike) -> DevCluster:
        """The cluster that ``start`` (maybe in another process) left in ``directory``."""
        cluster = cls(directory)
        cluster._pids = cluster._recorded_pids()
        etcd = EtcdServer.attach(cluster.directory / "etcd")
        if etcd.client_port is not None:
            cluster.etcd = etcd
        return cluster

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def netns_tag(directory: Path) -> str:
    """A short name part, the same for every process that handles ``directory``."""
    return NETNS_PREFIX + hashlib.sha256(str(directory).encode()).hexdigest()[:TAG_HASH_CHARS]


class NodeNetns:
    """One network namespace per node, all on one host bridge (see module doc)."""

    def __init__(self, tag: str, nodes: Sequence[str]):
        self.tag = tag
        self.nodes = list(nodes)
        if len(self.nodes) > 250:
            raise PcoccError("at most 250 nodes fit in the /24 of a netns dev cluster")
        self.subnet = self._free_subnet(int(tag[len(NETNS_PREFIX):], 16) % 256)

    @staticmethod
    def _free_subnet(start: int) -> str:
        used = proc.run(["ip", "-o", "-4", "addr", "show"], timeout_s=10).stdout
        for i in range(256):
            candidate = f"10.213.{(start + i) % 256}"
            if f" {candidate}." not in used:
                return candidate
        raise PcoccError("no free 10.213.x.0/24 subnet for the netns dev cluster")

    @staticmethod
    def bridge_name(tag: str) -> str:
        return f"{tag}br"

    def netns_name(self, name: str) -> str:
        return f"{self.tag}{name}"

    @property
    def host_address(self) -> str:
        """This host's address on the bridge: slurmctld and etcd listen there."""
        return f"{self.subnet}.1"

    def node_address(self, name: str) -> str:
        return f"{self.subnet}.{self.nodes.index(name) + 2}"

    @property
    def controller_address(self) -> str:
        return self.host_address

    def create(self) -> None:
        """Create the namespaces, the bridge and the veth pairs; on failure, remove what was
        made. The namespaces come first: a bridge without namespaces is a leftover (see
        :meth:`remove_stale`)."""
        bridge = self.bridge_name(self.tag)
        try:
            for name in self.nodes:
                proc.run(["ip", "netns", "add", self.netns_name(name)],
                         what=f"create the network namespace of node {name}", timeout_s=30)
            for argv in (
                ["ip", "link", "add", bridge, "type", "bridge"],
                ["ip", "addr", "add", f"{self.host_address}/24", "dev", bridge],
                ["ip", "link", "set", bridge, "up"],
            ):
                proc.run(argv, what="create the bridge of the netns dev cluster", timeout_s=30)
            for i, name in enumerate(self.nodes):
                ns = self.netns_name(name)
                host_dev, node_dev = f"{self.tag}h{i}", f"{self.tag}g{i}"
                for argv in (
                    ["ip", "link", "add", host_dev, "type", "veth", "peer", "name", node_dev,
                     "netns", ns],
                    ["ip", "link", "set", host_dev, "master", bridge],
                    ["ip", "link", "set", host_dev, "up"],
                    ["ip", "-n", ns, "addr", "add", f"{self.node_address(name)}/24", "dev",
                     node_dev],
                    ["ip", "-n", ns, "link", "set", node_dev, "up"],
                    ["ip", "-n", ns, "link", "set", "lo", "up"],
                    ["ip", "-n", ns, "route", "add", "default", "via", self.host_address],
                ):  # fmt: skip
                    proc.run(argv, what=f"set up the network namespace of node {name}",
                             timeout_s=30)
        except BaseException:
            self.remove(self.tag)
            raise

    @staticmethod
    def _listed(prefix: str) -> tuple[list[str], list[str]]:
        """(namespaces, links) whose names start with ``prefix``."""
        res = proc.run(["ip", "netns", "list"], check=False, timeout_s=10)
        spaces = [ln.split()[0] for ln in res.stdout.splitlines() if ln.strip()]
        res = proc.run(["ip", "-o", "link", "show"], check=False, timeout_s=10)
        links = [ln.split(":")[1].strip().split("@")[0] for ln in res.stdout.splitlines()
                 if ln.count(":") >= 2]
        return ([s for s in spaces if s.startswith(prefix)],
                [d for d in links if d.startswith(prefix)])

    @classmethod
    def remove(cls, prefix: str) -> None:
        """Delete every namespace and link whose name starts with ``prefix``.

        :raise PcoccError: one could not be deleted (names it)
        """
        spaces, links = cls._listed(prefix)
        for ns in spaces:
            proc.run(["ip", "netns", "del", ns], check=False, timeout_s=30)
        for dev in links:  # normally gone with their peer's namespace
            proc.run(["ip", "link", "del", dev], check=False, timeout_s=30)
        left = [n for group in cls._listed(prefix) for n in group]
        if left:
            raise PcoccError(f"could not delete the network namespaces/links {', '.join(left)}")

    @classmethod
    def remove_stale(cls) -> None:
        """Delete the ``pcd*`` namespaces (and their veths) that a crashed run left: no
        process inside and older than STALE_NETNS_S."""
        spaces, _ = cls._listed(NETNS_PREFIX)
        for ns in spaces:
            try:
                age_s = time.time() - os.stat(f"/run/netns/{ns}").st_mtime
            except OSError:
                continue
            pids = proc.run(["ip", "netns", "pids", ns], check=False, timeout_s=10).stdout
            if age_s > STALE_NETNS_S and not pids.strip():
                cls.remove(ns)
        # a bridge is made after its cluster's namespaces and deleted after them: one whose
        # cluster has no namespace left is a leftover
        spaces, links = cls._listed(NETNS_PREFIX)
        for dev in links:
            tag = dev[: -len("br")]
            if dev == cls.bridge_name(tag) and len(tag) == len(NETNS_PREFIX) + TAG_HASH_CHARS:
                if not any(s.startswith(tag) for s in spaces):
                    cls.remove(dev)


def _ancestors() -> set[int]:
    """This process and its parents: never stop them, even if they mention the directory."""
    found = set()
    pid = os.getpid()
    parents = daemon._ppid_map()
    while pid > 1 and pid not in found:
        found.add(pid)
        pid = parents.get(pid, 0)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "stop", "env"])
    parser.add_argument("directory")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--cpus-per-node", type=int, default=2)
    parser.add_argument("--no-etcd", action="store_true", help="do not start etcd")
    parser.add_argument("--netns", action="store_true",
                        help="run each slurmd in a network namespace of its own (root)")
    parser.add_argument("--plugstack", action="append", default=[], metavar="LINE",
                        help="a line of plugstack.conf (a SPANK plugin to load); repeatable")
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            cluster = DevCluster(
                args.directory,
                nodes=args.nodes,
                cpus_per_node=args.cpus_per_node,
                with_etcd=not args.no_etcd,
                node_netns=args.netns,
                plugstack=args.plugstack,
            ).start()
            # the daemons outlive this process: forget them without stopping
            cluster._procs.clear()
            print(f"dev cluster running in {cluster.directory}", file=sys.stderr)
        cluster = DevCluster.attach(args.directory)
        if args.action == "stop":
            cluster.stop()
        elif not cluster.is_running():
            raise PcoccError(
                f"no dev cluster runs in {cluster.directory}",
                hint=f"start one: helpers/devcluster.py start {cluster.directory}",
            )
        else:
            for key, value in cluster.env().items():
                print(f"export {key}={shlex.quote(value)}")
    except PcoccError as err:
        print(f"devcluster: error: {err}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
