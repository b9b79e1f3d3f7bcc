"""The value of a cluster's ``definition`` key: the definition plus the launcher's view of it.

The launcher owns this key (leased: if the launcher dies, the key vanishes and the node
processes stop their VMs) and rewrites it on every state change.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from pcocc import fields
from pcocc.cluster.definition import ClusterDefinition
from pcocc.cluster.stored import MAX_DEFINITION_BYTES, parse_definition
from pcocc.cluster.state import ClusterState


@dataclass
class ClusterRecord:
    batchid: str
    definition: ClusterDefinition
    state: ClusterState
    host: str
    launcher_pid: int
    batch: str = ""
    error: str | None = None
    #: the job's name (``-J``), by which ``pcocc ssh -J NAME`` and friends select it
    name: str = ""
    updated: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(
            {
                "batchid": self.batchid,
                "definition": json.loads(self.definition.to_json()),
                "state": self.state.value,
                "host": self.host,
                "launcher_pid": self.launcher_pid,
                "batch": self.batch,
                "name": self.name,
                "error": None if self.error is None else fields.one_line(self.error),
                "updated": self.updated,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(
        cls, text: str | bytes, key: str | None = None, batchid: str | None = None
    ) -> ClusterRecord:
        """Parse the record of a ``definition`` key (``batchid``, the batch id of that key,
        must be the record's).

        :raise Corrupt: naming the key and the field
        """
        return fields.parse_record(
            "cluster record", key, text, lambda raw: _parse(raw, batchid)
        )


_REQUIRED = ("batchid", "definition", "state", "host", "launcher_pid")
_OPTIONAL = ("batch", "error", "updated", "name")
#: longest job name kept (Slurm's own limit is larger; a longer one is cut)
MAX_NAME = 200


def _parse(raw: str | bytes, batchid: str | None) -> ClusterRecord:
    f = fields
    data = f.load_object(raw, MAX_DEFINITION_BYTES + f.MAX_RECORD_BYTES)
    f.fields_of(data, _REQUIRED, _OPTIONAL)
    if not isinstance(data["definition"], dict):
        raise f.BadField("definition", "expected an object")
    try:
        definition = parse_definition(data["definition"])
    except f.BadField as err:
        raise err.within("definition") from None
    record = ClusterRecord(
        batchid=f.job_id(data["batchid"], "batchid"),
        definition=definition,
        state=ClusterState(f.choice(data["state"], "state", [s.value for s in ClusterState])),
        host=f.hostname(data["host"], "host"),
        launcher_pid=f.pid(data["launcher_pid"], "launcher_pid"),
        batch=f.text(data.get("batch", ""), "batch", 64),
        error=f.optional(f.text, data.get("error"), "error"),
        updated=f.number(data.get("updated", 0.0), "updated", 0),
        name=f.text(data.get("name", ""), "name", MAX_NAME),
    )
    if batchid is not None and record.batchid != batchid:
        raise f.BadField("batchid", f"{record.batchid!r} in the record of cluster {batchid}")
    return record
