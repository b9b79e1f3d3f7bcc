"""crun and runc: the OCI runtimes, with the quirks of this host they need handled.

Only when the probe detects them:

- hybrid cgroups (v1 controllers, v2 at /sys/fs/cgroup/unified): crun refuses them. It then
  runs inside a private mount namespace where the v2 tree is bound over /sys/fs/cgroup, with
  ``--cgroup-manager=disabled`` (the spec carries no ``linux.resources``). Rootless, that
  namespace is a user namespace too, so the spec's host ids are rewritten relative to it.
- runc rootless needs root mapped in the container: the app then runs as root of its user
  namespace (the caller on the host).

The app's writable layer (:mod:`pcocc.ctr.rootlayer`) is an overlay mount on ``/``, which runc
mounts itself. crun before 1.21 cannot mount on ``/``: it starts in a private mount namespace
(the cgroup wrapper's, or one of its own when run by root) where the overlay is mounted on
the spec's root first; the spec keeps the mount options in an annotation.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from pcocc import paths, proc
from pcocc.ctr import host
from pcocc.ctr.rootlayer import USERXATTR, is_root_overlay
from pcocc.ctr.runtimes.base import Runtime, register
from pcocc.errors import PcoccError


#: where crun's spec keeps the options of the root overlay the wrapper mounts
ROOT_OVERLAY_ANNOTATION = "org.pcocc.root-overlay"


class OciRuntime(Runtime):
    """crun and runc: same command line, different quirks."""

    def state_root(self) -> Path:
        return paths.runtime_dir() / self.name

    def wrapped(self) -> bool:
        """Whether the probe found that this runtime needs the unified-bind wrapper."""
        return self.mode.get("wrap") == "unified-bind"

    def wrapper(self, overlay: tuple[str, str] | None = None) -> list[str]:
        """The private mount namespace crun starts in, if it needs one: with the v2 cgroup
        tree bound over /sys/fs/cgroup (hybrid hosts), and/or ``overlay``, ``(mount
        options, target)``, mounted (the app's root layer)."""
        steps, args = [], []
        if self.wrapped():
            args.append(f"{host.CGROUP_ROOT}/unified")
            steps.append(f'mount --bind "${len(args)}" /sys/fs/cgroup')
        if overlay is not None:
            args.extend(overlay)
            steps.append(f'mount -t overlay -o "${len(args) - 1}" overlay "${len(args)}"')
        if not steps:
            return []
        userns = ["--user", "--map-root-user"] if host.is_rootless() else []
        script = " && ".join([*steps, f"shift {len(args)}", 'exec "$@"'])
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
            "pcocc-wrap",
            *args,
        ]

    def global_args(self) -> list[str]:
        args = [proc.which(self.binary or self.name), "--root", str(self.state_root())]
        if self.wrapped():
            args.append("--cgroup-manager=disabled")
        return args

    def adapt_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        spec = copy.deepcopy(spec)
        linux = spec.setdefault("linux", {})
        linux.pop("resources", None)  # device filters need RLIMIT_MEMLOCK, cgroups vary
        if self.wrapped() and host.is_rootless():
            # The wrapper's user namespace maps the caller to 0: host ids are relative to it.
            for key in ("uidMappings", "gidMappings"):
                for m in linux.get(key, []):
                    m["hostID"] = 0
        return spec

    def run_argv(self, bundle: Path, container_id: str) -> list[str]:
        return [
            *self.wrapper(self.root_overlay(bundle)),
            *self.global_args(),
            "run",
            "--bundle",
            str(bundle),
            container_id,
        ]

    def root_overlay(self, bundle: Path) -> tuple[str, str] | None:
        """The root layer the wrapper mounts for the bundle: (options, target), or None."""
        return None

    def exec_argv(self, container_id, argv, *, record, tty=False):
        if self.wrapped() and host.is_rootless():
            # The container's ids are relative to the wrapper's user namespace, which crun
            # exec cannot recreate: join the container's namespaces directly.
            from pcocc.ctr.nsjoin import nsenter_argv

            return nsenter_argv(self.container_pid(container_id), Path(record["bundle"]), argv)

        return [
            *self.wrapper(),
            *self.global_args(),
            "exec",
            *(["--tty"] if tty else []),
            container_id,
            *argv,
        ], None

    def namespace_holder(self, container_id: str, popen: proc.Popen) -> int | None:
        if self.wrapped() and host.is_rootless():
            return None  # each app's wrapper is its own user namespace: nothing to join
        deadline = time.monotonic() + 10.0
        while popen.poll() is None and time.monotonic() < deadline:
            try:
                return self.container_pid(container_id)
            except PcoccError:
                time.sleep(0.01)  # not created yet
        return None

    def container_state(self, container_id: str) -> dict[str, Any]:
        """The runtime's ``state`` of a container; :raise PcoccError: not created (yet)"""
        res = proc.run(
            [*self.global_args(), "state", container_id],
            what=f"{self.name} state {container_id}",
            timeout_s=10,
        )
        try:
            state = json.loads(res.stdout)
        except ValueError as err:
            raise PcoccError(f"{self.name} state {container_id}: not JSON") from err
        if not isinstance(state, dict):
            raise PcoccError(f"{self.name} state {container_id}: not a JSON object")
        return state

    def container_pid(self, container_id: str) -> int:
        try:
            return int(self.container_state(container_id)["pid"])
        except (ValueError, KeyError, TypeError) as err:
            raise PcoccError(f"{self.name} state {container_id}: no pid in its output") from err

    def wait_started(self, container_id: str, popen: proc.Popen) -> bool:
        # "created" until the runtime has run the app's program; a failure to start it
        # (no such executable...) ends the runtime process with an error instead
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                return popen.returncode == 0
            try:
                status = self.container_state(container_id).get("status")
            except PcoccError:
                status = None  # not created yet
            if status == "running":
                return True
            if status == "stopped":
                # ended already: ran its program and left, or never got to it (runc shows
                # a failed exec as "stopped" before its own process ends): its status says
                try:
                    return popen.wait(max(0.0, deadline - time.monotonic())) == 0
                except proc.TimeoutExpired:
                    return True
            time.sleep(0.01)
        return popen.poll() is None or popen.returncode == 0

    def send_signal(self, container_id: str, pid: int, signum: int) -> None:
        import signal

        name = signal.Signals(signum).name.removeprefix("SIG")
        argv = [*self.wrapper(), *self.global_args(), "kill", container_id, name]
        proc.run(argv, check=False, timeout_s=10)
        if signum == signal.SIGKILL:
            super().send_signal(container_id, pid, signum)  # the runtime process too

    def cleanup(self, container_id: str) -> None:
        argv = [*self.wrapper(), *self.global_args(), "delete", "--force", container_id]
        proc.run(argv, check=False, timeout_s=10)

    def kill(self, container_id: str, popen: proc.Popen | None) -> None:
        argv = [*self.wrapper(), *self.global_args(), "kill", container_id, "KILL"]
        proc.run(argv, check=False, timeout_s=10)
        super().kill(container_id, popen)


@register
class Crun(OciRuntime):
    name = "crun"
    binary = "crun"

    def supports_root_layer(self) -> bool:
        # rootless, a wrapper of its own would need the user namespace of the cgroup one
        return self.wrapped() or not host.is_rootless()

    def adapt_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        spec = super().adapt_spec(spec)
        mounts = spec.get("mounts", [])
        if mounts and is_root_overlay(mounts[0]):
            opts = mounts.pop(0)["options"]
            if not host.is_rootless():  # mounted by real root: not in a user namespace
                opts = [o for o in opts if o != USERXATTR]
            spec.setdefault("annotations", {})[ROOT_OVERLAY_ANNOTATION] = ",".join(opts)
        return spec

    def root_overlay(self, bundle: Path) -> tuple[str, str] | None:
        try:
            spec = json.loads((bundle / "config.json").read_text())
        except FileNotFoundError:
            return None
        opts = (spec.get("annotations") or {}).get(ROOT_OVERLAY_ANNOTATION)
        return None if opts is None else (opts, spec["root"]["path"])

    def candidate_modes(self) -> list[dict[str, Any]]:
        modes: list[dict[str, Any]] = [{}]
        if host.cgroup_layout() == "hybrid":
            modes.append({"wrap": "unified-bind"})
        return modes


@register
class Runc(OciRuntime):
    name = "runc"
    binary = "runc"

    def supports_root_layer(self) -> bool:
        return True  # runc mounts the overlay on / itself

    def adapt_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        spec = super().adapt_spec(spec)
        if host.is_rootless():
            # runc refuses a user namespace without root mapped; map root to the caller.
            linux = spec["linux"]
            for key in ("uidMappings", "gidMappings"):
                for m in linux.get(key, []):
                    m["containerID"] = 0
            spec["process"]["user"] = {"uid": 0, "gid": 0}
        return spec
