"""Per-job node state that needs root, set up and torn down by the Slurm plugin.

``pcocc internal setup init|cleanup`` (run as root by slurm-plugin/ from the job's prolog and
epilog) calls :func:`init` and :func:`cleanup`. Everything created for a job is recorded
*before* it is created in ``STATE_ROOT/<jobid>/state.json`` (directories 0700 root), so that
cleanup removes exactly what the record names, also after a crash half-way through init.

The state file is JSON: ``{"version": 1, "job": <int>, "user": <str>, "uid": <int>,
"resources": [{"kind": "bridge", "name": "pcbr42"}, ...]}``. ``resources`` is ordered by
creation and removed in reverse; later kinds (tap, vxlan, dnsmasq, nftables table, etcd
allocations) are new ``kind`` values. A reader refuses a newer ``version`` or a kind it does
not know rather than guessing. Every name in the file is checked against the name the job id
gives it, so a tampered file cannot make cleanup remove another device.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from pcocc import fsutil, proc
from pcocc.errors import Corrupt, PcoccError, UsageError

STATE_ROOT = Path("/run/pcocc/jobs")
STATE_FILE = "state.json"
STATE_VERSION = 1
BRIDGE_PREFIX = "pcbr"
#: Slurm job ids are uint32; NO_VAL and friends sit at the top of the range
MAX_JOB_ID = 0xFFFFFFF0
KINDS = ("bridge",)


def parse_job_id(text: str) -> int:
    """A Slurm job id given on the command line (decimal digits only).

    :raise UsageError: not a job id
    """
    if not re.fullmatch(r"[0-9]{1,10}", text or "") or not 0 < int(text) <= MAX_JOB_ID:
        raise UsageError(f"--job {text!r}: expected a Slurm job id (a positive number)")
    return int(text)


def bridge_name(job_id: int) -> str:
    """The job's bridge on each node: ``pcbr<jobid>`` (at most 14 characters, under IFNAMSIZ)."""
    return f"{BRIDGE_PREFIX}{job_id}"


def resolve_user(user: str) -> tuple[str, int]:
    """(name, uid) of a local user given by name or numeric uid.

    :raise UsageError: no such user
    """
    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, ValueError):
        raise UsageError(f"--user {user!r}: no such user on this node") from None
    return pw.pw_name, pw.pw_uid


@dataclass
class JobState:
    """What ``init`` created on this node for one job."""

    job: int
    user: str
    uid: int
    resources: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"version": STATE_VERSION, "job": self.job, "user": self.user,
                           "uid": self.uid, "resources": self.resources}, indent=1) + "\n"

    @classmethod
    def parse(cls, text: str, job: int, where: str) -> JobState:
        """Parse and check a state file of ``job``; anything unexpected is refused.

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
        user, uid, resources = data.get("user"), data.get("uid"), data.get("resources")
        if not isinstance(user, str) or type(uid) is not int or uid < 0:
            raise bad("bad user or uid")
        if not isinstance(resources, list):
            raise bad("'resources' is not a list")
        for res in resources:
            if not isinstance(res, dict) or res.get("kind") not in KINDS:
                raise bad(f"unknown resource {res!r}")
            if res["kind"] == "bridge" and res.get("name") != bridge_name(job):
                raise bad(f"bridge {res.get('name')!r} is not the job's ({bridge_name(job)})")
        return cls(job, user, uid, list(resources))


def _require_root() -> None:
    if os.geteuid() != 0:
        raise UsageError("pcocc internal setup must run as root",
                         hint="the Slurm plugin runs it in the job's prolog and epilog")


def _private_dir(path: Path, create: bool) -> bool:
    """Check (or make) a real directory owned by root, mode 0700; False if absent."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            return False
        os.mkdir(path, 0o700)
        st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o077:
        raise PcoccError(f"{path} is not a directory private to root",
                         hint="remove it; pcocc recreates it")
    return True


def job_dir(job: int, root: Path = STATE_ROOT) -> Path:
    return root / str(job)


def _prepare_root(root: Path) -> None:
    root.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    _private_dir(root, create=True)


def read_state(job: int, root: Path = STATE_ROOT) -> JobState | None:
    """The recorded state of ``job`` on this node, or None if there is none."""
    if not _private_dir(root, create=False) or not _private_dir(job_dir(job, root), False):
        return None
    path = job_dir(job, root) / STATE_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise fsutil.os_error(err, f"read {path}") from err
    with os.fdopen(fd) as f:
        return JobState.parse(f.read(1 << 20), job, str(path))


def _link_exists(name: str) -> bool:
    return proc.run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def _remove(res: dict[str, str]) -> None:
    if res["kind"] == "bridge" and _link_exists(res["name"]):
        proc.run(["ip", "link", "delete", "dev", res["name"]], what=f"delete {res['name']}")


def init(job: int, user: str, root: Path = STATE_ROOT) -> JobState:
    """Create the job's node state (this slice: its bridge). A previous record of the same
    job is cleaned up first, so init is safe to repeat."""
    _require_root()
    name, uid = resolve_user(user)
    _prepare_root(root)
    cleanup(job, root)
    os.mkdir(job_dir(job, root), 0o700)
    state = JobState(job, name, uid, [{"kind": "bridge", "name": bridge_name(job)}])
    fsutil.write_atomic(job_dir(job, root) / STATE_FILE, state.to_json(), 0o600)
    br = bridge_name(job)
    proc.run(["ip", "link", "add", "name", br, "type", "bridge"], what=f"create bridge {br}")
    proc.run(["ip", "link", "set", "dev", br, "up"], what=f"bring up bridge {br}")
    return state


def cleanup(job: int, root: Path = STATE_ROOT) -> JobState | None:
    """Remove what the job's record names, then the record; nothing recorded: nothing done."""
    _require_root()
    state = read_state(job, root)
    if state is None:
        if _private_dir(root, create=False) and _private_dir(job_dir(job, root), False):
            try:
                os.rmdir(job_dir(job, root))
            except OSError as err:
                raise fsutil.os_error(err, f"remove {job_dir(job, root)}") from err
        return None
    for res in reversed(state.resources):
        _remove(res)
    (job_dir(job, root) / STATE_FILE).unlink()
    os.rmdir(job_dir(job, root))
    return state
