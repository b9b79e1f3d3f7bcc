"""Credentials for HTTPS servers, per domain, from ``<dir>/auth.json`` (mode 0600)::

    {"https": [
        {"domains": ["example.com", "localhost:8443"], "type": "basic",
         "user": "alice", "password": "secret"},
        {"domains": ["dl.example.org"], "type": "bearer", "token": "abc"}
    ]}

A header is sent only to a host:port listed for it (also after a redirect). A file that
other users may read, or that is not ours, is refused: it holds secrets. docker://
registries get the basic credentials of their host[:port] through skopeo's ``--authfile``
(:func:`registry_authfile`), never on a command line.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from pcocc.errors import ConfigError, PermissionDenied, UsageError

FILE_NAME = "auth.json"


class Credentials:
    def __init__(self, headers: dict[str, str] | None = None):
        self._by_host = dict(headers or {})

    def header_for(self, url: str) -> str | None:
        """The Authorization header for ``url``'s host[:port], if one is configured."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        key = f"{host}:{parts.port}" if parts.port else host
        return self._by_host.get(key)


@contextlib.contextmanager
def registry_authfile(creds: Credentials, registry: str) -> Iterator[Path | None]:
    """The basic credentials of ``registry`` (host[:port]) as a containers-auth.json file
    for skopeo's ``--authfile``, for the duration of the block: mode 0600 in a private
    temporary directory, removed afterwards. None when none are configured (skopeo then
    uses its own). Bearer tokens are refused: skopeo takes them only in argv."""
    header = creds.header_for(f"https://{registry}/")
    if header is None:
        yield None
        return
    kind, _, token = header.partition(" ")
    if kind != "Basic":
        raise UsageError(f"{FILE_NAME}: the credentials of registry {registry} are a bearer "
                         "token, which skopeo only takes on its command line (where other "
                         "users could read it)",
                         hint="give this registry basic credentials (user and password)")
    import shutil
    import tempfile

    tmp = tempfile.mkdtemp(prefix="pcocc-auth-")  # 0700
    try:
        path = Path(tmp) / "auth.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with open(fd, "w") as out:
            json.dump({"auths": {registry: {"auth": token}}}, out)
        yield path
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_mode(path: Path) -> None:
    """Refuse a credentials file others may read or write, or that is not ours."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        raise PermissionDenied(f"{path}: credentials must be a regular file, not a link")
    if st.st_uid != os.getuid():
        raise PermissionDenied(f"{path}: credentials file belongs to another user")
    if st.st_mode & 0o077:
        raise PermissionDenied(
            f"{path}: credentials file has mode {stat.S_IMODE(st.st_mode):04o}: "
            "others may read it, so it is not used",
            hint=f"chmod 600 {path}")


def load(directory: Path) -> Credentials:
    """The credentials of ``directory/auth.json``; none when there is no such file."""
    path = directory / FILE_NAME
    if not os.path.lexists(path):
        return Credentials()
    check_mode(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read credentials: {err}") from err
    return Credentials(parse(data, str(path)))


def parse(data: object, where: str) -> dict[str, str]:
    """host[:port] -> Authorization header, from the parsed file."""
    entries = data.get("https", []) if isinstance(data, dict) else None
    if not isinstance(entries, list) or set(data) - {"https"}:  # type: ignore[arg-type]
        raise ConfigError(f"{where}: expected {{\"https\": [ENTRY, ...]}}")
    out: dict[str, str] = {}
    for i, e in enumerate(entries):
        at = f"{where}: https[{i}]"
        if not isinstance(e, dict) or not isinstance(e.get("domains"), list) or not all(
                isinstance(d, str) and d and "/" not in d for d in e["domains"]):
            raise ConfigError(f"{at}: 'domains' must be a list of host[:port]")
        kind = e.get("type")
        if kind == "basic" and isinstance(e.get("user"), str) and isinstance(
                e.get("password"), str) and set(e) == {"domains", "type", "user", "password"}:
            token = base64.b64encode(f"{e['user']}:{e['password']}".encode()).decode()
            header = f"Basic {token}"
        elif kind == "bearer" and isinstance(e.get("token"), str) and set(e) == {
                "domains", "type", "token"}:
            header = f"Bearer {e['token']}"
        else:
            raise ConfigError(f"{at}: expected type 'basic' with user and password, "
                              "or type 'bearer' with token")
        if any(c in header for c in "\r\n"):
            raise ConfigError(f"{at}: credentials may not hold line breaks")
        for d in e["domains"]:
            out[d.lower()] = header
    return out
