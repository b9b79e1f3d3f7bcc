"""Is an image file signed by a key trusted for its name? One place decides."""

from __future__ import annotations

import logging
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
    what = origin or str(data)
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
    verdict = gpg.verify([k.path for k in needed.keys], data, signature)
    if not verdict.ok:
        raise SignatureRefused(f"{what}: signature refused: {verdict.reason}; image {name} "
                               f"needs a signature by {scope}", hint=hint)
    log.info("signature of %s verified: key %s %s", what, verdict.key, verdict.signer)
    return verdict
