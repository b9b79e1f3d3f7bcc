"""The state record each node process publishes for its VM (leased etcd key)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pcocc import fields

BOOTING = "booting"
RUNNING = "running"
FAILED = "failed"
STOPPED = "stopped"
STATUSES = (BOOTING, RUNNING, FAILED, STOPPED)
#: Highest VM rank a record may carry (see pcocc.cluster.definition.vm_address).
MAX_RANK = 250 * 256 - 1


#: key of a VM record's ``extra``: why the VM runs under TCG though ``auto`` was asked (the
#: launcher says it once for the cluster)
ACCEL_NOTE = "accel_note"
#: key of a VM record's ``extra``: the number of the signal that stopped its node process
#: (the job was cancelled or timed out), as opposed to a failure
SIGNAL_NOTE = "signal"
#: key of a VM record's ``extra``: where the node kept the console log of a failed VM
KEPT_LOG_NOTE = "console_kept"

@dataclass
class VmRecord:
    rank: int
    host: str
    status: str
    node_pid: int
    pid: int | None = None
    ssh_port: int | None = None
    qmp_socket: str | None = None
    console_socket: str | None = None
    console_log: str | None = None
    host_key: str | None = None
    error: str | None = None
    #: address the VM's forwarded ports listen on (reachable from the other nodes)
    address: str | None = None
    #: the batch system's name of the node (Slurm's n1, which differs from the host name
    #: when several slurmd share a host); None outside a batch job
    node: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"vm{self.rank}"

    @property
    def place(self) -> str:
        """Where the VM runs, as users name it: the node name, else the host name."""
        return self.node or self.host

    def to_json(self) -> str:
        """The record as published; free text (error, console lines) is made one line, so
        that :meth:`from_json` accepts what pcocc wrote."""
        data = asdict(self)
        if self.error is not None:
            data["error"] = fields.one_line(self.error)
        data["extra"] = {
            k: fields.one_line(v) if isinstance(v, str) else v for k, v in self.extra.items()
        }
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(
        cls, text: str | bytes, key: str | None = None, rank: int | None = None
    ) -> VmRecord:
        """Parse a VM state record read from etcd (``key`` names it in errors; ``rank``,
        the rank of its key, must be the record's).

        :raise Corrupt: naming the key and the field
        """
        return fields.parse_record("VM state record", key, text, lambda raw: _parse(raw, rank))


_REQUIRED = ("rank", "host", "status", "node_pid")
_OPTIONAL = ("pid", "ssh_port", "qmp_socket", "console_socket", "console_log", "host_key",
             "error", "address", "node", "extra")


def _parse(raw: str | bytes, rank: int | None) -> VmRecord:
    data = fields.load_object(raw)
    fields.fields_of(data, _REQUIRED, _OPTIONAL)
    f = fields
    rec = VmRecord(
        rank=f.integer(data["rank"], "rank", 0, MAX_RANK),
        host=f.hostname(data["host"], "host"),
        status=f.choice(data["status"], "status", STATUSES),
        node_pid=f.pid(data["node_pid"], "node_pid"),
        pid=f.optional(f.pid, data.get("pid"), "pid"),
        ssh_port=f.optional(f.port, data.get("ssh_port"), "ssh_port"),
        qmp_socket=f.optional(f.abs_path, data.get("qmp_socket"), "qmp_socket"),
        console_socket=f.optional(f.abs_path, data.get("console_socket"), "console_socket"),
        console_log=f.optional(f.abs_path, data.get("console_log"), "console_log"),
        host_key=f.optional(f.ssh_public_key, data.get("host_key"), "host_key"),
        error=f.optional(f.text, data.get("error"), "error"),
        address=f.optional(f.ip_address, data.get("address"), "address"),
        node=f.optional(f.hostname, data.get("node"), "node"),
        extra=_extra(data.get("extra", {})),
    )
    if rank is not None and rec.rank != rank:
        raise fields.BadField("rank", f"{rec.rank} in the record of vm{rank}")
    return rec


def _extra(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fields.BadField("extra", "expected an object")
    for k in value:
        fields.name(k, "extra key")
    return fields.plain_json(value, "extra")


def parse_forward(text: str | bytes, key: str | None = None) -> tuple[str, int]:
    """A forwarded port record (``rnat/<rank>/<guest port>``): the ``host:port`` where the
    node process forwards that guest port.

    :raise Corrupt: naming the key
    """
    return fields.parse_record("forwarded port record", key, text, _parse_forward)


def _parse_forward(raw: str | bytes) -> tuple[str, int]:
    try:
        value = raw.decode() if isinstance(raw, bytes) else raw
    except UnicodeError:
        raise fields.BadField("(value)", "not UTF-8 text") from None
    return fields.host_port(value, "(value)")
