"""The global security settings of a pcocc invocation: ``--insecure-options``,
``--insecure-skip-verify``, ``--trust-keys-from-https`` and ``--dir``.

Each insecure value relaxes exactly what it names:

- ``http``: images, signatures and discovery pages may come over plain HTTP;
- ``tls``: HTTPS certificates of those servers are not checked;
- ``pubkey``: keys may come over plain HTTP or unchecked HTTPS (and, with
  ``--trust-keys-from-https``, are then trusted without review);
- ``image``: image signatures are not required (a warning says so);
- ``capabilities``, ``paths``, ``seccomp``: passed to ``pcocc run`` (see its
  ``--insecure-options``);
- ``ondisk``: refused: pcocc has no separate on-disk check of rendered images to disable
  (cache entries are keyed and checked by digest).

``all-fetch`` = image, tls, http; ``all-run`` = capabilities, paths, seccomp; ``all`` = both
and pubkey; ``none`` = nothing (the default).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pcocc.errors import UsageError

FETCH_SIDE = ("http", "image", "tls", "pubkey")
RUN_SIDE = ("capabilities", "paths", "seccomp")
GROUPS = {
    "none": (),
    "all-fetch": ("image", "tls", "http"),
    "all-run": RUN_SIDE,
    "all": (*FETCH_SIDE, *RUN_SIDE),
}
KNOWN = (*FETCH_SIDE, "ondisk", *RUN_SIDE, *GROUPS)


def parse_insecure(values: Iterable[str]) -> frozenset[str]:
    """Comma-separated (and repeated) ``--insecure-options`` values -> the set relaxed."""
    out: set[str] = set()
    for value in values:
        for item in (value or "").split(","):
            item = item.strip()
            if not item:
                continue
            if item in GROUPS:
                out.update(GROUPS[item])
            elif item == "ondisk":
                raise UsageError(
                    "--insecure-options=ondisk: pcocc has no on-disk check to disable "
                    "(unpacked images are keyed and verified by digest)",
                    hint="leave it out")
            elif item in FETCH_SIDE or item in RUN_SIDE:
                out.add(item)
            else:
                raise UsageError(f"--insecure-options: unknown value {item!r}",
                                 hint="choose among " + ", ".join(KNOWN))
    return frozenset(out)


@dataclass(frozen=True)
class Security:
    """What the library needs to know of the global options (plain values, no click)."""

    #: where the user trust store and the HTTP cache records live
    dir: Path
    insecure: frozenset[str] = field(default_factory=frozenset)
    trust_keys_from_https: bool = False

    def allows(self, what: str) -> bool:
        return what in self.insecure

    @property
    def run_side(self) -> tuple[str, ...]:
        """The values meant for ``pcocc run``."""
        return tuple(v for v in RUN_SIDE if v in self.insecure)

    @property
    def trust_dir(self) -> Path:
        return self.dir / "trustedkeys"

    @property
    def fetch_cache_dir(self) -> Path:
        return self.dir / "fetch-cache"


#: the configuration file of these settings, in the system and the user directories
FILE_NAME = "trust.yaml"
_KEYS = {"insecure-options", "trust-keys-from-https", "dir"}


def read_file(path: Path) -> dict:
    """The settings of one ``trust.yaml`` (empty when there is none), checked::

        insecure-options: http,tls      # or a list
        trust-keys-from-https: false
        dir: /path/to/dir
    """
    from pcocc.errors import ConfigError

    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from err
    import yaml  # only when there is a file: most runs have none

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict) or set(data) - _KEYS:
        raise ConfigError(f"{path}: expected a mapping with keys " + ", ".join(sorted(_KEYS)))
    opts = data.get("insecure-options", [])
    if isinstance(opts, str):
        opts = [opts]
    if not isinstance(opts, list) or not all(isinstance(o, str) for o in opts):
        raise ConfigError(f"{path}: insecure-options: expected a list of values")
    try:
        parse_insecure(opts)
    except UsageError as err:
        raise ConfigError(f"{path}: {err}", hint=err.hint) from err
    if not isinstance(data.get("trust-keys-from-https", False), bool):
        raise ConfigError(f"{path}: trust-keys-from-https: expected true or false")
    if "dir" in data and (not isinstance(data["dir"], str) or not data["dir"]):
        raise ConfigError(f"{path}: dir: expected a directory path")
    return {**data, "insecure-options": opts} if "insecure-options" in data else data


def resolve(system_dir: Path, user_dir: Path, insecure: tuple[str, ...], from_https: bool,
            data_dir: str | None) -> Security:
    """The settings of this invocation: the command line (or environment) wins over the
    user's trust.yaml, which wins over the system's."""
    merged: dict = {}
    for d in (system_dir, user_dir):
        merged.update(read_file(d / FILE_NAME))
    values = insecure or tuple(merged.get("insecure-options", ()))
    where = data_dir or merged.get("dir") or str(user_dir)
    return Security(Path(os.path.expanduser(where)), parse_insecure(values),
                    from_https or bool(merged.get("trust-keys-from-https", False)))
