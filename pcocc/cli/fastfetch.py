"""``pcocc image fetch`` without click, and the body both parsers share.

A second fetch of an image that did not change is one conditional request (an ETag answered
304) or none at all (Cache-Control max-age), so its cost is pcocc's start-up, and importing
click and the command table is a large part of that. :func:`fast_fetch` recognises
``[GLOBAL] image fetch [OPTS] REF`` with the options below before click is imported and runs
it; anything else (``--help``, an option not known here, the security options set from
the environment, a second operand) returns None and goes through click, which reports
errors. tests/unit/test_fastfetch.py checks that both parsers agree.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcocc.cli.fastrun import _GLOBAL, _options, session_of

if TYPE_CHECKING:
    from pcocc.cli.session import Session

#: global options of ``pcocc`` known here (those of fastrun, and the security ones)
GLOBAL = {
    **_GLOBAL,
    "--insecure-options": ("insecure_options", True, True),
    "--insecure-skip-verify": ("insecure_skip_verify", False),
    "--trust-keys-from-https": ("trust_keys_from_https", False),
    "--dir": ("data_dir", True),
}
#: environment variables click reads for global options: set, click parses the line
_ENV = ("PCOCC_INSECURE_OPTIONS", "PCOCC_TRUST_KEYS_FROM_HTTPS", "PCOCC_DIR")
#: options of ``pcocc image fetch``: option -> (parameter, takes a value, repeatable)
FETCH = {
    "--signature": ("signature", True, False),
    "--label": ("labels", True, True),
    "--no-store": ("no_store", False, False),
    "--store-only": ("store_only", False, False),
    "--full": ("full", False, False),
    "--dest": ("dest", True, False),
}
LABEL_KEYS = ("version", "os", "arch", "ext")


def parse(argv: list[str]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(global options, fetch options)`` of ``pcocc [GLOBAL] image fetch [OPTS] REF``,
    with the names of the click parameters (``ref`` the operand); None when click must
    parse the line."""
    if any(os.environ.get(v) for v in _ENV):
        return None
    glob: dict[str, Any] = {}
    i = _options(argv, 0, GLOBAL, glob)
    if i is None or argv[i:i + 2] != ["image", "fetch"]:
        return None
    opts: dict[str, Any] = {}
    j = _options(argv, i + 2, FETCH, opts)
    if j is None or j != len(argv) - 1:
        return None
    opts["ref"] = argv[j]
    return glob, opts


def run_fetch(session: Session, ref: str, signature: Path | None, labels: tuple[str, ...],
              no_store: bool, store_only: bool, full: bool, dest: str | None) -> None:
    """``pcocc image fetch``, from the options of either parser."""
    from pcocc.errors import UsageError
    from pcocc.repo.reposet import RepoSet
    from pcocc.trust.fetch import FetchRequest, trust_store
    from pcocc.trust.fetch import fetch as do_fetch

    parsed = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or key not in LABEL_KEYS or not value:
            raise UsageError(f"--label {item!r}: expected KEY=VALUE with KEY one of "
                             + ", ".join(LABEL_KEYS))
        parsed[key] = value
    req = FetchRequest(ref, signature, parsed, no_store, store_only, dest)
    store = trust_store(session.security, Path(session.system_dir))
    done = do_fetch(RepoSet(session.config.repos), req, session.security, store,
                    session.notify)
    if not session.quiet:
        session.notify(done.meta.ref)
    sys.stdout.write((done.meta.image_id if full else done.meta.short_id) + "\n")
    sys.stdout.flush()


def fast_fetch(argv: list[str]) -> int | None:
    """Run ``argv`` if it is a ``pcocc image fetch`` this module parses; its exit status
    (0), or None to let click handle the command line."""
    parsed = parse(argv)
    if parsed is None:
        return None
    glob, opts = parsed
    session = session_of(
        glob,
        security_args=(
            (*glob.get("insecure_options", ()),
             *(("image",) if glob.get("insecure_skip_verify") else ())),
            glob.get("trust_keys_from_https", False),
            glob.get("data_dir") or "",
        ),
    )
    signature = opts.get("signature")
    run_fetch(session, opts["ref"], Path(signature) if signature else None,
              opts.get("labels", ()), opts.get("no_store", False),
              opts.get("store_only", False), opts.get("full", False), opts.get("dest"))
    return 0
