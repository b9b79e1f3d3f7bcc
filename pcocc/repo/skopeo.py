"""Thin typed wrapper over skopeo: copy images between transports, inspect them.

Every call goes through :mod:`pcocc.proc`. Signature policy: pcocc checks trust itself
(``pcocc.trust``), so skopeo runs with ``--insecure-policy`` unless a policy file is given.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pcocc import proc
from pcocc.errors import Corrupt, ToolError, UsageError
from pcocc.netaddr import is_loopback_host

#: skopeo transports pcocc knows, by the name users write before the colon.
TRANSPORTS = ("docker", "docker-archive", "docker-daemon", "oci", "oci-archive", "dir", "ostree")


def image_ref(fmt: str, location: str) -> str:
    """The skopeo image name for ``location`` in transport ``fmt`` (docker:// adds slashes)."""
    if fmt not in TRANSPORTS:
        raise UsageError(
            f"unknown container image format '{fmt}'",
            hint=f"use one of: {', '.join(TRANSPORTS)}",
        )
    if fmt == "docker":
        return "docker://" + location.removeprefix("//")
    return f"{fmt}:{location}"


@functools.lru_cache(maxsize=1)
def transports() -> frozenset[str]:
    """Transports this skopeo supports, read from ``skopeo copy --help``."""
    out = proc.run(["skopeo", "copy", "--help"], what="skopeo copy --help").stdout
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.strip().lower().startswith("supported transports"):
            for nxt in lines[i + 1 :]:
                if nxt.strip():
                    return frozenset(t.strip() for t in nxt.split(",") if t.strip())
    return frozenset(TRANSPORTS)  # unknown help layout: let skopeo itself complain


#: Transports of every skopeo build: not looked up (that costs one skopeo run per command).
_ALWAYS_BUILT = frozenset({"docker", "docker-archive", "oci", "oci-archive", "dir"})


def require_transport(fmt: str) -> None:
    """Raise ToolMissing-like error when the installed skopeo lacks transport ``fmt``."""
    if fmt in _ALWAYS_BUILT:
        return
    if fmt not in transports():
        raise _no_transport(fmt)


def _policy_args(policy: Path | None) -> list[str]:
    return ["--insecure-policy"] if policy is None else ["--policy", os.fspath(policy)]


def registry_host(ref: str) -> str | None:
    """The registry host of a ``docker://`` reference (without port), or None when the
    reference names no registry (``docker://busybox`` goes to the default one)."""
    if not ref.startswith("docker://"):
        return None
    first, sep, _rest = ref.removeprefix("docker://").partition("/")
    # As docker: the first component is a registry when it has a dot or a port, or is
    # "localhost"; "library/busybox" is a path on the default registry.
    if not sep or not ("." in first or ":" in first or first == "localhost"):
        return None
    if first.startswith("["):  # [::1]:5000
        return first[1:].partition("]")[0]
    return first.rpartition(":")[0] if ":" in first else first


def is_loopback_registry(ref: str) -> bool:
    """True for registries on this host (127.0.0.0/8, ::1, localhost), which docker too
    lets speak plain HTTP: no traffic leaves the machine."""
    host = registry_host(ref)
    return host is not None and is_loopback_host(host)


def tls_verify_for(ref: str, tls_verify: bool | None) -> bool | None:
    """The TLS setting to give skopeo: explicit when set, off for loopback registries,
    else None (skopeo's own registries.conf decides)."""
    if tls_verify is None and is_loopback_registry(ref):
        return False
    return tls_verify


def _tls_args(option: str, ref: str, tls_verify: bool | None) -> list[str]:
    tls_verify = tls_verify_for(ref, tls_verify)
    if tls_verify is None or not ref.startswith("docker://"):
        return []
    return [f"{option}={'true' if tls_verify else 'false'}"]


def copy(
    src: str,
    dest: str,
    *,
    policy: Path | None = None,
    src_tls_verify: bool | None = None,
    dest_tls_verify: bool | None = None,
    extra: Sequence[str] = (),
    timeout_s: float | None = None,
    src_authfile: Path | None = None,
) -> None:
    """``skopeo copy SRC DEST`` (full transport:location references); ``src_authfile``:
    the registry credentials of SRC, as a file (never in argv, which others can read).

    :raise ToolError: skopeo failed; the message ends with its last stderr lines
    """
    argv = [
        "skopeo",
        *_policy_args(policy),
        "copy",
        "--quiet",
        *_tls_args("--src-tls-verify", src, src_tls_verify),
        *_tls_args("--dest-tls-verify", dest, dest_tls_verify),
        *_authfile_args("--src-authfile", src_authfile),
        *extra,
        src,
        dest,
    ]
    try:
        proc.run(argv, what=f"copying {src} to {dest}", timeout_s=timeout_s)
    except ToolError as err:
        missing = _UNSUPPORTED_RE.search(err.stderr)
        if missing:
            raise _no_transport(missing.group(1)) from err
        raise


#: skopeo built without a transport (e.g. Debian's, for ostree) says so only when used.
_UNSUPPORTED_RE = re.compile(r'transport \\?"?([a-z-]+):?\\?"? is not supported in this build')


def _no_transport(fmt: str) -> ToolError:
    return ToolError(
        f"this skopeo does not support the '{fmt}' transport",
        tool="skopeo",
        hint="install a skopeo built with it, or convert the image to another format first",
    )


def _authfile_args(option: str, authfile: Path | None) -> list[str]:
    return [] if authfile is None else [option, os.fspath(authfile)]


def inspect_raw(
    ref: str, *, tls_verify: bool | None = None, config: bool = False,
    authfile: Path | None = None,
) -> dict[str, Any]:
    """The raw manifest (or with ``config`` the config) of ``ref``, parsed and checked."""
    argv = [
        "skopeo",
        *_policy_args(None),
        "inspect",
        "--raw",
        *_tls_args("--tls-verify", ref, tls_verify),
        *_authfile_args("--authfile", authfile),
    ]
    if config:
        argv.append("--config")
    argv.append(ref)
    out = proc.run(argv, what=f"inspecting {ref}").stdout
    try:
        data = json.loads(out)
    except json.JSONDecodeError as err:
        raise Corrupt(f"skopeo inspect of {ref} returned invalid JSON: {err}") from err
    if not isinstance(data, dict):
        raise Corrupt(f"skopeo inspect of {ref} did not return a JSON object")
    return data
