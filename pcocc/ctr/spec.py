"""Build the OCI runtime configuration (config.json) of one container. Pure: no I/O.

The container is rootless-shaped even when the caller is root: a user namespace maps the
caller's uid/gid to themselves (or to root in the container when asked), no new privileges,
a minimal capability set and the default seccomp profile of :mod:`pcocc.ctr.seccomp`.
``insecure`` relaxes exactly what it names: ``capabilities`` (all capabilities),
``paths`` (no masked or read-only /proc and /sys paths), ``seccomp`` (no profile).

Runtime quirks (cgroups, wrappers, runc's need for a root mapping) are not handled here but
in the backends of :mod:`pcocc.ctr.runtimes`, which adapt this spec.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pcocc.ctr import seccomp
from pcocc.ctr.volumes import Mount
from pcocc.errors import UsageError

OCI_VERSION = "1.0.2"

INSECURE_OPTIONS = ("capabilities", "paths", "seccomp")

#: Capabilities a container keeps by default (they only matter for root in the container).
DEFAULT_CAPABILITIES = ("CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE")

#: Every capability, granted by ``--insecure-options=capabilities`` (namespaced: they give
#: no power outside the container's user namespace).
ALL_CAPABILITIES = (
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_READ",
    "CAP_AUDIT_WRITE",
    "CAP_BLOCK_SUSPEND",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_KILL",
    "CAP_LEASE",
    "CAP_LINUX_IMMUTABLE",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_MKNOD",
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_RAW",
    "CAP_PERFMON",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_CHROOT",
    "CAP_SYS_MODULE",
    "CAP_SYS_NICE",
    "CAP_SYS_PACCT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
)

MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Identity:
    """Who the application runs as: the caller, or root of the container if ``as_root``."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    as_root: bool = False

    @property
    def container_uid(self) -> int:
        return 0 if self.as_root else self.uid

    @property
    def container_gid(self) -> int:
        return 0 if self.as_root else self.gid


@dataclass(frozen=True)
class SpecRequest:
    """Everything that decides a container's config.json."""

    rootfs: str
    args: Sequence[str]
    env: Mapping[str, str]
    identity: Identity
    cwd: str = "/"
    hostname: str = "pcocc"
    mounts: Sequence[Mount] = ()
    private_net: bool = False
    insecure: frozenset[str] = field(default_factory=frozenset)
    terminal: bool = False
    readonly_rootfs: bool = True


def parse_insecure_options(values: Sequence[str]) -> frozenset[str]:
    """``--insecure-options`` values (repeatable and comma separated) -> a checked set."""
    out: set[str] = set()
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            if item == "all":
                out.update(INSECURE_OPTIONS)
            elif item not in INSECURE_OPTIONS:
                raise UsageError(
                    f"--insecure-options: unknown value '{item}'",
                    hint=f"choose among {', '.join(INSECURE_OPTIONS)} (or 'all')",
                )
            else:
                out.add(item)
    return frozenset(out)


def app_args(image_config: Mapping[str, Any], args: Sequence[str], image: str) -> list[str]:
    """The command line of an app: Entrypoint, then the user's args or else the image's Cmd."""
    entrypoint = list(image_config.get("Entrypoint") or [])
    cmd = list(args) if args else list(image_config.get("Cmd") or [])
    argv = entrypoint + cmd
    if not argv:
        raise UsageError(
            f"image '{image}' defines no command and none was given",
            hint=f"give one: pcocc run {image} -- COMMAND [ARGS]",
        )
    return argv


def build_spec(req: SpecRequest) -> dict[str, Any]:
    """The OCI runtime config.json of ``req`` as a dict."""
    ident = req.identity
    caps = list(ALL_CAPABILITIES if "capabilities" in req.insecure else DEFAULT_CAPABILITIES)
    env = dict(req.env)
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOSTNAME", req.hostname)
    process: dict[str, Any] = {
        "terminal": req.terminal,
        "user": {"uid": ident.container_uid, "gid": ident.container_gid},
        "args": list(req.args),
        "env": [f"{k}={v}" for k, v in env.items()],
        "cwd": req.cwd or "/",
        "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
        "noNewPrivileges": True,
    }
    if ident.groups and not ident.as_root:
        extra = [g for g in ident.groups if g != ident.gid]
        if extra:
            process["user"]["additionalGids"] = extra
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "user")]
    if req.private_net:
        namespaces.append({"type": "network"})
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "uidMappings": [{"containerID": ident.container_uid, "hostID": ident.uid, "size": 1}],
        "gidMappings": [{"containerID": ident.container_gid, "hostID": ident.gid, "size": 1}],
    }
    if "paths" not in req.insecure:
        linux["maskedPaths"] = list(MASKED_PATHS)
        linux["readonlyPaths"] = list(READONLY_PATHS)
    if "seccomp" not in req.insecure:
        linux["seccomp"] = seccomp.default_profile()
    return {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": req.rootfs, "readonly": req.readonly_rootfs},
        "hostname": req.hostname,
        "mounts": base_mounts(req.private_net) + [oci_mount(m) for m in req.mounts],
        "linux": linux,
    }


def base_mounts(private_net: bool) -> list[dict[str, Any]]:
    """/proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys and a private /tmp.

    sysfs can only be mounted by the owner of the network namespace: with the host network,
    /sys is a read-only bind of the host's.
    """
    nosuid = ["nosuid", "noexec", "nodev"]
    sys_mount: dict[str, Any]
    if private_net:
        sys_mount = {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": [*nosuid, "ro"],
        }
    else:
        sys_mount = {
            "destination": "/sys",
            "type": "bind",
            "source": "/sys",
            "options": ["rbind", *nosuid, "ro"],
        }
    return [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": nosuid},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": [*nosuid, "mode=1777", "size=65536k"],
        },
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": nosuid},
        sys_mount,
        {
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777"],
        },
    ]


def oci_mount(m: Mount) -> dict[str, Any]:
    """An OCI ``mounts`` entry for a volume mount (a bind of a host path)."""
    opts = ["rbind", "nosuid", "nodev", "ro" if m.readonly else "rw"]
    return {"destination": m.target, "type": "bind", "source": m.source, "options": opts}
