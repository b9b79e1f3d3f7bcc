"""Getting a key to trust: from a file, an HTTPS URL, or by meta discovery of a prefix, and
storing it after review.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pcocc.errors import NotFound, PcoccError, UsageError
from pcocc.trust import discovery, gpg, http
from pcocc.trust.settings import Security
from pcocc.trust.store import TrustStore

MAX_KEY_BYTES = 1 << 20


@dataclass(frozen=True)
class KeySource:
    origin: str              # the file or URL, for messages
    path: Path               # a local copy
    verified_https: bool     # came over HTTPS with a checked certificate


def _key_transport(security: Security) -> http.Transport:
    relaxed = security.allows("pubkey")
    return http.Transport(allow_http=relaxed, verify_tls=not relaxed)


@contextmanager
def open_sources(args: list[str], prefix: str | None, security: Security,
                 notify: Callable[[str], None]) -> Iterator[list[KeySource]]:
    """Local copies of the keys named by ``args`` (files or URLs), or found by discovery of
    ``prefix`` when ``args`` is empty."""
    with tempfile.TemporaryDirectory(prefix="pcocc-keys-") as tmp:
        urls_or_files = list(args)
        if not urls_or_files:
            if prefix is None:
                raise UsageError("--root needs a key file or URL (no discovery for root keys)")
            urls_or_files = discover(prefix, security, notify)
        out = []
        for i, arg in enumerate(urls_or_files):
            if "://" in arg:
                if urlsplit(arg).scheme not in ("https", "http"):
                    raise UsageError(f"{arg}: keys come from a file or an https:// URL")
                dest = Path(tmp) / f"key{i}"
                resp, body = http.download(arg, None, _key_transport(security),
                                           max_bytes=MAX_KEY_BYTES)
                dest.write_bytes(body)
                out.append(KeySource(arg, dest, resp.verified_https))
            else:
                p = Path(arg)
                if not p.is_file():
                    raise NotFound(f"{arg}: no such key file")
                out.append(KeySource(arg, p, False))
        yield out


def discover(prefix: str, security: Security, notify: Callable[[str], None]) -> list[str]:
    """The key URLs published for ``prefix`` by meta discovery."""
    transport = http.Transport(allow_http=False, verify_tls=not security.allows("tls"))
    tags = discovery.find(prefix, "ac-discovery-pubkeys", transport, notify)
    return [t.target for t in tags]


def trust_keys(store: TrustStore, source: KeySource, prefix: str | None, security: Security,
               review: Callable[[KeySource, gpg.KeyInfo], bool] | None) -> list[Path]:
    """Store the keys of ``source`` for ``prefix`` (None: root) after ``review`` said yes to
    each (``review`` None: no review). A key downloaded over verified HTTPS (or any
    download with --insecure-options=pubkey) needs no review with --trust-keys-from-https."""
    keys = gpg.show_keys(source.path)
    auto = security.trust_keys_from_https and "://" in source.origin and (
        source.verified_https or security.allows("pubkey"))
    chosen = []
    for key in keys:
        if key.revoked and store.holds(key.fingerprint):
            # a revocation of a key already trusted: every stored copy gets it
            store.refresh(source.path, key.fingerprint)
            raise PcoccError(f"{source.origin}: key {key.fingerprint} is revoked: images "
                             "it signed are no longer accepted")
        if key.revoked or key.expired:
            raise PcoccError(f"{source.origin}: key {key.fingerprint} is "
                             f"{'revoked' if key.revoked else 'expired'}: not trusted")
        if auto or review is None or review(source, key):
            chosen.append(key.fingerprint)
    if not chosen:
        return []
    return store.add(source.path, chosen, prefix)
