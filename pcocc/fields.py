"""Strict checks of single values read from outside (etcd records above all).

Each record type keeps its own parser next to it (``VmRecord.from_json``...); the parsers
are built from these checks, so that a port, an address or a path means the same thing in
every record. A check returns the value it accepted (normalised where that matters) or raises
:class:`BadField`; :func:`parse_record` runs a record parser on the raw text and turns a
:class:`BadField` into one :class:`~pcocc.errors.Corrupt` line naming the record, its etcd key
and the field.

What a check refuses, everywhere: a wrong JSON type (``True`` is not an integer), control
characters (newline, NUL, escape...) in any text, text longer than its bound, and records
larger than :data:`MAX_RECORD_BYTES`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

from pcocc.errors import Corrupt

T = TypeVar("T")

#: Largest record pcocc reads back from etcd (the cluster definition has its own bound).
MAX_RECORD_BYTES = 64 * 1024
#: Longest one-line text field (error messages, descriptions...).
MAX_TEXT = 4096
#: Longest path (PATH_MAX).
MAX_PATH = 4096
#: Largest process id Linux hands out (``/proc/sys/kernel/pid_max`` can go no higher).
MAX_PID = 1 << 22

#: The names of pcocc objects (templates, networks, resource sets, repositories...).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: Host names as Slurm and ``gethostname`` give them; never starts with '-' (no option).
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*$"
)
_MAC_RE = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")
#: OpenSSH public key types pcocc accepts for host and user keys.
SSH_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "ssh-rsa",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
_SSH_KEY_RE = re.compile(r"^([a-z0-9@.-]+) ([A-Za-z0-9+/]+={0,2})(?: ([\x21-\x7e]{1,256}))?$")
MAX_SSH_KEY = 16384


class BadField(ValueError):
    """One field of a record is wrong: ``field`` is its path (``vms[2].address``)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    def within(self, parent: str) -> BadField:
        """The same error, one level down: ``parent.field``."""
        sep = "" if self.field.startswith("[") else "."
        return BadField(f"{parent}{sep}{self.field}", self.problem)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "an object", type(None): "null"}.get(type(value), "a value")


# -- records ---------------------------------------------------------------------------------
def load_object(raw: str | bytes, max_bytes: int = MAX_RECORD_BYTES) -> dict[str, Any]:
    """The JSON object in ``raw`` (bounded in size; NaN and Infinity refused).

    :raise BadField: with the field ``(record)``
    """
    size = len(raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw)
    if size > max_bytes:
        raise BadField("(record)", f"{size} bytes, more than the {max_bytes} allowed")
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
        data = json.loads(text, parse_constant=_no_constant)
    except (ValueError, UnicodeError) as err:
        raise BadField("(record)", f"not JSON ({err})") from None
    if not isinstance(data, dict):
        raise BadField("(record)", f"expected a JSON object, got {_type_name(data)}")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def parse_record(
    what: str, key: str | None, raw: str | bytes, parse: Callable[[str | bytes], T]
) -> T:
    """``parse(raw)``, its :class:`BadField` turned into :class:`Corrupt` naming ``what``
    (e.g. "VM state record"), the etcd ``key`` and the field."""
    try:
        return parse(raw)
    except BadField as err:
        where = f" at etcd key {key}" if key else ""
        raise Corrupt(
            f"invalid {what}{where}: field '{err.field}': {err.problem}",
            hint="this etcd entry was not written by pcocc; it is ignored"
            " (an administrator can remove it)",
        ) from None


def fields_of(data: Mapping[str, Any], required: Collection[str],
              optional: Collection[str] = ()) -> None:
    """Refuse a record with missing or unknown fields (unknown ones are never ignored:
    the record format is versioned with pcocc itself)."""
    for name in required:
        if name not in data:
            raise BadField(name, "missing")
    allowed = {*required, *optional}
    for name in data:
        if name not in allowed:
            raise BadField(str(name)[:60], "unknown field")


# -- scalars ---------------------------------------------------------------------------------
def integer(value: Any, field: str, minimum: int | None = None,
            maximum: int | None = None) -> int:
    """An int (never a bool, a float or a string of digits) within the bounds."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadField(field, f"expected an integer, got {_type_name(value)} {_show(value)}")
    if minimum is not None and value < minimum:
        raise BadField(field, f"{value} is less than {minimum}")
    if maximum is not None and value > maximum:
        raise BadField(field, f"{value} is more than {maximum}")
    return value


def number(value: Any, field: str, minimum: float | None = None) -> float:
    """A finite int or float (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadField(field, f"expected a number, got {_show(value)}")
    if minimum is not None and value < minimum:
        raise BadField(field, f"{value} is less than {minimum}")
    return float(value)


def boolean(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise BadField(field, f"expected true or false, got {_show(value)}")
    return value


def port(value: Any, field: str) -> int:
    """A TCP/UDP port number, 1 to 65535."""
    return integer(value, field, 1, 65535)


def pid(value: Any, field: str) -> int:
    """A process id: positive (0 and -1 would mean a group or every process to kill)."""
    return integer(value, field, 1, MAX_PID)


def text(value: Any, field: str, max_len: int = MAX_TEXT, *, empty: bool = True,
         multiline: bool = False) -> str:
    """A string without control characters (``multiline``: newlines and tabs allowed)."""
    if not isinstance(value, str):
        raise BadField(field, f"expected a string, got {_type_name(value)}")
    if len(value) > max_len:
        raise BadField(field, f"{len(value)} characters, more than the {max_len} allowed")
    if not value and not empty:
        raise BadField(field, "empty")
    check = value.replace("\n", "").replace("\t", "") if multiline else value
    if not check.isprintable():
        bad = next(c for c in check if not c.isprintable())
        raise BadField(field, f"control or unprintable character {bad!r} in {_show(value)}")
    return value


def one_line(value: object, max_len: int = MAX_TEXT) -> str:
    """``value`` as text that :func:`text` accepts: unprintable characters become spaces,
    and it is cut at ``max_len`` (for writers of free text: error messages, console lines)."""
    out = "".join(c if c.isprintable() else " " for c in str(value))
    return out if len(out) <= max_len else out[: max_len - 3] + "..."


def optional(
    check: Callable[..., T], value: Any, field: str, *args: Any, **kwargs: Any
) -> T | None:
    """``None`` stays None; anything else goes through ``check``."""
    return None if value is None else check(value, field, *args, **kwargs)


def choice(value: Any, field: str, choices: Collection[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise BadField(field, f"expected one of {', '.join(sorted(choices))}, got {_show(value)}")
    return value


def name(value: Any, field: str) -> str:
    """A pcocc name: letters, digits, '.', '_', '-', starting with a letter or digit."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise BadField(
            field, f"expected a name (letters, digits, '.', '_', '-'), got {_show(value)}"
        )
    return value


def job_id(value: Any, field: str) -> str:
    """A batch job id: it names a run directory, so the name rule (no '/', no '..')."""
    return name(value, field)


def ip_address(value: Any, field: str) -> str:
    """An IPv4 or IPv6 address in its canonical text form (no IPv6 scope: ``%...`` would
    carry any text)."""
    if not isinstance(value, str) or "%" in value:
        raise BadField(field, f"expected an IP address, got {_show(value)}")
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise BadField(field, f"expected an IP address, got {_show(value)}") from None
    return str(addr)


def ipv4_address(value: Any, field: str) -> str:
    address = ip_address(value, field)
    if ":" in address:
        raise BadField(field, f"expected an IPv4 address, got {_show(value)}")
    return address


def hostname(value: Any, field: str) -> str:
    """A host name (RFC 1123 labels, '_' tolerated) or an IP address."""
    if isinstance(value, str) and _HOSTNAME_RE.match(value):
        return value
    if isinstance(value, str) and ":" in value:
        return ip_address(value, field)
    raise BadField(field, f"expected a host name or an IP address, got {_show(value)}")


def host_port(value: Any, field: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) -> (host, port)."""
    if not isinstance(value, str) or len(value) > 300:
        raise BadField(field, f"expected host:port, got {_show(value)}")
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise BadField(field, f"expected host:port, got {_show(value)}")
    if host.startswith("[") and host.endswith("]"):
        host = ip_address(host[1:-1], field)
    else:
        host = hostname(host, field)
    return host, port(int(port_text), field)


def mac(value: Any, field: str) -> str:
    """A MAC address ``xx:xx:xx:xx:xx:xx`` (lower case)."""
    if not isinstance(value, str) or not _MAC_RE.match(value.lower()):
        raise BadField(field, f"expected a MAC address, got {_show(value)}")
    return value.lower()


def abs_path(value: Any, field: str) -> str:
    """An absolute path without control characters and without ``..``."""
    text(value, field, MAX_PATH, empty=False)
    if not value.startswith("/"):
        raise BadField(field, f"expected an absolute path, got {_show(value)}")
    if ".." in value.split("/"):
        raise BadField(field, f"'..' in path {_show(value)}")
    return value


def ssh_public_key(value: Any, field: str) -> str:
    """An OpenSSH public key line ``TYPE BASE64 [COMMENT]``: no options, a known type, and
    a blob that decodes and names the same type."""
    text(value, field, MAX_SSH_KEY, empty=False)
    match = _SSH_KEY_RE.match(value)
    if not match or match.group(1) not in SSH_KEY_TYPES:
        raise BadField(field, f"expected an OpenSSH public key 'TYPE BASE64', got {_show(value)}")
    kind, blob = match.group(1), match.group(2)
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise BadField(field, "the key is not valid base64") from None
    head = len(kind).to_bytes(4, "big") + kind.encode()
    if not raw.startswith(head) or len(raw) <= len(head):
        raise BadField(field, f"the key data is not a {kind} key")
    return value


def str_list(value: Any, field: str, check: Callable[[Any, str], str] = text,
             max_items: int = 1024) -> list[str]:
    if not isinstance(value, list):
        raise BadField(field, f"expected a list, got {_type_name(value)}")
    if len(value) > max_items:
        raise BadField(field, f"{len(value)} items, more than the {max_items} allowed")
    return [check(item, f"{field}[{i}]") for i, item in enumerate(value)]


def plain_json(value: Any, field: str, depth: int = 0) -> Any:
    """A JSON value whose every string (keys too) passes :func:`text`."""
    if depth > 16:
        raise BadField(field, "nested too deep")
    if isinstance(value, str):
        return text(value, field)
    if isinstance(value, dict):
        for k, v in value.items():
            text(k, f"{field} key")
            plain_json(v, f"{field}.{k}", depth + 1)
        return value
    if isinstance(value, list):
        for i, v in enumerate(value):
            plain_json(v, f"{field}[{i}]", depth + 1)
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise BadField(field, f"{value} is not a number")
    return value
