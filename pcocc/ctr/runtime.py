"""Container runtime backends, and the one place that knows the quirks of the host.

Backends by name: ``crun`` (preferred), ``runc``, ``unshare`` (util-linux ``unshare`` plus a
small Python stage 2, :mod:`pcocc.ctr.nsinit`, when no OCI runtime works) and ``vm`` (each
app in a small QEMU VM, :mod:`pcocc.ctr.vmrun`; only when asked for by name). ``auto``
takes the first usable one in :data:`AUTO_ORDER`.

Whether a backend works is found by running a real container (``true`` from the host's
/usr, bound read-only) once per boot and per user; the result is cached in
``<runtime dir>/probe-<boot id>.json``. Quirks handled here, only when detected:

- hybrid cgroups (v1 controllers, v2 at /sys/fs/cgroup/unified): crun refuses them. It then
  runs inside a private mount namespace where the v2 tree is bound over /sys/fs/cgroup, with
  ``--cgroup-manager=disabled`` (the spec carries no ``linux.resources``). Rootless, that
  namespace is a user namespace too, so the spec's host ids are rewritten relative to it.
- runc rootless needs root mapped in the container: the app then runs as root of its user
  namespace (the caller on the host).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from pcocc import paths, proc
from pcocc.errors import ConfigError, PcoccError, ToolMissing

log = logging.getLogger(__name__)

AUTO_ORDER = ("crun", "runc", "unshare")
CGROUP_ROOT = "/sys/fs/cgroup"
PROBE_FORMAT = 1


class RuntimeUnusable(PcoccError):
    """A runtime is installed but cannot run containers on this host."""


def runtime_dir() -> Path:
    """The caller's private runtime directory: $XDG_RUNTIME_DIR/pcocc or /tmp/pcocc-<uid>
    (policy and checks in :mod:`pcocc.paths`)."""
    return paths.runtime_dir()


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def is_rootless() -> bool:
    return os.geteuid() != 0


def cgroup_layout(mountinfo: str | None = None) -> str:
    """``unified``, ``hybrid`` (v1 + v2 at .../unified), ``legacy`` or ``none``."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return "none"
    types: dict[str, str] = {}
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        if len(fields) >= 5:
            types[fields[4]] = right.split()[0]
    root = types.get(CGROUP_ROOT)
    if root == "cgroup2":
        return "unified"
    if root is None:
        return "none"
    if types.get(f"{CGROUP_ROOT}/unified") == "cgroup2":
        return "hybrid"
    return "legacy"


class Runtime(ABC):
    """One way of running OCI bundles."""

    name: ClassVar[str]
    binary: ClassVar[str | None] = None
    #: whether probing runs a real container (False: installed means usable)
    probe_runs_container: ClassVar[bool] = True

    def __init__(self, mode: Mapping[str, Any] | None = None):
        #: what the probe found (e.g. {"wrap": "unified-bind"}); empty before probing
        self.mode: dict[str, Any] = dict(mode or {})

    # -- availability -------------------------------------------------------------------
    def check_installed(self) -> None:
        """:raise ToolMissing: the backend's programs are not installed"""
        if self.binary:
            proc.which(self.binary)

    def candidate_modes(self) -> list[dict[str, Any]]:
        return [{}]

    # -- what a backend implements ------------------------------------------------------
    def adapt_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The spec this backend needs, given the quirks found by the probe."""
        return spec

    @abstractmethod
    def run_argv(self, bundle: Path, container_id: str) -> list[str]:
        """Run the container in the foreground; exits with the app's status."""

    @abstractmethod
    def exec_argv(
        self,
        container_id: str,
        argv: Sequence[str],
        *,
        record: Mapping[str, Any],
        tty: bool = False,
    ) -> tuple[list[str], dict[str, str] | None]:
        """argv (and env, or None to inherit) that runs ``argv`` inside a running container."""

    def cleanup(self, container_id: str) -> None:
        """Forget a container that is gone (best effort)."""

    def namespace_holder(self, container_id: str, popen: subprocess.Popen) -> int | None:
        """A pid whose namespaces the next apps of the pod may join, or None (no sharing)."""
        return None

    def kill(self, container_id: str, popen: subprocess.Popen | None) -> None:
        if popen is not None:
            proc.kill_group(popen)


class OciRuntime(Runtime):
    """crun and runc: same command line, different quirks."""

    def state_root(self) -> Path:
        return runtime_dir() / self.name

    def wrapper(self) -> list[str]:
        if self.mode.get("wrap") != "unified-bind":
            return []
        userns = ["--user", "--map-root-user"] if is_rootless() else []
        script = 'mount --bind "$0" /sys/fs/cgroup && exec "$@"'
        return [
            proc.which("unshare"),
            *userns,
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            script,
            f"{CGROUP_ROOT}/unified",
        ]

    def global_args(self) -> list[str]:
        args = [proc.which(self.binary or self.name), "--root", str(self.state_root())]
        if self.mode.get("wrap") == "unified-bind":
            args.append("--cgroup-manager=disabled")
        return args

    def adapt_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        spec = copy.deepcopy(spec)
        linux = spec.setdefault("linux", {})
        linux.pop("resources", None)  # device filters need RLIMIT_MEMLOCK, cgroups vary
        if self.mode.get("wrap") == "unified-bind" and is_rootless():
            # The wrapper's user namespace maps the caller to 0: host ids are relative to it.
            for key in ("uidMappings", "gidMappings"):
                for m in linux.get(key, []):
                    m["hostID"] = 0
        return spec

    def run_argv(self, bundle: Path, container_id: str) -> list[str]:
        return [*self.wrapper(), *self.global_args(), "run", "--bundle", str(bundle), container_id]

    def exec_argv(self, container_id, argv, *, record, tty=False):
        if self.mode.get("wrap") == "unified-bind" and is_rootless():
            # The container's ids are relative to the wrapper's user namespace, which crun
            # exec cannot recreate: join the container's namespaces directly.
            return nsenter_argv(self.container_pid(container_id), Path(record["bundle"]), argv)

        return [
            *self.wrapper(),
            *self.global_args(),
            "exec",
            *(["--tty"] if tty else []),
            container_id,
            *argv,
        ], None

    def namespace_holder(self, container_id: str, popen: subprocess.Popen) -> int | None:
        if self.mode.get("wrap") == "unified-bind" and is_rootless():
            return None  # each app's wrapper is its own user namespace: nothing to join
        deadline = time.monotonic() + 10.0
        while popen.poll() is None and time.monotonic() < deadline:
            try:
                return self.container_pid(container_id)
            except PcoccError:
                time.sleep(0.01)  # not created yet
        return None

    def container_pid(self, container_id: str) -> int:
        res = proc.run(
            [*self.global_args(), "state", container_id],
            what=f"{self.name} state {container_id}",
            timeout_s=10,
        )
        try:
            return int(json.loads(res.stdout)["pid"])
        except (ValueError, KeyError, TypeError) as err:
            raise PcoccError(f"{self.name} state {container_id}: no pid in its output") from err

    def cleanup(self, container_id: str) -> None:
        argv = [*self.wrapper(), *self.global_args(), "delete", "--force", container_id]
        proc.run(argv, check=False, timeout_s=10)

    def kill(self, container_id: str, popen: subprocess.Popen | None) -> None:
        argv = [*self.wrapper(), *self.global_args(), "kill", container_id, "KILL"]
        proc.run(argv, check=False, timeout_s=10)
        super().kill(container_id, popen)


class Crun(OciRuntime):
    name = "crun"
    binary = "crun"

    def candidate_modes(self) -> list[dict[str, Any]]:
        modes: list[dict[str, Any]] = [{}]
        if cgroup_layout() == "hybrid":
            modes.append({"wrap": "unified-bind"})
        return modes


class Runc(OciRuntime):
    name = "runc"
    binary = "runc"

    def adapt_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        spec = super().adapt_spec(spec)
        if is_rootless():
            # runc refuses a user namespace without root mapped; map root to the caller.
            linux = spec["linux"]
            for key in ("uidMappings", "gidMappings"):
                for m in linux.get(key, []):
                    m["containerID"] = 0
            spec["process"]["user"] = {"uid": 0, "gid": 0}
        return spec


class Unshare(Runtime):
    """util-linux ``unshare`` + :mod:`pcocc.ctr.nsinit`: no seccomp, no capability bounds."""

    name = "unshare"
    binary = "unshare"

    def run_argv(self, bundle: Path, container_id: str) -> list[str]:
        spec = json.loads((bundle / "config.json").read_text())
        ns_types = {n["type"] for n in spec.get("linux", {}).get("namespaces", [])}
        argv = [
            proc.which("unshare"),
            "--user",
            "--map-root-user",
            "--mount",
            "--uts",
            "--ipc",
            "--pid",
            "--fork",
            "--kill-child",
        ]
        if "network" in ns_types:
            argv.append("--net")
        nsinit = Path(__file__).with_name("nsinit.py")
        return [*argv, "--", sys.executable, "-I", "-S", str(nsinit), str(bundle / "config.json")]

    def exec_argv(self, container_id, argv, *, record, tty=False):
        pid = record.get("init_pid")
        if not pid:
            raise PcoccError(f"container {container_id} has no known process to enter")
        # The namespaces belong to the user namespace unshare made (where we are root); the
        # app may sit in a nested one for its uid, which nsenter cannot join on top. So the
        # command runs as root of the container (the caller on the host).
        return nsenter_argv(pid, Path(record["bundle"]), argv, userns_pid=record.get("runtime_pid"))

    @staticmethod
    def init_pid(unshare_pid: int) -> int | None:
        """The container's first process: the child that ``unshare --fork`` started."""
        try:
            kids = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
        except OSError:
            return None
        return int(kids[0]) if kids else None


#: namespaces the apps of a pod share (the pid and mount namespaces stay per app)
SHARED_NAMESPACES = {"user": "user", "ipc": "ipc", "uts": "uts", "network": "net"}


def join_namespaces(spec: dict[str, Any], paths: Mapping[str, str]) -> dict[str, Any]:
    """``spec`` joining the namespaces in ``paths`` (OCI type -> namespace file)."""
    spec = copy.deepcopy(spec)
    for ns in spec.get("linux", {}).get("namespaces", []):
        if ns["type"] in paths:
            ns["path"] = paths[ns["type"]]
    return spec


def nsenter_argv(
    pid: int,
    bundle: Path,
    argv: Sequence[str],
    *,
    userns_pid: int | None = None,
    ids: tuple[int, int] | None = None,
) -> tuple[list[str], dict]:
    """Join the namespaces of ``pid`` (not its cgroup one) with the app's env.

    :param userns_pid: take the user namespace of this process instead of ``pid``'s
    :param ids: (uid, gid) to switch to; None keeps our own (mapped) credentials
    """
    spec = json.loads((bundle / "config.json").read_text())
    env = dict(e.split("=", 1) for e in spec["process"].get("env", []) if "=" in e)
    private = {n["type"] for n in spec.get("linux", {}).get("namespaces", [])}
    # Joining a namespace we already share with the container (the host network) would
    # need privileges over the host's: skip it.
    flags = {"mount": "--mount", "uts": "--uts", "ipc": "--ipc", "pid": "--pid", "network": "--net"}
    user = f"--user=/proc/{userns_pid}/ns/user" if userns_pid else "--user"
    creds = (
        ["--setuid", str(ids[0]), "--setgid", str(ids[1])] if ids else ["--preserve-credentials"]
    )
    nsenter = [
        proc.which("nsenter"),
        "-t",
        str(pid),
        user,
        *(flag for ns, flag in flags.items() if ns in private),
        "--root",
        "--wd",
        *creds,
    ]
    return [*nsenter, *argv], env


class VmRuntime(Runtime):
    """Each app in its own small QEMU VM booted from the host's cloud kernel.

    The work is done by :mod:`pcocc.ctr.vmrun` (host side) and :mod:`pcocc.vm.stage1`
    (guest side). Never chosen by ``auto``; ``pcocc pod enter`` is not supported.
    """

    name = "vm"
    binary = "qemu-system-x86_64"
    probe_runs_container = False

    def check_installed(self) -> None:
        """:raise ToolMissing: QEMU or mksquashfs missing
        :raise PcoccError: no cloud kernel or no static busybox"""
        from pcocc.ctr.vmrun import find_static_busybox
        from pcocc.vm.initramfs import find_kernel

        proc.which("qemu-system-x86_64")
        proc.which("mksquashfs")
        find_kernel()
        find_static_busybox()

    def adapt_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Check now what the VM cannot do, before the pod starts: writable file volumes,
        and writable directory volumes when virtiofsd cannot share them here.

        :raise UsageError: naming the volume or the environment entry
        :raise ToolMissing: virtiofsd (or newuidmap for a user) is needed and missing
        """
        from pcocc.ctr.vmrun import bind_volumes
        from pcocc.vm import virtiofs
        from pcocc.vm.stage1 import guest_app

        if any(not readonly for _, _, readonly in bind_volumes(spec)):
            virtiofs.find_virtiofsd()
            virtiofs.check_unprivileged()
        guest_app(spec.get("process") or {})
        return spec

    def run_argv(self, bundle: Path, container_id: str) -> list[str]:
        return [sys.executable, "-I", "-m", "pcocc.ctr.vmrun", str(bundle), container_id]

    def kill(self, container_id: str, popen: subprocess.Popen | None) -> None:
        """SIGTERM first: the host side then stops QEMU and removes its files."""
        if popen is None:
            return
        proc.kill_group(popen, signal.SIGTERM)
        try:
            popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill_group(popen)

    def exec_argv(self, container_id, argv, *, record, tty=False):
        raise PcoccError(
            "apps of the 'vm' container runtime cannot be entered",
            hint="run the command as the app itself: pcocc run --runtime vm IMAGE -- COMMAND",
        )


RUNTIMES: dict[str, type[Runtime]] = {cls.name: cls for cls in (Crun, Runc, Unshare, VmRuntime)}


# -- probing ------------------------------------------------------------------------------
def probe_cache_path() -> Path:
    return runtime_dir() / f"probe-{boot_id()}.json"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != PROBE_FORMAT:
        return {}
    return data


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    from pcocc.fsutil import write_atomic

    write_atomic(path, json.dumps(data, indent=1, sort_keys=True), mode=0o600)


def probe_bundle(dest: Path) -> Path:
    """A bundle that runs the host's ``true`` from host directories bound read-only."""
    from pcocc.ctr.spec import Identity, SpecRequest, build_spec
    from pcocc.ctr.volumes import Mount

    rootfs = dest / "rootfs"
    rootfs.mkdir(parents=True)
    mounts = []
    for d in ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32"):
        if os.path.isdir(d):
            mounts.append(Mount(os.path.realpath(d), d, readonly=True))
    import shutil

    true = shutil.which("true") or "/bin/true"
    req = SpecRequest(
        rootfs=str(rootfs),
        args=[true],
        env={},
        mounts=mounts,
        hostname="pcocc-probe",
        identity=Identity(os.getuid(), os.getgid()),
    )
    (dest / "config.json").write_text(json.dumps(build_spec(req)))
    return dest


def try_mode(cls: type[Runtime], mode: dict[str, Any]) -> str | None:
    """Run the probe container with ``cls`` in ``mode``: None if it worked, else why not."""
    import tempfile

    rt = cls(mode)
    with tempfile.TemporaryDirectory(prefix="probe-", dir=runtime_dir()) as tmp:
        bundle = probe_bundle(Path(tmp) / "bundle")
        spec = json.loads((bundle / "config.json").read_text())
        (bundle / "config.json").write_text(json.dumps(rt.adapt_spec(spec)))
        cid = f"pcocc-probe-{os.getpid()}"
        try:
            res = proc.run(rt.run_argv(bundle, cid), check=False, timeout_s=30)
        except PcoccError as err:
            return str(err)
        finally:
            if isinstance(rt, OciRuntime):
                rt.cleanup(cid)
    if res.returncode == 0:
        return None
    from pcocc.errors import stderr_tail

    return stderr_tail(res.stderr) or f"exit status {res.returncode}"


def probe(name: str, *, refresh: bool = False) -> Runtime:
    """The runtime ``name`` in a mode that works here (cached per boot).

    :raise ToolMissing: not installed
    :raise RuntimeUnusable: installed, but no mode runs a container on this host
    """
    cls = RUNTIMES[name]
    rt = cls()
    rt.check_installed()
    if not rt.probe_runs_container:
        return rt
    path = probe_cache_path()
    cache = _read_cache(path)
    key = f"{name}:{os.geteuid()}"
    entry = None if refresh else cache.get("runtimes", {}).get(key)
    if entry is None:
        reasons = []
        entry = {"usable": False}
        for mode in rt.candidate_modes():
            why = try_mode(cls, mode)
            log.debug("probe %s %s: %s", name, mode, why or "ok")
            if why is None:
                entry = {"usable": True, "mode": mode}
                break
            reasons.append(why)
        if not entry["usable"]:
            entry["reason"] = reasons[-1] if reasons else "unknown"
        cache.setdefault("runtimes", {})[key] = entry
        cache["format"] = PROBE_FORMAT
        _write_cache(path, cache)
    if not entry["usable"]:
        raise RuntimeUnusable(
            f"container runtime '{name}' does not work on this host: {entry.get('reason')}",
            hint=f"try another --runtime (one of {', '.join(AUTO_ORDER)}); "
            f"the result is cached in {path}",
        )
    return cls(entry.get("mode"))


def get_runtime(name: str = "auto") -> Runtime:
    """The backend called ``name``, or with ``auto`` the first usable of AUTO_ORDER.

    :raise ConfigError: unknown name
    """
    if name == "auto":
        reasons = []
        for cand in AUTO_ORDER:
            try:
                return probe(cand)
            except (ToolMissing, RuntimeUnusable) as err:
                reasons.append(f"{cand}: {err}")
        raise RuntimeUnusable(
            "no container runtime works on this host",
            hint="; ".join(reasons) + " (install crun or runc, or util-linux unshare)",
        )
    if name not in RUNTIMES:
        raise ConfigError(
            f"unknown container runtime '{name}'",
            hint=f"choose among auto, {', '.join(RUNTIMES)}",
        )
    return probe(name)
