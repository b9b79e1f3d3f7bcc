"""Pod records: one directory per pod under the user's state directory.

Location: ``$XDG_STATE_HOME/pcocc/pods`` (default ``~/.local/state/pcocc/pods``): pods outlive
a reboot so that their status and logs stay readable until ``gc``. Per pod::

    <uuid>/pod.json           the record (written atomically)
    <uuid>/apps/<app>/        the app's OCI bundle (config.json) and its ``log``
    <uuid>/apps/<app>/layer/  what the app wrote in its root (:mod:`pcocc.ctr.rootlayer`)
    <uuid>/volumes/<name>/    ``kind=empty`` volumes, shared by the pod's apps

States: ``prepared`` (created, not started), ``running``, ``exited``, ``garbage`` (exited
for longer than a gc grace period; removed by a later gc after another grace period).
A pod recorded as running whose supervisor process is gone (pid reused, other boot) is
reported as ``exited``.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pcocc import paths
from pcocc.ctr import host
from pcocc.errors import Corrupt, NotFound, PcoccError, TimedOut, UsageError
from pcocc.fsutil import remove_tree, write_atomic
from pcocc.randid import new_uuid

RECORD_VERSION = 1
STATES = ("prepared", "running", "exited", "garbage")


def pods_dir() -> Path:
    return paths.state_dir() / "pods"


def write_record(path: Path, text: str) -> None:
    """Replace a pod record atomically: tmp file, fsync of the file, rename; no directory
    fsync (``sync_dir=False``), which ``pcocc run`` would pay twice.

    Readers never see half a record. A power loss can only undo the last rename, leaving the
    previous record or none: a pod cannot outlive a reboot, a record of another boot reads as
    exited, and ``gc`` removes a pod directory without a record. The file itself is synced
    so that the record kept is never an empty file.
    """
    write_atomic(path, text, 0o600, sync_dir=False)


def process_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


@dataclass
class AppRecord:
    name: str
    image: str
    args: list[str]
    container_id: str = ""
    exit_status: int | None = None
    #: pid of the runtime process that runs the app (crun/runc/unshare), and its start time
    pid: int | None = None
    pid_start: int | None = None
    #: the repository image it ran, as REPO:NAME@REVISION ("" for a directory), for
    #: ``pod export`` (a revision never changes; no ID is hashed on the hot path)
    image_ref: str = ""
    #: ran on a writable layer of its own (:mod:`pcocc.ctr.rootlayer`)
    layer: bool = False


@dataclass
class PodRecord:
    uuid: str
    state: str = "prepared"
    node: str = field(default_factory=lambda: os.uname().nodename)
    boot_id: str = ""
    runtime: str = ""
    hostname: str = ""
    pid: int | None = None
    pid_start: int | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    exited: float | None = None
    garbage_since: float | None = None
    #: started by ``pcocc run --detach``: its supervisor runs in a session of its own
    detached: bool = False
    apps: list[AppRecord] = field(default_factory=list)
    version: int = RECORD_VERSION
    #: a multi-node pod (:mod:`pcocc.ctr.podgroup`): its job, and per task the node and
    #: the UUID of the pod that runs there (a member); ``pid`` is the group's supervisor
    job_id: str = ""
    nodes: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    #: a member: the UUID of its multi-node pod, and the batch node it runs on
    group: str = ""
    task_node: str = ""

    @property
    def short_id(self) -> str:
        return self.uuid[:8]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> PodRecord:
        if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
            raise Corrupt(f"{where}: not a pod record of version {RECORD_VERSION}")
        try:
            apps = [AppRecord(**a) for a in data.get("apps", [])]
            fields = {k: v for k, v in data.items() if k != "apps"}
            rec = cls(**fields, apps=apps)
        except TypeError as err:
            raise Corrupt(f"{where}: bad pod record: {err}") from err
        if rec.state not in STATES:
            raise Corrupt(f"{where}: unknown pod state '{rec.state}'")
        _check_group_fields(rec, where)
        return rec

    def is_alive(self) -> bool:
        """Is the supervisor process of this pod still running (same boot, same process)?"""
        if self.pid is None or self.boot_id != host.boot_id():
            return False
        if self.node != os.uname().nodename:
            return True  # cannot tell from here; trust the record
        return process_start_ticks(self.pid) == self.pid_start


_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_JOB_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _check_group_fields(rec: PodRecord, where: str) -> None:
    """The fields of a multi-node pod reach srun's argv (``pcocc pod stop``): accept only
    plain node names, job ids and UUIDs."""
    def bad(what: str) -> Corrupt:
        return Corrupt(f"{where}: bad pod record: {what}")

    if not isinstance(rec.nodes, list) or not isinstance(rec.members, list):
        raise bad("nodes and members must be lists")
    if len(rec.nodes) != len(rec.members):
        raise bad("as many members as nodes are needed")
    for name, value, regex in (
        *(("node", n, _NODE_RE) for n in rec.nodes),
        *(("member", m, _UUID_RE) for m in rec.members),
        ("job id", rec.job_id, _JOB_RE),
        ("group", rec.group, _UUID_RE),
        ("task node", rec.task_node, _NODE_RE),
    ):
        if not isinstance(value, str) or (value and not regex.fullmatch(value)):
            raise bad(f"invalid {name} {value!r}")
    if rec.nodes and not (rec.job_id and _UUID_RE.fullmatch(rec.uuid)):
        raise bad("a multi-node pod needs a job id and a plain UUID")


class PodStore:
    """The pods of the current user."""

    def __init__(self, root: Path | None = None):
        self.root = root or pods_dir()

    def pod_dir(self, uuid: str) -> Path:
        return self.root / uuid

    def app_dir(self, uuid: str, app: str) -> Path:
        return self.root / uuid / "apps" / app

    def log_path(self, uuid: str, app: str) -> Path:
        return self.app_dir(uuid, app) / "log"

    def create(self, apps: list[AppRecord], *, save: bool = True, **fields: Any) -> PodRecord:
        """A new pod directory; ``save=False`` leaves writing the record to the caller."""
        rec = PodRecord(uuid=new_uuid(), apps=apps, boot_id=host.boot_id(), **fields)
        d = self.pod_dir(rec.uuid)
        if self.root == pods_dir():
            paths.private_dir(paths.state_dir(), what="state directory")
        paths.private_dir(self.root, what="pod directory")
        d.mkdir(mode=0o700)
        for app in apps:
            self.app_dir(rec.uuid, app.name).mkdir(parents=True)
        if save:
            self.save(rec)
        return rec

    def save(self, rec: PodRecord) -> None:
        write_record(self.pod_dir(rec.uuid) / "pod.json", json.dumps(rec.to_json(), indent=1))

    def load(self, uuid: str) -> PodRecord:
        path = self.pod_dir(uuid) / "pod.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise NotFound(f"pod '{uuid}' not found") from None
        except ValueError as err:
            raise Corrupt(f"{path}: invalid JSON: {err}") from err
        return self.refresh(PodRecord.from_json(data, str(path)))

    def refresh(self, rec: PodRecord) -> PodRecord:
        """Report a running pod whose supervisor died as exited (not saved)."""
        if rec.state == "running" and not rec.is_alive():
            rec.state = "exited"
            if rec.exited is None:
                rec.exited = rec.started or rec.created
        elif rec.state == "prepared" and rec.pid is not None and not rec.is_alive():
            rec.state = "exited"
            rec.exited = rec.exited or rec.created
        return rec

    def uuids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    def list(self) -> Iterator[PodRecord]:
        """All readable pods, oldest first; unreadable ones are skipped."""
        recs = []
        for u in self.uuids():
            try:
                recs.append(self.load(u))
            except (NotFound, Corrupt):
                continue
        yield from sorted(recs, key=lambda r: r.created)

    def resolve(self, prefix: str) -> PodRecord:
        """The pod whose UUID starts with ``prefix``.

        :raise NotFound: none; :raise UsageError: several
        """
        if not prefix:
            raise UsageError("a pod UUID (or a prefix of it) is required")
        matches = [u for u in self.uuids() if u.startswith(prefix)]
        if not matches:
            raise NotFound(f"no pod with UUID '{prefix}'", hint="see 'pcocc pod list'")
        if len(matches) > 1:
            raise UsageError(
                f"pod UUID prefix '{prefix}' is ambiguous: {len(matches)} pods match: "
                + ", ".join(matches),
                hint="give more characters of the UUID",
            )
        return self.load(matches[0])

    def resolve_all(self, prefixes: list[str]) -> list[PodRecord]:
        """:meth:`resolve` each prefix; fails before returning any if one does not resolve,
        so that a command on several pods changes none on a typo."""
        recs = [self.resolve(p) for p in prefixes]
        seen: set[str] = set()
        for prefix, rec in zip(prefixes, recs):
            if rec.uuid in seen:
                raise UsageError(f"pod {rec.uuid} is given twice (as '{prefix}')")
            seen.add(rec.uuid)
        return recs

    def wait(self, rec: PodRecord, timeout_s: float | None = None) -> PodRecord:
        """Wait until the pod is no longer running."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay = 0.02
        while rec.state == "running" or (rec.state == "prepared" and rec.pid is not None):
            if deadline is not None and time.monotonic() > deadline:
                raise TimedOut(f"pod {rec.uuid} still running after {timeout_s:g} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
            rec = self.load(rec.uuid)
        return rec

    def remove(self, rec: PodRecord) -> None:
        if rec.state in ("running",) or (rec.state == "prepared" and rec.is_alive()):
            raise PcoccError(
                f"pod {rec.uuid} is {rec.state}",
                hint="wait for it to exit ('pcocc pod status --wait')",
            )
        d = self.pod_dir(rec.uuid)
        trash = d.with_name(f".{rec.uuid}.removing")
        os.replace(d, trash)  # atomic: the pod disappears at once, then is deleted
        remove_tree(trash)  # an app's layer may hold directories it made read-only

    def gc(self, grace_period_s: float, now: float | None = None) -> list[tuple[str, str]]:
        """One gc pass: exited pods -> garbage, garbage older than the grace -> removed.

        A pod exited for at least the grace period becomes garbage; a pod garbage for at least
        the grace period is removed (so a pod lives at least twice the grace period).
        Returns (action, uuid) with action ``garbage`` or ``removed``.
        """
        now = time.time() if now is None else now
        import shutil

        done: list[tuple[str, str]] = []
        for stale in self.root.glob(".*.removing") if self.root.is_dir() else []:
            remove_tree(stale)
        for uuid in self.uuids():  # a run that died before its first record
            d = self.pod_dir(uuid)
            try:
                age_s = now - d.stat().st_mtime
                # a minute at least: a run being started has no record yet either
                if not (d / "pod.json").exists() and age_s >= max(grace_period_s, 60.0):
                    shutil.rmtree(d, ignore_errors=True)
            except FileNotFoundError:
                continue
        for rec in self.list():
            if rec.state == "garbage":
                if now - (rec.garbage_since or now) >= grace_period_s:
                    cleanup_containers(rec)
                    self.remove(rec)
                    done.append(("removed", rec.uuid))
            elif rec.state == "exited":
                if now - (rec.exited or rec.created) >= grace_period_s:
                    rec.state = "garbage"
                    rec.garbage_since = now
                    self.save(rec)
                    done.append(("garbage", rec.uuid))
            elif (
                rec.state == "prepared"
                and rec.pid is None
                and not rec.started
                and now - rec.created >= grace_period_s
            ):
                # abandoned while being prepared: collect it like an exited pod
                rec.state, rec.exited = "exited", now
                self.save(rec)
        return done


def cleanup_containers(rec: PodRecord) -> None:
    """Stop what a crashed supervisor left behind: runtime processes, container states."""
    if rec.node != os.uname().nodename or rec.boot_id != host.boot_id():
        return
    import signal

    for app in rec.apps:
        # the same process (pid and start time) as recorded: it is still ours
        if app.pid and app.pid_start and process_start_ticks(app.pid) == app.pid_start:
            try:
                if os.getpgid(app.pid) == app.pid:  # spawned in its own session
                    os.killpg(app.pid, signal.SIGKILL)
                else:
                    os.kill(app.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    if rec.runtime not in ("crun", "runc"):
        return
    from pcocc.ctr.probe import get_runtime

    # crun and runc keep a state directory per container under their --root
    left = [
        a
        for a in rec.apps
        if a.container_id and (paths.runtime_dir() / rec.runtime / a.container_id).exists()
    ]
    if not left:
        return
    try:
        rt = get_runtime(rec.runtime)
    except PcoccError:
        return
    for app in left:
        rt.cleanup(app.container_id)


def parse_duration(text: str) -> float:
    """``30m``, ``1h30m0s``, ``0s``, ``500ms``, ``90`` (seconds) -> seconds."""
    import re

    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s|d)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise UsageError(f"invalid duration '{text}'", hint="use e.g. 30m, 1h30m, 10s or 0s")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * scale[u] for n, u in parts)
