"""The state record each node process publishes for its VM (leased etcd key)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pcocc.errors import Corrupt

BOOTING = "booting"
RUNNING = "running"
FAILED = "failed"
STOPPED = "stopped"
STATUSES = (BOOTING, RUNNING, FAILED, STOPPED)


#: key of a VM record's ``extra``: why the VM runs under TCG though ``auto`` was asked (the
#: launcher says it once for the cluster)
ACCEL_NOTE = "accel_note"
#: key of a VM record's ``extra``: the number of the signal that stopped its node process
#: (the job was cancelled or timed out), as opposed to a failure
SIGNAL_NOTE = "signal"

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
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VmRecord:
        try:
            data = json.loads(text)
            rec = cls(**data)
        except (ValueError, TypeError) as err:
            raise Corrupt(f"invalid VM state record: {err}") from err
        if rec.status not in STATUSES or not isinstance(rec.rank, int):
            raise Corrupt(f"invalid VM state record: status {rec.status!r}")
        return rec
