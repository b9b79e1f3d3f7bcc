"""How each task of a multi-node ``pcocc run`` ended, and which status the run reports.

When one task fails, srun (``--kill-on-bad-exit``) stops the others and reports 128+15 or
128+9 of whichever it saw last, not the failure. So each task records its own ending in a
small file next to the run request (in the user's state directory, which every node reads):
the status it ended with and whether a signal stopped it. The run then reports the first
task that failed on its own; tasks stopped because of it are not failures.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from pcocc.fsutil import write_atomic

#: the largest record read back (a record is about 100 bytes)
MAX_RECORD_BYTES = 4096


@dataclass(frozen=True)
class TaskEnd:
    task: int
    node: str
    #: as a shell reports it: the app's exit status, or 128+N for signal N
    status: int
    #: a signal stopped the task (srun stopping it, scancel): not a failure of its own
    signalled: bool
    #: wall-clock time of the end (nodes' clocks are assumed close)
    when: float


def ends_dir(request: Path) -> Path:
    return request.with_name(request.name + ".ends")


def record_end(request: Path, end: TaskEnd) -> None:
    d = ends_dir(request)
    d.mkdir(mode=0o700, exist_ok=True)
    write_atomic(d / f"{end.task}.json", json.dumps(asdict(end)), mode=0o600)


def parse_end(text: str) -> TaskEnd | None:
    """A record as written by :func:`record_end`; None for anything else."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or set(data) != {"task", "node", "status", "signalled",
                                                    "when"}:
        return None
    task, node, status = data["task"], data["node"], data["status"]
    signalled, when = data["signalled"], data["when"]
    ints_ok = all(type(v) is int and 0 <= v < 1 << 20 for v in (task, status))
    if not ints_ok or type(signalled) is not bool or type(when) not in (int, float):
        return None
    if not isinstance(node, str) or not node.isprintable() or len(node) > 255:
        return None
    return TaskEnd(task, node, status, signalled, float(when))


def read_ends(request: Path) -> list[TaskEnd]:
    ends = []
    for path in sorted(ends_dir(request).glob("*.json")):
        try:
            with open(path, "rb") as f:
                end = parse_end(f.read(MAX_RECORD_BYTES).decode(errors="replace"))
        except OSError:
            continue
        if end is not None:
            ends.append(end)
    return ends


def remove_ends(request: Path) -> None:
    d = ends_dir(request)
    for path in d.glob("*.json"):
        path.unlink(missing_ok=True)
    try:
        d.rmdir()
    except OSError:
        pass


def first_failure(ends: list[TaskEnd]) -> TaskEnd | None:
    """The task that failed first on its own (non-zero status, not stopped by a signal)."""
    failed = [e for e in ends if e.status != 0 and not e.signalled]
    return min(failed, key=lambda e: (e.when, e.task)) if failed else None
