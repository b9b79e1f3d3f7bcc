"""The user's ssh key for VMs, and per-cluster ssh configuration with pinned host keys."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from pcocc import fields, proc
from pcocc.cluster.vmstate import RUNNING, VmRecord
from pcocc.errors import Corrupt, PcoccError
from pcocc.fsutil import write_atomic

log = logging.getLogger(__name__)


def user_key_path() -> Path:
    return Path(os.path.expanduser("~")) / ".pcocc" / "ssh" / "id_ed25519"


def ensure_user_key(path: Path | None = None) -> str:
    """The public key of ``~/.pcocc/ssh/id_ed25519``, generated (no passphrase) if missing."""
    path = path or user_key_path()
    pub = path.with_name(path.name + ".pub")
    if not path.exists() or not pub.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        pub.unlink(missing_ok=True)
        proc.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pcocc", "-f", path],
            what="generate your pcocc ssh key",
        )
    return pub.read_text().strip()


def host_alias(batchid: str, name: str) -> str:
    return f"pcocc-{batchid}-{name}"


def known_hosts_text(batchid: str, vms: dict[int, VmRecord]) -> str:
    """One ``alias TYPE BASE64`` line per VM with a host key (each field checked again)."""
    lines = []
    for _, rec in sorted(vms.items()):
        if rec.host_key:
            alias = _checked("host key alias", host_alias(batchid, rec.name), fields.name)
            key = _checked(f"host key of {rec.name}", rec.host_key, fields.ssh_public_key)
            lines.append(f"{alias} {key}\n")
    return "".join(lines)


def ssh_config_text(
    batchid: str, vms: dict[int, VmRecord], known_hosts: Path, identity: Path
) -> str:
    """An ssh_config with one ``Host vmN`` per running VM; host keys are checked strictly.

    ssh connects to the address the node published (where the VM's ssh forward listens);
    the host key is looked up under the alias ``pcocc-<batchid>-vmN``, the name the
    known_hosts entries carry, whatever that address is.

    The records were parsed when they were read; every value is checked again here, as it
    goes into a line of the file (a value that could end the line or add an option is
    refused, whatever its origin).

    :raise Corrupt: a value that cannot go into an ssh_config
    """
    lines = []
    for _, rec in sorted(vms.items()):
        if rec.status != RUNNING or rec.ssh_port is None:
            continue
        host = rec.address or _ssh_host(rec.host)
        alias = host_alias(batchid, rec.name)
        lines += [
            f"Host {_checked('VM name', rec.name, fields.name)}",
            f"    HostName {_checked(f'address of {rec.name}', host, fields.hostname)}",
            f"    Port {_checked(f'ssh port of {rec.name}', rec.ssh_port, fields.port)}",
            f"    HostKeyAlias {_checked('host key alias', alias, fields.name)}",
        ]
    lines += [
        "Host *",
        f"    UserKnownHostsFile {_config_path(known_hosts)}",
        "    GlobalKnownHostsFile /dev/null",
        "    StrictHostKeyChecking yes",
        "    CheckHostIP no",
        f"    IdentityFile {_config_path(identity)}",
        "    IdentitiesOnly yes",
        "    LogLevel ERROR",
        "    ConnectTimeout 20",
    ]
    return "\n".join(lines) + "\n"


def _checked(what: str, value: object, check: Callable[[object, str], object]) -> str:
    try:
        return str(check(value, what))
    except fields.BadField as err:
        raise Corrupt(
            f"refusing to write {what} into an ssh_config: {err.problem}",
            hint="the cluster's records in etcd were not written by pcocc",
        ) from None


def _config_path(path: Path) -> str:
    """A path as one quoted ssh_config argument; ssh expands ``%`` tokens and ``~`` in
    these options, so ``%`` is doubled, and a quote, ``${`` (an environment variable for
    ssh) or a control character is refused."""
    text = str(path)
    if '"' in text or "${" in text or not text.isprintable() or not text.startswith("/"):
        raise Corrupt(f"refusing to write the path {text!r} into an ssh_config",
                      hint="use a home directory without quotes or control characters")
    return '"' + text.replace("%", "%%") + '"'


def _ssh_host(host: str) -> str:
    """Records without an address (older nodes) forwarded on the node's loopback: reach it
    there when it is us."""
    import socket

    return "127.0.0.1" if host in (socket.gethostname(), "localhost") else host


def prepare_ssh_files(directory: Path, batchid: str, vms: dict[int, VmRecord]) -> None:
    """The launcher's :func:`write_ssh_files` once every VM runs, so that ``pcocc ssh`` in
    its command finds them ready (:mod:`pcocc.cli.fastssh`); a problem is left for
    ``pcocc ssh`` to report, which writes them again from etcd."""
    try:
        write_ssh_files(directory, batchid, vms)
    except (PcoccError, OSError) as err:
        log.debug("no ssh files prepared for cluster %s: %s", batchid, err)


def write_ssh_files(directory: Path, batchid: str, vms: dict[int, VmRecord]) -> Path:
    """Write known_hosts and ssh_config (0600) in ``directory``; return the config path."""
    known = directory / "known_hosts"
    config = directory / "ssh_config"
    write_atomic(known, known_hosts_text(batchid, vms).encode(), mode=0o600)
    write_atomic(config, ssh_config_text(batchid, vms, known, user_key_path()).encode(), mode=0o600)
    return config
