"""Is an image file signed by a key trusted for its name? One place decides."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pcocc.errors import PcoccError
from pcocc.trust import gpg
from pcocc.trust.store import TrustStore

log = logging.getLogger(__name__)


class SignatureRefused(PcoccError):
    """An image is unsigned, tampered, or signed by a key that is not trusted for it."""


def check_signature(store: TrustStore, name: str, data: Path, signature: Path | None,
                    *, origin: str = "") -> gpg.Verdict:
    """Accept ``data`` as image ``name`` only if ``signature`` is a valid detached signature
    by a key trusted for the longest trusted prefix covering ``name`` or by a root key.

    :raise SignatureRefused: naming the prefix (and key) that would be needed
    """
    keys, judge = _prepare(store, name, signature, origin or str(data))
    return judge(gpg.verify(keys, data, signature))  # type: ignore[arg-type]


@contextmanager
def streaming_check(store: TrustStore, name: str, signature: Path | None, *, origin: str
                    ) -> Iterator[tuple[Callable[[bytes], None], Callable[[], gpg.Verdict]]]:
    """:func:`check_signature` of data fed chunk by chunk while it downloads: yields
    ``(feed, result)``; ``result()`` gives the verdict or raises SignatureRefused. Refuses
    before any byte is fed when the image is unsigned or no key is trusted for it."""
    keys, judge = _prepare(store, name, signature, origin)
    with gpg.streaming_verify(keys, signature) as (feed, result):  # type: ignore[arg-type]
        yield feed, lambda: judge(result())


def _prepare(store: TrustStore, name: str, signature: Path | None, what: str
             ) -> tuple[list[Path], Callable[[gpg.Verdict], gpg.Verdict]]:
    """The keys that may sign ``name`` and the judge of gpgv's verdict; refuses at once
    an unsigned image and one for which no key is trusted."""
    needed = store.needed_for(name)
    scope = (f'keys trusted for prefix "{needed.prefix}" or root keys' if needed.prefix
             else "root keys (no key is trusted for a prefix of it)")
    hint = (f"if you trust its signer, run 'pcocc trust --prefix {name} KEY' "
            f"(or --prefix of a parent), or skip the check with --insecure-options=image")
    if signature is None:
        raise SignatureRefused(f"{what}: image {name} is not signed", hint=hint)
    if not needed.keys:
        raise SignatureRefused(
            f"{what}: no key is trusted for image {name} (no prefix of it, no root key)",
            hint=hint)

    def judge(verdict: gpg.Verdict) -> gpg.Verdict:
        if not verdict.ok:
            raise SignatureRefused(f"{what}: signature refused: {verdict.reason}; image "
                                   f"{name} needs a signature by {scope}", hint=hint)
        log.info("signature of %s verified: key %s %s", what, verdict.key, verdict.signer)
        return verdict

    return [k.path for k in needed.keys], judge
