"""``pcocc display``: where the remote display of a VM is, and a viewer for it.

The display is a unix socket in the VM's run directory on its host, and its password is in
the ``display.json`` record next to it (see :mod:`pcocc.vm.display`): both are read on
the VM's host only, as the QMP socket is (:func:`pcocc.cluster.vmcontrol.local_path`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pcocc.cluster import rundir
from pcocc.cluster.vmcontrol import local_path
from pcocc.cluster.lookup import ClusterView, parse_vm_name
from pcocc.errors import Corrupt, NotFound
from pcocc.vm.display import INFO_FILE, DisplayInfo

#: viewers ``pcocc display -p`` tries, in order, by protocol (and their Debian packages)
VIEWERS = {"vnc": ("remote-viewer", "vncviewer"), "spice": ("remote-viewer",)}
VIEWER_PACKAGES = {"remote-viewer": "virt-viewer", "vncviewer": "tigervnc-viewer"}
#: largest display record read
MAX_INFO_BYTES = 8192


def display_protocol(view: ClusterView, name: str) -> str:
    """The ``remote-display`` of VM ``name``'s template.

    :raise NotFound: its template asks for none
    """
    entry = view.record.definition.vm(parse_vm_name(name))
    protocol = entry.settings.get("remote-display")
    if not protocol:
        raise NotFound(
            f"vm{entry.rank} of cluster {view.batchid} has no remote display",
            hint=f"set 'remote-display: vnc' (or spice) in its template '{entry.template}'"
            " and start a new cluster",
        )
    return str(protocol)


@dataclass(frozen=True)
class VmDisplay:
    """The display of one VM, as ``pcocc display`` shows it."""

    vm: str
    #: the host the VM (and its display socket) is on
    host: str
    info: DisplayInfo

    def lines(self) -> list[str]:
        """The address, the password, and how to reach the socket from another host."""
        info = self.info
        local = f"~/.pcocc-{self.vm}-{info.protocol}.sock"
        return [
            f"address: {info.uri}",
            f"password: {info.password}",
            f"host: {self.host} (only your user can open the socket)",
            f"from another host: ssh -N -L {local}:{info.socket} {self.host}",
            f"  then open {info.protocol}+unix://{local} (expand ~)",
        ]

    def to_json(self) -> dict[str, str]:
        return {"vm": self.vm, "host": self.host, "protocol": self.info.protocol,
                "socket": self.info.socket, "uri": self.info.uri,
                "password": self.info.password}


def find_display(view: ClusterView, name: str) -> VmDisplay:
    """The address and password of VM ``name``'s display (on the VM's host only).

    :raise NotFound: the VM has no remote display, or it is not up yet
    :raise UsageError: the VM runs on another host
    :raise Corrupt: the record is not pcocc's, or names a socket outside the VM's run dir
    """
    protocol = display_protocol(view, name)
    rec = view.vm(name)
    not_yet = NotFound(f"{rec.name} has no display yet",
                       hint="wait until 'pcocc ps' shows it running")
    if not rec.qmp_socket:
        raise not_yet
    path = os.path.join(os.path.dirname(rec.qmp_socket), INFO_FILE)
    try:
        path = local_path(view, rec, path, "display", is_socket=False)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except (NotFound, FileNotFoundError):
        raise not_yet from None
    with os.fdopen(fd, "rb") as f:
        info = DisplayInfo.from_json(f.read(MAX_INFO_BYTES + 1), path)
    if info.protocol != protocol:
        raise Corrupt(f"{path} names a {info.protocol} display; the template of {rec.name}"
                      f" asks for {protocol}")
    rundir.vm_run_file(info.socket, view.batchid, rec.rank, socket=True)
    return VmDisplay(rec.name, rec.host, info)


def viewer_argv(info: DisplayInfo, which: Callable[[str], str | None] = shutil.which
                ) -> list[str]:
    """The command line of the first installed viewer of ``info``'s protocol.

    :raise NotFound: none is installed (the message names the packages)
    """
    names: Sequence[str] = VIEWERS[info.protocol]
    for viewer in names:
        path = which(viewer)
        if path is None:
            continue
        if viewer == "vncviewer":  # TigerVNC takes a unix socket path as the server
            return [path, info.socket]
        return [path, info.uri]
    packages = ", ".join(f"{v} (Debian package {VIEWER_PACKAGES[v]})" for v in names)
    raise NotFound(
        f"no {info.protocol.upper()} viewer is installed: tried {packages}",
        hint="install one, or run 'pcocc display' without -p and connect a viewer yourself",
    )
