"""HTTPS downloads for trust and fetch (http.client with a verifying SSL context).

Plain HTTP and unchecked certificates are allowed only when the caller says so (from
``--insecure-options``); a redirect may not go from HTTPS to HTTP unless HTTP is allowed.

http.client rather than urllib: a second fetch answered 304 is mostly start-up, and
urllib.request costs more to import than the request takes. The proxy variables
(``https_proxy``, ``no_proxy``...) are honoured as urllib does (urllib reads them, only
when one is set). A request is :func:`request` (status and headers), then :func:`save` of
its body, so that a caller decides what to do with a body only once it knows one comes.
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urljoin, urlsplit

from pcocc.errors import PcoccError, UsageError

if TYPE_CHECKING:
    import http.client

_CHUNK = 1 << 20
_HEAD = 1 << 16  # enough to tell what a body is (:func:`save`)
_TIMEOUT_S = 60.0
_MAX_REDIRECTS = 10
_REDIRECTS = (301, 302, 303, 307, 308)


class StatusError(PcoccError):
    """The server answered with an error status (404...), unlike a refused connection."""


@dataclass(frozen=True)
class Transport:
    """What a download may relax."""

    allow_http: bool = False
    verify_tls: bool = True


class Sink(Protocol):
    """A body's consumer other than a file (:func:`save`): ``receive(stream)`` reads the
    body from ``stream.read(n)`` in a second thread, while this one reads the socket."""

    def receive(self, stream: Any) -> None: ...


@dataclass
class Response:
    url: str           # the final URL, after redirects
    status: int
    headers: dict[str, str]
    verified_https: bool
    #: the file the body was written to, and the sha256 (hex) of what was written
    path: Path | None = None
    sha256: str | None = None
    #: the unread body (None after a 304, or once saved or closed)
    body: http.client.HTTPResponse | None = field(default=None, repr=False)
    conn: http.client.HTTPConnection | None = field(default=None, repr=False)

    def header(self, name: str) -> str | None:
        """A header's value, its name in any case."""
        name = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == name), None)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.body = self.conn = None

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_url(url: str, transport: Transport) -> None:
    scheme = urlsplit(url).scheme
    if scheme == "https" or (scheme == "http" and transport.allow_http):
        return
    if scheme == "http":
        raise UsageError(f"{url}: plain HTTP is refused",
                         hint="use https://, or allow it with --insecure-options=http")
    raise UsageError(f"{url}: only https:// URLs can be downloaded")


@functools.lru_cache(maxsize=2)
def _context(verify: bool) -> ssl.SSLContext:
    """One client context per process (the signature and the image share it). Without
    ``$SSL_CERT_FILE``, the CA certificates come from OpenSSL's hashed directory, which
    it reads lazily (the one CA a handshake needs), when it has one: loading the whole
    bundle takes OpenSSL 3 tens of milliseconds, more than a loopback fetch."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    paths = ssl.get_default_verify_paths()
    capath = os.environ.get(paths.openssl_capath_env) or paths.openssl_capath
    if not os.environ.get(paths.openssl_cafile_env) and _hashed_dir(capath):
        ctx.load_verify_locations(capath=capath)
    else:
        ctx.load_default_certs()
    return ctx


def _hashed_dir(path: str | None) -> bool:
    """Whether ``path`` holds certificates under OpenSSL's hash names (``1a2b3c4d.0``)."""
    try:
        with os.scandir(path or "") as it:
            return any(len(e.name) == 10 and e.name[8:] == ".0" for e in it)
    except OSError:
        return False


def _proxy(parts: Any) -> str | None:
    """The proxy for a URL from the environment, as urllib chooses it (None: direct)."""
    if not any(k.lower().endswith("_proxy") for k in os.environ):
        return None
    import urllib.request

    if urllib.request.proxy_bypass_environment(parts.hostname or ""):
        return None
    return urllib.request.getproxies_environment().get(parts.scheme)


def _connect(url: str, transport: Transport) -> tuple[http.client.HTTPConnection, str]:
    """A connection for ``url`` (not opened yet) and the request target to send."""
    import http.client

    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    proxy = _proxy(parts)
    host, port = parts.hostname or "", parts.port
    if proxy is not None:
        pparts = urlsplit(proxy if "://" in proxy else "http://" + proxy)
        phost, pport = pparts.hostname or "", pparts.port
        if parts.scheme == "http":  # through the proxy, the absolute URL
            return http.client.HTTPConnection(phost, pport, timeout=_TIMEOUT_S), url
        conn = http.client.HTTPSConnection(phost, pport, timeout=_TIMEOUT_S,
                                           context=_context(transport.verify_tls))
        conn.set_tunnel(host, port)
        return conn, target
    if parts.scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=_TIMEOUT_S,
                                           context=_context(transport.verify_tls)), target
    return http.client.HTTPConnection(host, port, timeout=_TIMEOUT_S), target


def request(url: str, transport: Transport, *, headers: dict[str, str] | None = None,
            auth: Callable[[str], str | None] | None = None) -> Response:
    """GET ``url``, following redirects (each checked like ``url``; credentials follow
    only to their host: ``auth(url)`` gives the Authorization header for a URL). A 304 is
    returned as is; other non-2xx answers are errors. A 2xx Response holds the unread
    body: :func:`save` it or close it."""
    check_url(url, transport)
    for _ in range(_MAX_REDIRECTS + 1):
        sent = dict(headers or {})
        header = auth(url) if auth else None
        if header:
            sent["Authorization"] = header
        conn, target = _connect(url, transport)
        try:
            conn.request("GET", target, headers=sent)
            resp = conn.getresponse()
        except ssl.SSLCertVerificationError as err:
            conn.close()
            raise PcoccError(f"{url}: the server's certificate is not trusted "
                             f"({err.verify_message})",
                             hint="fix the server or the CA bundle, or (at your own risk) "
                                  "--insecure-options=tls") from err
        except (OSError, ValueError) as err:
            conn.close()
            raise PcoccError(f"{url}: cannot download: {err}") from err
        except BaseException:
            conn.close()
            raise
        info = Response(url, resp.status, dict(resp.getheaders()),
                        urlsplit(url).scheme == "https" and transport.verify_tls,
                        body=resp, conn=conn)
        if 200 <= resp.status < 300:
            return info
        info.close()
        if resp.status == 304:
            return info
        location = info.header("Location")
        if resp.status in _REDIRECTS and location:
            url = urljoin(url, location)
            check_url(url, transport)
            continue
        raise StatusError(f"{url}: the server answered {resp.status} {resp.reason}")
    raise PcoccError(f"{url}: more than {_MAX_REDIRECTS} redirects")


def save(resp: Response, dest: Path | Callable[[bytes], Path | Sink],
         tee: Callable[[bytes], None] | None = None) -> None:
    """Write the body of ``resp`` into ``dest``, a new private file hashed on the way
    (``resp.path``, ``resp.sha256``); ``dest`` may be a function of the body's first
    bytes giving that file, or a :class:`Sink` that takes the body instead. ``tee`` also
    gets every chunk (a signature check reading along). Closes ``resp``."""
    body = resp.body
    if body is None:
        raise PcoccError(f"{resp.url}: the server answered {resp.status} without a body")
    try:
        first = body.read(_HEAD)
        target = dest(first) if callable(dest) else dest
        if isinstance(target, Path):
            resp.path = target
            resp.sha256 = _save(first, body, target, tee)
        else:
            _feed(first, body, target, tee)
    except OSError as err:
        raise PcoccError(f"{resp.url}: download interrupted: {err}") from err
    finally:
        resp.close()


def download(url: str, dest: Path | Callable[[bytes], Path | Sink] | None,
             transport: Transport, *, headers: dict[str, str] | None = None,
             max_bytes: int | None = None, auth: Callable[[str], str | None] | None = None,
             tee: Callable[[bytes], None] | None = None) -> tuple[Response, bytes]:
    """:func:`request` then :func:`save` into ``dest``, or into memory when ``dest`` is
    None (up to ``max_bytes``, returned)."""
    with request(url, transport, headers=headers, auth=auth) as resp:
        if resp.body is None:  # 304
            return resp, b""
        if dest is not None:
            save(resp, dest, tee)
            return resp, b""
        limit = max_bytes or (1 << 20)
        try:
            body = resp.body.read(limit + 1)
        except OSError as err:
            raise PcoccError(f"{url}: download interrupted: {err}") from err
        if len(body) > limit:
            raise PcoccError(f"{url}: the answer is larger than {limit} bytes")
        return resp, body


def _save(first: bytes, body: Any, path: Path, tee: Callable[[bytes], None] | None) -> str:
    """Write the body into a new private file ``path``; its sha256 (hex). Hashing and
    ``tee`` run in a second thread, next to the reads and writes of this one (all of them
    release the GIL), so that they add little to the download's time."""
    import hashlib

    h = hashlib.sha256()

    def digest(chunk: bytes) -> None:
        h.update(chunk)
        if tee is not None:
            tee(chunk)

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as out, _Worker(digest) as worker:
        chunk = first
        while chunk and not worker.failed:
            out.write(chunk)
            worker.put(chunk)
            chunk = body.read(_CHUNK)
    return h.hexdigest()


def _feed(first: bytes, body: Any, sink: Sink, tee: Callable[[bytes], None] | None) -> None:
    """Hand the body to ``sink.receive`` in a second thread; this one reads the socket."""
    stream = _Stream(tee)
    worker = _Worker(run=lambda: stream.run(sink))
    stream.bind(worker.get)
    with worker:
        chunk = first
        while chunk and not worker.failed:
            worker.put(chunk)
            chunk = body.read(_CHUNK)


class _Worker:
    """A thread that gets the chunks ``put`` here; its first error is raised on exit
    (after which it only drains the queue, so that ``put`` never blocks)."""

    def __init__(self, each: Callable[[bytes], None] | None = None,
                 run: Callable[[], None] | None = None):
        import queue
        import threading

        self.chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self.failed: list[BaseException] = []
        self._each = each
        self._run = run or self._loop
        self._done = False
        self._thread = threading.Thread(target=self._main, name="pcocc-download",
                                        daemon=True)

    def get(self) -> bytes | None:
        """The next chunk, None at the end."""
        chunk = self.chunks.get()
        self._done = chunk is None
        return chunk

    def _loop(self) -> None:
        while (chunk := self.get()) is not None:
            self._each(chunk)  # type: ignore[misc]

    def _main(self) -> None:
        try:
            self._run()
        except BaseException as err:  # noqa: BLE001 - raised again in the caller's thread
            self.failed.append(err)
        while not self._done:
            self.get()

    def put(self, chunk: bytes) -> None:
        self.chunks.put(chunk)

    def __enter__(self) -> _Worker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.chunks.put(None)
        self._thread.join()
        if self.failed and exc[0] is None:
            raise self.failed[0]


class _Stream:
    """A file-like view of the chunks of a :class:`_Worker`, for a :class:`Sink`: each
    chunk goes to ``tee`` as it is taken; what the sink leaves unread is drained (and
    teed) after it returns."""

    def __init__(self, tee: Callable[[bytes], None] | None):
        self._tee = tee
        self._buf = memoryview(b"")
        self._get: Callable[[], bytes | None] = lambda: None
        self._eof = False

    def bind(self, get: Callable[[], bytes | None]) -> None:
        self._get = get

    def _next(self) -> bool:
        if self._eof:
            return False
        chunk = self._get()
        if chunk is None:
            self._eof = True
            return False
        if self._tee is not None:
            self._tee(chunk)
        self._buf = memoryview(chunk)
        return True

    def read(self, n: int = -1) -> bytes:
        if not self._buf and not self._next():
            return b""
        if n < 0 or n >= len(self._buf):
            out, self._buf = bytes(self._buf), memoryview(b"")
            return out
        out, self._buf = bytes(self._buf[:n]), self._buf[n:]
        return out

    def run(self, sink: Sink) -> None:
        sink.receive(self)
        while self._next():
            pass
