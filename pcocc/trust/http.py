"""HTTPS downloads for trust and fetch (urllib with a verifying SSL context).

Plain HTTP and unchecked certificates are allowed only when the caller says so (from
``--insecure-options``); a redirect may not go from HTTPS to HTTP unless HTTP is allowed.
"""

from __future__ import annotations

import os
import ssl
import urllib.error
from collections.abc import Callable
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pcocc.errors import PcoccError, UsageError

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0


class StatusError(PcoccError):
    """The server answered with an error status (404...), unlike a refused connection."""


@dataclass(frozen=True)
class Transport:
    """What a download may relax."""

    allow_http: bool = False
    verify_tls: bool = True


@dataclass
class Response:
    url: str           # the final URL, after redirects
    status: int
    headers: dict[str, str]
    verified_https: bool
    #: the file the body was written to, and the sha256 (hex) of what was written
    path: Path | None = None
    sha256: str | None = None


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Checks each redirect like the first URL; credentials follow only to their host."""

    def __init__(self, transport: Transport, auth: Callable[[str], str | None] | None):
        self.transport = transport
        self.auth = auth

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        check_url(newurl, self.transport)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.remove_header("Authorization")
            header = self.auth(newurl) if self.auth else None
            if header:
                new.add_unredirected_header("Authorization", header)
        return new


def check_url(url: str, transport: Transport) -> None:
    scheme = urlsplit(url).scheme
    if scheme == "https" or (scheme == "http" and transport.allow_http):
        return
    if scheme == "http":
        raise UsageError(f"{url}: plain HTTP is refused",
                         hint="use https://, or allow it with --insecure-options=http")
    raise UsageError(f"{url}: only https:// URLs can be downloaded")


def _opener(transport: Transport, auth: Callable[[str], str | None] | None = None
            ) -> urllib.request.OpenerDirector:
    ctx = ssl.create_default_context()
    if not transport.verify_tls:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx),
                                       _Redirects(transport, auth))


def download(url: str, dest: Path | Callable[[], Path] | None, transport: Transport, *,
             headers: dict[str, str] | None = None, max_bytes: int | None = None,
             auth: Callable[[str], str | None] | None = None,
             tee: Callable[[bytes], None] | None = None,
             ) -> tuple[Response, bytes]:
    """GET ``url`` into ``dest`` (or into memory when ``dest`` is None, up to ``max_bytes``),
    hashing it on the way (``Response.sha256``). ``dest`` may be a function giving the
    path, called only when there is a body to write.

    A 304 answer is returned as is (nothing written). Other non-2xx answers are errors.
    ``auth(url)`` gives the Authorization header for a URL (checked again on redirects);
    ``tee`` also gets each chunk written to ``dest`` (a signature check reading along).
    """
    check_url(url, transport)
    req = urllib.request.Request(url, headers=dict(headers or {}))
    header = auth(url) if auth else None
    if header:
        req.add_unredirected_header("Authorization", header)
    try:
        resp = _opener(transport, auth).open(req, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 304:
            return Response(err.geturl(), 304, dict(err.headers.items()),
                            urlsplit(err.geturl()).scheme == "https" and transport.verify_tls
                            ), b""
        raise StatusError(f"{url}: the server answered {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise PcoccError(f"{url}: the server's certificate is not trusted "
                             f"({reason.verify_message})",
                             hint="fix the server or the CA bundle, or (at your own risk) "
                                  "--insecure-options=tls") from err
        raise PcoccError(f"{url}: cannot download: {reason}") from err
    except (OSError, ValueError) as err:
        raise PcoccError(f"{url}: cannot download: {err}") from err
    with resp:
        final = resp.geturl()
        info = Response(final, resp.status, dict(resp.headers.items()),
                        urlsplit(final).scheme == "https" and transport.verify_tls)
        body = b""
        try:
            if dest is None:
                limit = max_bytes or (1 << 20)
                body = resp.read(limit + 1)
                if len(body) > limit:
                    raise PcoccError(f"{url}: the answer is larger than {limit} bytes")
            else:
                info.path = dest() if callable(dest) else dest
                info.sha256 = _save(resp, info.path, tee)
        except OSError as err:
            raise PcoccError(f"{url}: download interrupted: {err}") from err
    return info, body


def _save(resp, path: Path, tee: Callable[[bytes], None] | None) -> str:  # noqa: ANN001
    """Write the body into a new private file ``path``; its sha256 (hex). Hashing and
    ``tee`` run in a second thread, next to the reads and writes of this one (all of them
    release the GIL), so that they add little to the download's time."""
    import hashlib
    import queue
    import threading

    h = hashlib.sha256()
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
    failed: list[BaseException] = []

    def digest() -> None:
        while (chunk := chunks.get()) is not None:
            if not failed:
                try:
                    h.update(chunk)
                    if tee is not None:
                        tee(chunk)
                except BaseException as err:  # noqa: BLE001 - raised again below
                    failed.append(err)

    worker = threading.Thread(target=digest, name="pcocc-hash", daemon=True)
    worker.start()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as out:
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                chunks.put(chunk)
    finally:
        chunks.put(None)
        worker.join()
    if failed:
        raise failed[0]
    return h.hexdigest()
