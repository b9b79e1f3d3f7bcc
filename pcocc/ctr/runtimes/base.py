"""The interface of a container runtime backend, and the registry that finds one by name.

Each backend module registers its classes with :func:`register`; :func:`runtime_class`
imports only the module of the backend asked for (``pcocc run --runtime crun`` never loads
the vm backend).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from pcocc import proc
from pcocc.errors import ConfigError

#: what ``auto`` tries, in this order (``vm`` only by name)
AUTO_ORDER = ("crun", "runc", "unshare")

#: backend name -> module that defines it, imported on first use
BACKEND_MODULES: dict[str, str] = {
    "crun": "pcocc.ctr.runtimes.oci",
    "runc": "pcocc.ctr.runtimes.oci",
    "unshare": "pcocc.ctr.runtimes.unshare",
    "vm": "pcocc.ctr.runtimes.vm",
}


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
    def supports_root_layer(self) -> bool:
        """Whether this backend mounts the writable layer of :mod:`pcocc.ctr.rootlayer`
        (an overlay mount on ``/`` first in the spec); without it the root is read-only."""
        return False

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
        """argv (and env, or None to inherit) that runs ``argv`` inside a running container.

        :param record: ``bundle`` (the app's bundle directory) and :meth:`exec_context`
        """

    def exec_context(self, app_pid: int | None) -> dict[str, Any]:
        """What :meth:`exec_argv` needs to know of a running app (whose runtime process is
        ``app_pid``), besides its bundle."""
        return {}

    def cleanup(self, container_id: str) -> None:
        """Forget a container that is gone (best effort)."""

    def namespace_holder(self, container_id: str, popen: proc.Popen) -> int | None:
        """A pid whose namespaces the next apps of the pod may join, or None (no sharing)."""
        return None

    def kill(self, container_id: str, popen: proc.Popen | None) -> None:
        if popen is not None:
            proc.kill_group(popen)

    def wait_started(self, container_id: str, popen: proc.Popen) -> bool:
        """Wait until the app runs its own program; False if it failed to get there (the
        runtime process ended with a non-zero status first)."""
        return popen.poll() is None or popen.returncode == 0

    def send_signal(self, container_id: str, pid: int, signum: int) -> None:
        """Send ``signum`` to a running app from outside its supervisor; ``pid`` is its
        runtime process, which leads its own session (best effort: it may be gone)."""
        import os

        try:
            os.killpg(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


# registry -----------------------------------------------------------------------------------
_REGISTRY: dict[str, type[Runtime]] = {}


def register(cls: type[Runtime]) -> type[Runtime]:
    """Class decorator: make a backend available as ``--runtime <cls.name>``."""
    _REGISTRY[cls.name] = cls
    return cls


def runtime_class(name: str) -> type[Runtime]:
    """The backend called ``name``, importing its module on first use.

    :raise ConfigError: unknown name
    """
    if name not in BACKEND_MODULES:
        raise ConfigError(
            f"unknown container runtime '{name}'",
            hint=f"choose among auto, {', '.join(BACKEND_MODULES)}",
        )
    importlib.import_module(BACKEND_MODULES[name])
    return _REGISTRY[name]
