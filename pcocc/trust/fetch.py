"""``pcocc image fetch``: get an image from a name (meta discovery), an https:// or file://
URL, or a docker:// registry, check its detached signature against the trust store, and
import it into a repository with the usual import code (atomic, locked).

What was fetched is remembered per reference in ``<dir>/fetch-cache/`` (URL, ETag, expiry,
the image it became), so that a second fetch asks the server only when Cache-Control's
max-age has run out, sends If-None-Match, and downloads nothing on 304.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from pcocc import paths, timing
from pcocc.errors import NotFound, PcoccError, UsageError
from pcocc.fsutil import write_atomic
from pcocc.trust.prefix import NAME_RE, check_name, split_version
from pcocc.trust.settings import Security

if TYPE_CHECKING:  # the 304 path of a second fetch imports neither the store nor gpg,
    # and a fresh or --store-only one not even urllib and ssl
    from pcocc.repo.meta import ImageMeta
    from pcocc.repo.ocistream import LayoutReceiver
    from pcocc.repo.reposet import RepoSet
    from pcocc.trust import auth, http
    from pcocc.trust.store import TrustStore

log = logging.getLogger(__name__)

DEFAULT_EXT = "qcow2"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


@dataclass
class FetchRequest:
    ref: str
    signature: Path | None = None
    labels: dict[str, str] = field(default_factory=dict)
    no_store: bool = False
    store_only: bool = False
    #: the local image ([REPO:]NAME); default: the last component of the name
    dest: str | None = None


@dataclass
class Fetched:
    meta: ImageMeta
    from_store: bool
    signer: str | None = None   # fingerprint of the key that signed it (None: not checked)


@dataclass
class _Target:
    name: str                  # the name trust is checked for
    url: str                   # where the image is
    sig_url: str | None        # where its signature is (None: --signature or file://)


def fetch(repos: RepoSet, req: FetchRequest, security: Security,
          store: Callable[[], TrustStore], notify: Callable[[str], None]) -> Fetched:
    """Fetch ``req`` into ``repos``; ``store()`` gives the trust store when a signature
    must be checked."""
    if req.no_store and req.store_only:
        raise UsageError("--no-store and --store-only contradict each other")
    if req.ref.startswith("docker://"):
        return _fetch_docker(repos, req, security, notify)
    timing.mark("fetch: imported, options read", started="fetch: process started")
    rec_path = _record_path(security, req.ref)
    rec = None if req.no_store else _read_record(rec_path, repos)
    if req.store_only:
        if rec is None:
            raise NotFound(f"{req.ref}: not in the store (never fetched, or deleted since)",
                           hint="fetch it once without --store-only")
        return Fetched(rec[1], True)
    if rec is not None and rec[0].get("expires", 0) > time.time():
        notify(f"{req.ref}: using {rec[1].ref} (still fresh by Cache-Control)")
        return Fetched(rec[1], True)
    target = _target(req, security, notify)
    if target.url.startswith("file://"):
        return _fetch_local(repos, req, target, security, store, notify)
    from pcocc.trust import auth, http

    transport = http.Transport(allow_http=security.allows("http"),
                               verify_tls=not security.allows("tls"))
    creds = auth.load(security.dir)
    etag = rec[0].get("etag") if rec is not None and rec[0].get("url") == target.url else None
    resp = None
    if etag:  # ask first: the signature is needed only when the image changed
        notify(f"fetching image from {target.url}")
        resp = http.request(target.url, transport, headers={"If-None-Match": etag},
                            auth=creds.header_for)
        if resp.status == 304 and rec is not None:
            timing.mark("fetch: 304 received")
            _write_record(rec_path, {**rec[0], "expires": _expires(resp.headers)})
            notify(f"{req.ref}: unchanged on the server (ETag): using {rec[1].ref}")
            return Fetched(rec[1], True)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pcocc-fetch-") as tmp, \
            contextlib.ExitStack() as staged:
        if resp is not None:
            staged.enter_context(resp)
        place = _Placement(repos, req, target, staged)
        resp, signer = _receive(target, place, resp, Path(tmp), req, security, store,
                                transport, creds, notify)
        meta = place.import_(resp.sha256)
        timing.mark("fetch: imported into the repository")
    _write_record(rec_path, {"ref": req.ref, "url": target.url,
                             "etag": resp.header("ETag") or "",
                             "expires": _expires(resp.headers), "repo": meta.repo,
                             "name": meta.name, "revision": meta.revision,
                             "image_id": meta.image_id})
    timing.mark("fetch: record written")
    return Fetched(meta, False, signer)


def _fetch_local(repos: RepoSet, req: FetchRequest, target: _Target, security: Security,
                 store: Callable[[], TrustStore], notify: Callable[[str], None]) -> Fetched:
    """A file:// image, checked and imported where it is."""
    data = _local(target.url)
    signer = None
    if security.allows("image"):
        notify("warning: image signature verification has been disabled")
    else:
        sig = req.signature
        if sig is None:
            local_sig = data.with_name(data.name + ".asc")
            sig = local_sig if local_sig.is_file() else None
        from pcocc.trust.verify import check_signature

        verdict = check_signature(store(), target.name, data, sig, origin=target.url)
        notify(f"signature verified: {verdict.signer} ({verdict.key})")
        signer = verdict.key
    with contextlib.ExitStack() as staged:
        meta = _Placement(repos, req, target, staged).import_file(data)
    return Fetched(meta, False, signer)


def trust_store(security: Security, system_dir: Path) -> Callable[[], TrustStore]:
    """The ``store`` argument of :func:`fetch`: the user's and the system's trust
    directories, opened only when a signature is checked."""
    def store() -> TrustStore:
        from pcocc.trust.store import TrustStore

        return TrustStore(security.trust_dir, system_dir / "trustedkeys")

    return store


def fetch_missing(repos: RepoSet, ref: str, security: Security,
                  store: Callable[[], TrustStore], notify: Callable[[str], None]) -> ImageMeta:
    """The image ``ref`` (a URL or a discoverable name) became when it was fetched before,
    without touching the network; else fetch it now, with the same checks as
    ``pcocc image fetch``. ``pcocc run`` and templates use it: what was fetched once is
    not asked for again (``pcocc image fetch`` updates it)."""
    rec = _read_record(_record_path(security, ref), repos)
    if rec is not None:
        return rec[1]
    notify(f"{ref}: not in a repository, fetching it")
    return fetch(repos, FetchRequest(ref), security, store, notify).meta


def _target(req: FetchRequest, security: Security, notify: Callable[[str], None]) -> _Target:
    ref = req.ref
    if ref.startswith("file://"):
        path = Path(unquote(urlsplit(ref).path))
        return _Target(_name_of_path(path.name), ref, None)
    if ref.startswith(("https://", "http://")):
        parts = urlsplit(ref)
        if parts.query or parts.fragment:
            raise UsageError(f"{ref}: image URLs take no query or fragment")
        host = parts.netloc.lower()
        stem = re.sub(r"(\.[A-Za-z0-9]+)+$", "", parts.path)
        name = (host + stem).lower()
        if not NAME_RE.match(name):
            raise UsageError(f"{ref}: cannot make an image name of this URL (for trust)",
                             hint="name the image (meta discovery) instead of its URL")
        return _Target(name, ref, ref + ".asc")
    if "://" in ref:
        raise UsageError(f"{ref}: unknown transport",
                         hint="use NAME[:VERSION], https://, file:// or docker://")
    import platform

    from pcocc.trust import discovery

    name, version = split_version(ref)
    labels = {"version": version or "latest", "os": "linux",
              "arch": _ARCH.get(platform.machine(), platform.machine()), "ext": DEFAULT_EXT,
              **req.labels, "name": name}
    from pcocc.trust import http

    transport = http.Transport(allow_http=False, verify_tls=not security.allows("tls"))
    notify(f"searching for app image {name}:{labels['version']}")
    tags = discovery.find(name, "ac-discovery", transport, notify)
    for t in sorted(tags, key=lambda t: -len(t.prefix)):
        url = discovery.expand(t.target, labels)
        sig = discovery.expand(t.target, {**labels, "ext": labels["ext"] + ".asc"})
        if url and sig:
            return _Target(name, url, sig)
    raise NotFound(f"meta discovery of {name}: no template can be filled with the labels "
                   + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())),
                   hint="give the missing ones with --label KEY=VALUE")


def _name_of_path(filename: str) -> str:
    stem = re.sub(r"(\.[A-Za-z0-9]+)+$", "", filename).lower()
    return check_name(stem, what="image name (from the file name)")


def _local(url: str) -> Path:
    path = Path(unquote(urlsplit(url).path))
    if not path.is_file():
        raise NotFound(f"{url}: no such file")
    return path


def _signature(target: _Target, tmp: Path, req: FetchRequest, transport: http.Transport,
               creds: auth.Credentials, notify: Callable[[str], None]) -> Path | None:
    """The detached signature: --signature, else URL.asc downloaded (None: there is none)."""
    if req.signature is not None or target.sig_url is None:
        return req.signature
    from pcocc.trust import http

    sig = tmp / "image.asc"
    notify(f"downloading signature from {target.sig_url}")
    try:
        http.download(target.sig_url, sig, transport, auth=creds.header_for)
    except http.StatusError as err:  # other errors (TLS...) are not "unsigned"
        log.info("no signature: %s", err)
        return None
    return sig


def _receive(target: _Target, place: _Placement, resp: http.Response | None, tmp: Path,
             req: FetchRequest, security: Security, store: Callable[[], TrustStore],
             transport: http.Transport, creds: auth.Credentials,
             notify: Callable[[str], None]) -> tuple[http.Response, str | None]:
    """Download the image into ``place`` with gpgv reading along (one pass over the data,
    no second read). ``resp``: the answer to a conditional request, whose body is still
    unread; else the image is asked for once its signature is there, so that an
    unsigned image, or one no key is trusted for, is refused before its download."""
    from pcocc.trust import http

    def get() -> http.Response:
        notify(f"fetching image from {target.url}")
        return http.request(target.url, transport, auth=creds.header_for)

    if security.allows("image"):
        notify("warning: image signature verification has been disabled")
        resp = resp or get()
        http.save(resp, place)
        return resp, None
    from pcocc.trust.verify import streaming_check

    http.check_url(target.url, transport)  # a refused URL is said before its signature's
    sig = _signature(target, tmp, req, transport, creds, notify)
    timing.mark("fetch: signature downloaded")
    with streaming_check(store(), target.name, sig, origin=target.url) as (feed, result):
        resp = resp or get()
        http.save(resp, place, tee=feed)
        timing.mark("fetch: image downloaded (gpgv reading along)")
        verdict = result()
        timing.mark("fetch: gpgv verdict")
    notify(f"signature verified: {verdict.signer} ({verdict.key})")
    return resp, verdict.key or ""


def _format(path: Path) -> str:
    """The import format of a downloaded file, from its contents."""
    import tarfile

    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"QFI\xfb":
        return "qcow2"
    try:
        with tarfile.open(path) as tar:
            names = set(tar.getnames()[:10000])
    except (tarfile.TarError, OSError):
        raise UsageError(f"{path.name}: unknown image format (neither qcow2 nor an OCI or "
                         "docker archive)") from None
    if "oci-layout" in names or "./oci-layout" in names:
        return "oci-archive"
    if "manifest.json" in names or "./manifest.json" in names:
        return "docker-archive"
    raise UsageError("the downloaded tar archive is neither an OCI nor a docker archive")


def _local_name(name: str) -> str:
    return name.rsplit("/", 1)[-1].replace("~", "_").replace(":", "_")


class _Placement:
    """Where a fetched image goes: a new image, or the next revision of the image an
    earlier fetch of the same URL made (never over another image). As a ``dest`` of
    :func:`http.download`, the file to write, in a staging directory of that repository
    (so that it can become a blob by a rename), chosen only when a body comes."""

    def __init__(self, repos: RepoSet, req: FetchRequest, target: _Target,
                 staged: contextlib.ExitStack):
        self.repos, self.staged = repos, staged
        self.origin = f"fetched from {target.url}"
        self.dest = req.dest or _local_name(target.name)
        self.again: bool | None = None
        self.received: Path | LayoutReceiver | None = None

    def _resolve(self) -> None:
        if self.again is None:
            try:
                _, existing = self.repos.resolve(self.dest)
            except NotFound:
                existing = None
            self.again = existing is not None and existing.description == self.origin
            if self.again:
                self.dest = f"{existing.repo}:{existing.name}"

    def __call__(self, head: bytes) -> Path | LayoutReceiver:
        """Where a body starting with ``head`` goes: an OCI archive as a layout whose
        blobs are hashed as they arrive, anything else into one file."""
        from pcocc.repo import ops, ocistream

        self._resolve()
        staging = self.staged.enter_context(ops.staging_for(self.repos, self.dest))
        if ocistream.is_oci_archive(head):
            self.received = ocistream.LayoutReceiver(staging / "layout")
            return self.received
        self.received = staging / "image"
        return self.received

    def import_(self, sha256: str | None) -> ImageMeta:
        """Import what a download wrote (:meth:`__call__`); ``sha256``: the digest of the
        file, computed while we wrote it in our staging directory."""
        from pcocc.repo import ops

        self._resolve()
        got = self.received
        if isinstance(got, Path) and sha256 is not None:
            return ops.import_hashed(self.repos, got, "sha256:" + sha256, _format(got),
                                     self.dest, description=self.origin,
                                     new_image=not self.again)
        if got is None or isinstance(got, Path):
            raise PcoccError(f"{self.origin}: nothing was downloaded")
        return ops.import_received(self.repos, got.root, got.written, self.dest,
                                   description=self.origin, new_image=not self.again)

    def import_file(self, data: Path) -> ImageMeta:
        """Import ``data``, a file:// image, read where it is."""
        from pcocc.repo import ops

        self._resolve()
        return ops.import_image(self.repos, f"{_format(data)}:{data}", self.dest,
                                description=self.origin, new_image=not self.again)


def _fetch_docker(repos: RepoSet, req: FetchRequest, security: Security,
                  notify: Callable[[str], None]) -> Fetched:
    """A docker:// image through skopeo; the registry's basic credentials of
    ``auth.json`` reach skopeo in a private file (:func:`auth.registry_authfile`)."""
    from pcocc.errors import ToolError
    from pcocc.repo import ops
    from pcocc.trust import auth

    if not security.allows("image"):
        raise UsageError(f"{req.ref}: docker images cannot be signature-checked",
                         hint="fetch it with --insecure-options=image (or "
                              "--insecure-skip-verify) if you trust the registry")
    if req.store_only or req.signature:
        raise UsageError("--store-only and --signature do not apply to docker:// images")
    notify("warning: image signature verification has been disabled")
    ref = req.ref[len("docker://"):]
    dest = req.dest or _local_name(ref.split("@")[0].rsplit(":", 1)[0]
                                   if "/" in ref else ref.split(":")[0])
    registry = ref.split("/", 1)[0] if "/" in ref else ""
    creds = auth.load(security.dir)
    with auth.registry_authfile(creds, registry.lower()) as authfile:
        try:
            meta = ops.import_image(repos, req.ref, dest, authfile=authfile,
                                    tls_verify=False if security.allows("tls") else None)
        except ToolError as err:
            if "unauthorized" not in str(err).lower():
                raise
            have = "were refused" if authfile else f"are not in {security.dir / auth.FILE_NAME}"
            raise PcoccError(f"{req.ref}: the registry {registry} asks for credentials, "
                             f"which {have}",
                             hint=f"add basic credentials for {registry} to "
                                  f"{security.dir / auth.FILE_NAME} (mode 0600)") from err
    return Fetched(meta, False)


# ---- records of what was fetched

def _record_path(security: Security, ref: str) -> Path:
    return security.fetch_cache_dir / (hashlib.sha256(ref.encode()).hexdigest() + ".json")


def _read_record(path: Path, repos: RepoSet) -> tuple[dict, ImageMeta] | None:
    """The record of a reference and the image it made, if that image still exists."""
    try:
        rec = json.loads(path.read_text())
        _, meta = repos.resolve(f"{rec['repo']}:{rec['name']}@{int(rec['revision'])}")
    except (OSError, ValueError, KeyError, TypeError, PcoccError):
        return None
    if meta.image_id != rec.get("image_id"):
        return None
    return rec, meta


def _write_record(path: Path, rec: dict) -> None:
    paths.private_dir(path.parent, what="fetch cache directory")
    write_atomic(path, json.dumps(rec, sort_keys=True), 0o600)


def _expires(headers: dict[str, str]) -> float:
    """When a download may be reused without asking (Cache-Control max-age), or 0."""
    cc = ",".join(v for k, v in headers.items() if k.lower() == "cache-control").lower()
    if "no-cache" in cc or "no-store" in cc:
        return 0.0
    m = re.search(r"(?:^|[,\s])max-age=(\d{1,9})", cc)
    return time.time() + int(m.group(1)) if m else 0.0
