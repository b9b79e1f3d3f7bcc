"""A VM's remote display (template ``remote-display: vnc|spice``): its password and the
record that tells the user where it is.

QEMU serves the display on a unix socket in the VM's run directory (0700, socket 0600), so
only the owner of the job reaches it, on the VM's host (see docs/user-guide.md, "Remote
display"). It starts with password authentication on and no password, which refuses every
client; once the VM is up, :func:`enable` sets a random password over QMP (never in argv,
which any user of the node reads in /proc) and writes :data:`INFO_FILE` (0600) next to the
socket. ``pcocc display`` reads that file back with :meth:`DisplayInfo.from_json`.

VNC authentication (DES, RFB "VNC auth") uses at most 8 characters of a password: that is
why the socket's permissions, not the password, are what keeps other users out.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pcocc import fields
from pcocc.errors import ConfigError, Corrupt

PROTOCOLS = ("vnc", "spice")
#: the socket QEMU listens on, by protocol, relative to its run directory
SOCKET_NAMES = {"vnc": "vnc.sock", "spice": "spice.sock"}
#: the record of the display, in the VM's run directory
INFO_FILE = "display.json"
#: VNC auth keys DES with the first 8 characters; SPICE takes longer tickets
PASSWORD_LENGTHS = {"vnc": 8, "spice": 24}
_PASSWORD_CHARS = string.ascii_letters + string.digits
_PASSWORD_MAX = max(PASSWORD_LENGTHS.values())


def new_password(protocol: str) -> str:
    """A random password of the longest length ``protocol`` uses (letters and digits)."""
    return "".join(secrets.choice(_PASSWORD_CHARS) for _ in range(PASSWORD_LENGTHS[protocol]))


@dataclass(frozen=True)
class DisplayInfo:
    """Where a VM's display listens and its password (the content of :data:`INFO_FILE`)."""

    protocol: str
    #: absolute path of the unix socket on the VM's host
    socket: str
    password: str

    @property
    def uri(self) -> str:
        """The address as remote-viewer takes it: ``vnc+unix:///path``."""
        return f"{self.protocol}+unix://{self.socket}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, where: str | None = None) -> DisplayInfo:
        """Parse a display record (``where`` names the file in errors).

        :raise Corrupt: naming the file and the field
        """
        try:
            return _parse(text)
        except fields.BadField as err:
            raise Corrupt(
                f"invalid display record {where or ''}: field '{err.field}': {err.problem}",
                hint="pcocc did not write this file; stop the cluster and start it again",
            ) from None


def _parse(raw: str | bytes) -> DisplayInfo:
    data = fields.load_object(raw, max_bytes=8192)
    fields.fields_of(data, ("protocol", "socket", "password"))
    password = fields.text(data["password"], "password", _PASSWORD_MAX, empty=False)
    if any(c not in _PASSWORD_CHARS for c in password):
        raise fields.BadField("password", "expected letters and digits only")
    return DisplayInfo(
        protocol=fields.choice(data["protocol"], "protocol", PROTOCOLS),
        socket=fields.abs_path(data["socket"], "socket"),
        password=password,
    )


def check_protocol(
    vm: str, protocol: str, qemu_bin: str, has_spice: Callable[[str], bool] | None = None
) -> None:
    """Refuse a protocol this QEMU cannot serve (SPICE is a build option of QEMU).

    :param has_spice: qemu_bin -> whether it was built with SPICE (default: ask it)
    :raise ConfigError: unknown protocol, or SPICE without SPICE support
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"VM {vm}: remote-display: unknown protocol '{protocol}'",
            hint="use one of: " + ", ".join(PROTOCOLS),
        )
    if protocol == "spice" and not (has_spice or spice_supported)(qemu_bin):
        raise ConfigError(
            f"VM {vm}: remote-display: spice: {qemu_bin} was built without SPICE support",
            hint="set 'remote-display: vnc' in the template, or install a QEMU with SPICE",
        )


def spice_supported(qemu_bin: str) -> bool:
    """Whether ``qemu_bin`` knows ``-spice``: it lists the options for ``-spice help`` (and
    exits with status 1 all the same, QEMU 7.2); without SPICE it only prints an error."""
    from pcocc import proc

    res = proc.run([qemu_bin, "-spice", "help"], check=False, timeout_s=60,
                   what=f"ask {qemu_bin} for SPICE support")
    return "spice options" in res.stdout


def enable(qmp: Any, protocol: str, socket: Path, info_file: Path) -> DisplayInfo:
    """Give the display a new random password and write its record (0600, atomically).

    :param qmp: a connected :class:`pcocc.vm.qmp.QmpClient` of the VM
    :param socket: the absolute path of the display's socket
    """
    from pcocc.fsutil import write_atomic

    info = DisplayInfo(protocol, str(socket), new_password(protocol))
    qmp.execute("set_password", {"protocol": protocol, "password": info.password})
    write_atomic(info_file, info.to_json(), mode=0o600)
    return info
