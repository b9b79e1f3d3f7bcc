"""What the user commands on a running cluster do: list, ps, ssh, scp, nc, console (reset,
monitor and exec are in :mod:`pcocc.cluster.vmcontrol`).

The cluster comes from ``-j JOBID``, ``$PCOCC_JOB_ID``/``$SLURM_JOB_ID``, or is the user's
only one (see :func:`pcocc.cluster.lookup.select_cluster`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import sys
import termios
import tty
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcocc import fields, proc
from pcocc.cluster import adapters, batchadapter, rundir
from pcocc.cluster.lookup import (
    ClusterSelection,
    ClusterView,
    all_clusters,
    parse_vm_name,
    select_cluster,
)
from pcocc.cluster.sshkeys import ensure_user_key, write_ssh_files
from pcocc.cluster.vmcontrol import local_path, short_socket_path
from pcocc.cluster.vmstate import RUNNING, VmRecord
from pcocc.config import EtcdConfig
from pcocc.errors import NotFound, PermissionDenied, ServiceUnavailable
from pcocc.kv import connect

log = logging.getLogger(__name__)

#: Ctrl-] ends ``pcocc console`` (as in telnet)
CONSOLE_ESCAPE = b"\x1d"


@contextlib.contextmanager
def _kvs(env: Mapping[str, str], etcd: connect.EtcdSource) -> Iterator[list[Any]]:
    """Read-only clients of every etcd that may hold the user's clusters."""
    sets = connect.kv_endpoint_sets(env, rundir.run_root(), etcd)
    kvs: list[Any] = []
    try:
        for endpoints, login in sets:
            kvs.append(connect.open_reader(endpoints, etcd, login))
        yield kvs
    finally:
        for kv in kvs:
            kv.close()


def list_clusters(
    env: Mapping[str, str] | None = None, etcd: connect.EtcdSource = EtcdConfig()
) -> list[ClusterView]:
    env = os.environ if env is None else env
    with _kvs(env, etcd) as kvs:
        found = []
        for kv in kvs:
            try:
                found += all_clusters([kv], adapters.user_name())
            except ServiceUnavailable:
                if len(kvs) == 1:
                    raise
                log.debug("skipping an unreachable private etcd at %s", kv.endpoint)
        return found


@dataclass
class Listing:
    """What ``pcocc ps`` shows: the caller's running clusters (from etcd, in full) and, with
    ``-a``/``-u USER``, the other clusters the batch system shows (other users', and the
    caller's still waiting for their nodes); ``others`` is None when it cannot show them
    (without a batch system, other users' clusters are out of sight)."""

    own: list[ClusterView]
    others: list[Any] | None = None


def ps_listing(
    config: Any,
    *,
    all_users: bool = False,
    user: str | None = None,
    selection: ClusterSelection = ClusterSelection(),
    env: Mapping[str, str] | None = None,
) -> Listing:
    """The clusters ``pcocc ps [-a] [-u USER] [-j JOBID] [-J NAME]`` lists."""
    from pcocc.cluster.jobs import CLUSTER_COMMENT

    me = adapters.user_name()
    target = None if all_users else (user or me)
    listing = Listing(own=[])
    if target in (None, me):
        listing.own = [c for c in list_clusters(env, lambda: config.batch.etcd)
                       if _selected(selection, c.batchid, c.record.name)]
    if not all_users and user is None:
        return listing
    jobs = batchadapter.batch_manager(config).list_jobs(target, CLUSTER_COMMENT)
    if jobs is not None:
        shown = {c.batchid for c in listing.own} if target in (None, me) else set()
        listing.others = [j for j in jobs if j.job_id not in shown
                          and _selected(selection, j.job_id, j.name)]
    return listing


def _selected(selection: ClusterSelection, job_id: str, name: str) -> bool:
    return selection.job_id in (None, job_id) and selection.job_name in (None, name)


def find_cluster(
    selection: ClusterSelection | str | None,
    env: Mapping[str, str] | None = None,
    etcd: connect.EtcdSource = EtcdConfig(),
) -> ClusterView:
    """The cluster ``selection`` names (a bare string: a job id), among the user's own.

    :raise PermissionDenied: ``--user`` names another user (see :func:`check_owner`)
    """
    if not isinstance(selection, ClusterSelection):
        selection = ClusterSelection(job_id=selection)
    check_owner(selection.user)
    env = os.environ if env is None else env
    return select_cluster(
        list_clusters(env, etcd), selection.job_id, env, job_name=selection.job_name
    )


def check_owner(user: str | None) -> None:
    """``--user USER`` (pcocc 0.7's way to act on another user's cluster) is only ever the
    caller: a cluster's etcd records, run directory, sockets and ssh key are readable by
    its owner alone (docs/admin-guide.md, "Security model"), so pcocc cannot reach
    another user's cluster, by design.

    :raise PermissionDenied: naming the user
    """
    if user is None or user == adapters.user_name():
        return
    user = fields.one_line(user, 64)
    raise PermissionDenied(
        f"--user {user}: pcocc cannot reach the clusters of another user; only their owner"
        " can read their records, sockets and ssh keys",
        hint=f"'pcocc ps -u {user}' lists them (what the batch system shows);"
        " ask their owner to run the command",
    )


def _target(text: str) -> tuple[str | None, str]:
    """``[user@]vmN`` -> (user or None, 'vmN')."""
    user, sep, name = text.rpartition("@")
    parse_vm_name(name)
    return (user if sep else None), name


def ssh_files(view: ClusterView) -> Path:
    """The cluster's ssh_config (and known_hosts with its host keys) on this host."""
    ensure_user_key()
    return write_ssh_files(rundir.cluster_dir(view.batchid), view.batchid, view.vms)


def ssh_argv(
    view: ClusterView,
    target: str,
    command: Sequence[str],
    ssh_args: Sequence[str] = (),
    *,
    port: int | None = None,
) -> list[str]:
    """``ssh`` to ``[USER@]vmN`` with the cluster's ssh_config; ``ssh_args`` (the user's
    ssh options) go before the destination, each one argv word. ``port``: another ssh
    server of the VM than port 22, through its forward (``pcocc ssh -p``, as in 0.7)."""
    user, name = _target(target)
    rec = view.vm(name)
    port_args: list[str] = []
    if port is not None and port != SSH_PORT:
        host, host_port = forward_address(view, rec, port)
        # -o and -p on the command line win over the ssh_config; the host key is still
        # checked under the VM's alias
        port_args = ["-o", f"HostName={host}", "-p", str(host_port)]
    if rec.ssh_port is None:
        if rec.status == RUNNING:
            raise NotFound(
                f"{name} of cluster {view.batchid} forwards no ssh port",
                hint="its resource set needs a network of type user with ssh-forward: true",
            )
        raise NotFound(
            f"{name} of cluster {view.batchid} has no ssh port yet",
            hint="wait until 'pcocc ps' shows it running",
        )
    config = ssh_files(view)
    dest = f"{user}@{rec.name}" if user else rec.name
    return ["ssh", "-F", str(config), *port_args, *ssh_args, dest, *command]


def scp_argv(view: ClusterView, paths: Sequence[str], scp_args: Sequence[str] = ()) -> list[str]:
    """``scp`` with the cluster's ssh_config; ``paths`` are local paths or
    ``[USER@]vmN:PATH`` (each VM named must run), ``scp_args`` the user's scp options."""
    for arg in paths:
        host, sep, _path = arg.partition(":")
        if sep and "/" not in host:
            _user, name = _target(host)
            view.vm(name)
    return ["scp", "-F", str(ssh_files(view)), *scp_args, *paths]


SSH_PORT = 22


def forward_address(view: ClusterView, rec: VmRecord, port: int) -> tuple[str, int]:
    """Where port ``port`` of a VM listens on a host (its ssh or public forward).

    :raise NotFound: the port is not forwarded there (listing those that are)
    """
    forward = view.rnat.get((rec.rank, port))
    if forward is None:
        private = private_forwards(view, rec.rank)
        forwarded = sorted({p for (r, p) in view.rnat if r == rec.rank} | set(private))
        raise NotFound(
            f"port {port} of {rec.name} is not forwarded to a host port",
            hint=f"forwarded ports: {', '.join(map(str, forwarded)) or 'none'}",
        )
    host, host_port = forward
    if host == socket.gethostname():
        host = "127.0.0.1"
    return host, host_port


def run_interactive(argv: Sequence[str]) -> int:
    """Run a program on our terminal and return its exit status (Ctrl-C goes to it)."""
    child = proc.spawn(argv, stdin=None, stdout=None, stderr=None, new_session=False)
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            continue  # the child got it too and decides


@contextlib.contextmanager
def _unix_socket(path: str) -> Iterator[socket.socket]:
    name, fd = short_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(name)
        except OSError as err:
            raise ServiceUnavailable(f"cannot connect to {path}: {err.strerror}") from err
        yield sock
    finally:
        sock.close()
        if fd is not None:
            os.close(fd)


def console_log(view: ClusterView, name: str) -> str:
    rec = view.vm(name)
    path = local_path(view, rec, rec.console_log, "console log", is_socket=False)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError as err:
        raise NotFound(
            f"cannot read the console log of {rec.name} ({path}): {err.strerror}"
        ) from err


def attach_console(view: ClusterView, name: str) -> None:
    """Relay the terminal to the VM's serial console until Ctrl-] or the VM goes."""
    rec = view.vm(name)
    path = local_path(view, rec, rec.console_socket, "console")
    stdin = sys.stdin.fileno()
    is_tty = os.isatty(stdin)
    with _unix_socket(path) as sock:
        if is_tty:
            print(
                f"pcocc: connected to the console of {rec.name}; Ctrl-] to quit",
                file=sys.stderr,
                flush=True,
            )
        saved = termios.tcgetattr(stdin) if is_tty else None
        try:
            if is_tty:
                tty.setraw(stdin)
            _relay(sock, stdin, sys.stdout.fileno(), escape=CONSOLE_ESCAPE if is_tty else None)
        finally:
            if saved is not None:
                termios.tcsetattr(stdin, termios.TCSADRAIN, saved)


def _relay(sock: socket.socket, in_fd: int, out_fd: int, escape: bytes | None,
           idle_timeout_s: float | None = None) -> None:
    """Copy in_fd -> sock and sock -> out_fd until either side closes (or nothing comes
    from either for ``idle_timeout_s``)."""
    in_open = True
    while True:
        readers = [sock] + ([in_fd] if in_open else [])
        ready, _, _ = select.select(readers, [], [], idle_timeout_s)
        if not ready:
            return
        if sock in ready:
            data = sock.recv(65536)
            if not data:
                return
            os.write(out_fd, data)
        if in_open and in_fd in ready:
            data = os.read(in_fd, 65536)
            if not data:
                in_open = False
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
                continue
            if escape is not None and escape in data:
                data = data.split(escape, 1)[0]
                if data:
                    sock.sendall(data)
                return
            sock.sendall(data)


def private_forwards(view: ClusterView, rank: int) -> list[int]:
    """The private forwards of VM ``rank`` (networks.yaml ``forwards``): no host port
    listens for them; ``pcocc nc`` reaches them through the VM's ssh server."""
    from pcocc.net.resolve import plan_networks

    return plan_networks(view.record.definition.vm(rank).networks).private


def nc_ssh_argv(view: ClusterView, target: str, port: int) -> list[str]:
    """``ssh -W`` to ``port`` of the guest's loopback, as ``[USER@]vmN``: the user's key
    protects the relay, and it works from any node that reaches the ssh forward."""
    from pcocc.net.user import PRIVATE_TARGET

    return ssh_argv(view, target, (), ("-W", f"{PRIVATE_TARGET}:{port}"))


NC_CONNECT_TIMEOUT_S = 20


def nc(view: ClusterView, target: str, port: int, *, timeout_s: float | None = None,
       scan: bool = False, verbose: bool = False) -> int:
    """Relay stdin/stdout to TCP ``port`` of a VM (``[USER@]vmN``) and return the exit
    status: a listening forward (ssh, public) directly, a private one through ssh.

    nc's options, as pcocc 0.7 passed them to nc: ``timeout_s`` (``-w``: to connect, and
    the longest idle time), ``scan`` (``-z``: connect, send nothing, close), ``verbose``
    (``-v``: say on stderr that the connection is made)."""
    _user, name = _target(target)
    rank = parse_vm_name(name)
    rec = view.vm(name)
    if (rank, port) not in view.rnat and port in private_forwards(view, rank):
        argv = nc_ssh_argv(view, target, port)
        if timeout_s is not None:
            argv[1:1] = ["-o", f"ConnectTimeout={max(1, round(timeout_s))}"]
        if scan:
            argv[1:1] = ["-n"]  # stdin from /dev/null: connect, then close
        status = run_interactive(argv)
        if verbose and status == 0:
            print(f"pcocc: connection to {rec.name} port {port} succeeded", file=sys.stderr)
        return status
    host, host_port = forward_address(view, rec, port)
    try:
        sock = socket.create_connection(
            (host, host_port), timeout=timeout_s or NC_CONNECT_TIMEOUT_S
        )
    except OSError as err:
        raise ServiceUnavailable(
            f"cannot connect to {rec.name}:{port} via {host}:{host_port}: {err}"
        ) from err
    with sock:
        if verbose:
            print(f"pcocc: connection to {rec.name} port {port} succeeded", file=sys.stderr)
        if scan:
            return 0
        sock.settimeout(None)
        _relay(sock, sys.stdin.fileno(), sys.stdout.fileno(), escape=None,
               idle_timeout_s=timeout_s)
    return 0
