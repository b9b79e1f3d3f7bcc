"""The GnuPG calls of the trust store, and the parser of ``gpgv --status-fd`` output.

Every gpg runs with a throwaway ``--homedir`` (never the user's ~/.gnupg): keys are read with
``--import-options show-only``, stored by ``--export`` from a scratch keyring, and checked by
``gpgv`` against a keyring holding exactly the keys trusted for the image's prefix.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pcocc import proc
from pcocc.errors import UsageError

_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class KeyInfo:
    """A public key as gpg lists it."""

    fingerprint: str
    uids: tuple[str, ...]
    expired: bool = False
    revoked: bool = False

    @property
    def spaced(self) -> str:
        """The fingerprint in groups of four, as people compare them."""
        f = self.fingerprint
        groups = [f[i:i + 4] for i in range(0, len(f), 4)]
        half = len(groups) // 2
        return " ".join(groups[:half]) + "  " + " ".join(groups[half:])


@contextmanager
def scratch_home() -> Iterator[Path]:
    """A private, empty GnuPG home removed afterwards (gpg-agent is never needed: only
    public keys are handled)."""
    with tempfile.TemporaryDirectory(prefix="pcocc-gpg-") as tmp:
        os.chmod(tmp, 0o700)
        yield Path(tmp)


def parse_colons(text: str) -> list[KeyInfo]:
    """The primary keys of ``gpg --with-colons`` output."""
    keys: list[KeyInfo] = []
    cur: dict | None = None

    def flush() -> None:
        if cur and cur.get("fpr"):
            keys.append(KeyInfo(cur["fpr"], tuple(cur["uids"]), cur["validity"] == "e",
                                cur["validity"] == "r"))

    for line in text.splitlines():
        f = line.split(":")
        if f[0] == "pub":
            flush()
            cur = {"validity": f[1] if len(f) > 1 else "", "uids": [], "fpr": None}
        elif cur is None:
            continue
        elif f[0] == "fpr" and cur["fpr"] is None and len(f) > 9:  # the primary's, first
            cur["fpr"] = f[9].upper()
        elif f[0] == "uid" and len(f) > 9:
            cur["uids"].append(_unescape_colons(f[9]))
    flush()
    return [k for k in keys if k.fingerprint]


def _unescape_colons(value: str) -> str:
    """gpg escapes ':' and control characters in colon listings as \\xHH; keep them escaped
    except the colon, so that a hostile user ID cannot write control characters."""
    return value.replace("\\x3a", ":")


def show_keys(key_file: Path) -> list[KeyInfo]:
    """The public keys in ``key_file`` (armored or binary), without importing them."""
    with scratch_home() as home:
        res = proc.run(["gpg", "--homedir", home, "--batch", "--no-tty", "--with-colons",
                        "--with-fingerprint", "--import-options", "show-only", "--import",
                        key_file], check=False, timeout_s=_TIMEOUT_S, what="gpg")
    keys = parse_colons(res.stdout)
    if not keys:
        raise UsageError(f"{key_file}: no OpenPGP public key found in it",
                         hint="give an armored (.asc) or binary (.gpg) public key file")
    return keys


def export_keys(key_file: Path, fingerprints: Sequence[str], out_dir: Path) -> dict[str, Path]:
    """Import ``key_file`` into a scratch keyring and write each key of ``fingerprints`` in
    binary form to ``out_dir/<fingerprint>``; returns fingerprint -> file."""
    out: dict[str, Path] = {}
    with scratch_home() as home:
        proc.run(["gpg", "--homedir", home, "--batch", "--no-tty", "--quiet",
                  "--import-options", "no-import-clean", "--import", key_file],
                 timeout_s=_TIMEOUT_S, what="gpg --import")
        for fpr in fingerprints:
            dest = out_dir / fpr
            proc.run(["gpg", "--homedir", home, "--batch", "--no-tty", "--yes",
                      "--output", dest, "--export", fpr],
                     timeout_s=_TIMEOUT_S, what="gpg --export")
            if not dest.is_file() or dest.stat().st_size == 0:
                raise UsageError(f"{key_file}: key {fpr} could not be exported")
            out[fpr] = dest
    return out


@dataclass(frozen=True)
class Verdict:
    """What gpgv said about one detached signature."""

    ok: bool
    #: the primary key fingerprint of a valid signature, else the key ID gpgv named
    key: str | None
    #: why it is refused (empty when ok)
    reason: str = ""
    signer: str = ""


def parse_status(text: str, returncode: int) -> Verdict:
    """Decide on ``gpgv --status-fd`` lines. Accept only a VALIDSIG with a GOODSIG, no
    other signature, and no BADSIG/EXPSIG/EXPKEYSIG/REVKEYSIG/ERRSIG; a zero exit status
    alone is never enough (gpgv exits 0 for a good signature by an expired key)."""
    status: dict[str, list[list[str]]] = {}
    for line in text.splitlines():
        if not line.startswith("[GNUPG:] "):
            continue
        words = line[len("[GNUPG:] "):].split(" ")
        status.setdefault(words[0], []).append(words[1:])

    def first(kw: str) -> list[str] | None:
        return status[kw][0] if status.get(kw) else None

    def who(words: list[str] | None) -> tuple[str | None, str]:
        if not words:
            return None, ""
        return words[0], " ".join(words[1:])

    if first("BADSIG"):
        key, uid = who(first("BADSIG"))
        return Verdict(False, key, "the signature does not match the file: it was modified, "
                       "or the signature is for another file", uid)
    if first("REVKEYSIG"):
        key, uid = who(first("REVKEYSIG"))
        return Verdict(False, key, f"it is signed by key {key}, which is revoked", uid)
    if first("EXPKEYSIG"):
        key, uid = who(first("EXPKEYSIG"))
        return Verdict(False, key, f"it is signed by key {key}, which has expired", uid)
    if first("EXPSIG"):
        key, uid = who(first("EXPSIG"))
        return Verdict(False, key, "the signature has expired", uid)
    if first("ERRSIG") or first("NO_PUBKEY"):
        err = first("ERRSIG") or []
        key = (first("NO_PUBKEY") or err or [None])[0]
        if first("NO_PUBKEY") or (len(err) > 5 and err[5] == "9"):
            return Verdict(False, key, f"it is signed by key {key}, which is not trusted for it")
        return Verdict(False, key, "the signature cannot be checked (unsupported or corrupt)")
    valid, good = first("VALIDSIG"), first("GOODSIG")
    if (len(status.get("NEWSIG", [])) > 1 or len(status.get("VALIDSIG", [])) > 1):
        return Verdict(False, None, "the signature file holds several signatures; "
                       "give one detached signature")
    if returncode != 0 or not valid or not good:
        return Verdict(False, None, "no valid OpenPGP signature")
    primary = valid[9] if len(valid) > 9 else valid[0]
    return Verdict(True, primary.upper(), "", " ".join(good[1:]))


def _gpgv_argv(home: Path, keyrings: Sequence[Path], signature: Path, data: str | Path
               ) -> list[str | Path]:
    ring = home / "trusted.gpg"
    with open(ring, "wb") as out:
        for path in keyrings:
            out.write(path.read_bytes())
    return ["gpgv", "--homedir", home, "--status-fd", "1", "--keyring", ring,
            "--", signature, data]


def verify(keyrings: Sequence[Path], data: Path, signature: Path) -> Verdict:
    """Check the detached ``signature`` of ``data`` with gpgv against exactly the keys in
    ``keyrings`` (binary key files, concatenated into one scratch keyring)."""
    with scratch_home() as home:
        res = proc.run(_gpgv_argv(home, keyrings, signature, data), check=False,
                       timeout_s=3600.0, what="gpgv")
    return parse_status(res.stdout, res.returncode)


@contextmanager
def streaming_verify(keyrings: Sequence[Path], signature: Path
                     ) -> Iterator[tuple[Callable[[bytes], None], Callable[[], Verdict]]]:
    """:func:`verify` of data given chunk by chunk (gpgv reads it on its stdin while it is
    downloaded): yields ``(feed, result)``; ``result()`` ends the input and gives the
    verdict. Leaving the block without ``result()`` kills gpgv."""

    with scratch_home() as home:
        child = proc.spawn(_gpgv_argv(home, keyrings, signature, "-"), stdin=proc.PIPE,
                           stdout=proc.PIPE)
        assert child.stdin is not None and child.stdout is not None
        broken: list[bool] = []

        def feed(chunk: bytes) -> None:
            if not broken:
                try:
                    child.stdin.write(chunk)  # type: ignore[union-attr]
                except BrokenPipeError:  # gpgv gave up early: result() says why
                    broken.append(True)

        def result() -> Verdict:
            try:
                child.stdin.close()  # type: ignore[union-attr]
            except BrokenPipeError:
                pass
            out = child.stdout.read().decode(errors="replace")  # type: ignore[union-attr]
            return parse_status(out, child.wait())

        try:
            yield feed, result
        finally:
            if child.returncode is None:
                proc.stop(child, 0.0)
            child.stdout.close()
            try:
                child.stdin.close()
            except OSError:
                pass
