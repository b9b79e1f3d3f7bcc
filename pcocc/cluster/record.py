"""The value of a cluster's ``definition`` key: the definition plus the launcher's view of it.

The launcher owns this key (leased: if the launcher dies, the key vanishes and the node
processes stop their VMs) and rewrites it on every state change.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from pcocc.cluster.definition import ClusterDefinition
from pcocc.cluster.state import ClusterState
from pcocc.errors import Corrupt


@dataclass
class ClusterRecord:
    batchid: str
    definition: ClusterDefinition
    state: ClusterState
    host: str
    launcher_pid: int
    batch: str = ""
    error: str | None = None
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
                "error": self.error,
                "updated": self.updated,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> ClusterRecord:
        try:
            data = json.loads(text)
            return cls(
                batchid=str(data["batchid"]),
                definition=ClusterDefinition.from_json(json.dumps(data["definition"])),
                state=ClusterState(data["state"]),
                host=str(data["host"]),
                launcher_pid=int(data["launcher_pid"]),
                batch=str(data.get("batch", "")),
                error=data.get("error"),
                updated=float(data.get("updated", 0.0)),
            )
        except Corrupt:
            raise
        except (ValueError, TypeError, KeyError) as err:
            raise Corrupt(f"invalid cluster record: {err}") from err
