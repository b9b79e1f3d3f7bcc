"""The writable layer of an app: a private overlay over its (shared, read-only) image.

Each app of a pod runs on an overlayfs whose lower directory is the image's root file system
(a container cache entry, or a directory given to ``pcocc run``) and whose upper directory
is in the pod's own state directory::

    <pod>/apps/<app>/layer/         0700, the user's
        upper/                      what the app wrote, created or deleted
        work/                       overlayfs' work directory
    <pod>/apps/<app>/rootfs/        empty: where the overlay is mounted (the spec's root)

The overlay is mounted by the runtime inside the container's user and mount namespaces (an
OCI mount of type ``overlay`` on ``/``, first of the spec's mounts, which runc and
:mod:`pcocc.ctr.nsinit` do), or, for a crun too old to mount on ``/``, by the private mount
namespace it is started in (:mod:`pcocc.ctr.runtimes.oci`). Either way it disappears with the
container's mount namespace: nothing is mounted on the host and nothing needs unmounting.
Writes, and the mount points the runtime creates, go to ``upper/``; the lower directory is
never written. ``pcocc pod export`` turns ``upper/`` into an image layer
(:mod:`pcocc.repo.difflayer`).

The overlay is ``volatile``: no syncs, so the end of a pod does not wait for the whole
disk; the layer is scratch space until ``pod export`` reads it (after the pod ended).

In a user namespace, overlayfs needs ``userxattr`` (opaque directories are then marked with
``user.overlay.opaque``); mounted by real root it uses ``trusted.overlay.*``. Deletions are
0/0 character devices in both cases.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: the mount option that a mount made outside any user namespace must not carry
USERXATTR = "userxattr"


@dataclass(frozen=True)
class RootLayer:
    """The directories of one app's writable layer (see the module docstring)."""

    app_dir: Path

    @property
    def top(self) -> Path:
        return self.app_dir / "layer"

    @property
    def upper(self) -> Path:
        return self.top / "upper"

    @property
    def work(self) -> Path:
        return self.top / "work"

    @property
    def merged(self) -> Path:
        return self.app_dir / "rootfs"

    def create(self, lower: str | os.PathLike[str]) -> None:
        """Make the directories; ``upper/`` takes the mode of the lower root, as the
        container's ``/`` shows the mode of the upper directory."""
        self.top.mkdir(mode=0o700)
        self.upper.mkdir()
        self.work.mkdir(mode=0o700)
        self.merged.mkdir(mode=0o700)
        os.chmod(self.upper, os.stat(lower).st_mode & 0o7777 & ~0o7022)

    def mount_entry(self, lower: str | os.PathLike[str]) -> dict[str, Any]:
        """The OCI mount that puts the overlay on ``/`` (mounted in a user namespace)."""
        opts = [
            f"lowerdir={escape(Path(lower))}",
            f"upperdir={escape(self.upper)}",
            f"workdir={escape(self.work)}",
            # no syncs: the layer needs no crash safety, and a sync of the upper file system
            # at unmount (the pod's end) waits for every dirty page of the disk
            "volatile",
            USERXATTR,
        ]
        return {"destination": "/", "type": "overlay", "source": "overlay", "options": opts}


def is_root_overlay(m: dict[str, Any]) -> bool:
    return m.get("destination") == "/" and m.get("type") == "overlay"


def escape(path: Path) -> str:
    """A path inside a mount option list (commas and colons separate options and layers)."""
    return str(path).replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def with_root_layer(spec: dict[str, Any], layer: RootLayer, lower: str) -> dict[str, Any]:
    """``spec`` (built with the writable root ``layer.merged``) with the overlay mounted
    first."""
    spec["mounts"] = [layer.mount_entry(lower), *spec.get("mounts", [])]
    return spec
