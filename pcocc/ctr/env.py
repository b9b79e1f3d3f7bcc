"""The environment of an app, with the precedence of ``pcocc run`` (later wins):

1. the image's ``Env``
2. containers.yaml ``env`` (and the env of selected modules)
3. the host environment, with ``--inherit-env``
4. ``--set-env-file`` files, in order
5. ``--set-env NAME=VALUE``, in order
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pcocc.errors import NotFound, UsageError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_assignment(text: str, where: str) -> tuple[str, str]:
    """``NAME=VALUE`` -> (NAME, VALUE); ``where`` names the source in errors."""
    name, sep, value = text.partition("=")
    if not sep or not _NAME.match(name):
        raise UsageError(
            f"{where}: '{text}' is not NAME=VALUE",
            hint="names are letters, digits and '_', not starting with a digit",
        )
    return name, value


def read_env_file(path: str | Path) -> dict[str, str]:
    """Read NAME=VALUE lines; blank lines and lines starting with '#' are skipped."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NotFound(f"--set-env-file: '{path}' does not exist") from None
    except OSError as err:
        raise UsageError(f"--set-env-file: cannot read '{path}': {err.strerror}") from err
    out: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, value = parse_assignment(line, f"{path}:{lineno}")
        out[name] = value
    return out


def merge_env(
    *,
    image_env: Iterable[str] = (),
    config_env: Mapping[str, str] | None = None,
    host_env: Mapping[str, str] | None = None,
    env_files: Sequence[str | Path] = (),
    set_env: Sequence[str] = (),
) -> dict[str, str]:
    """Apply the five layers in order; ``host_env`` is given only with ``--inherit-env``."""
    env: dict[str, str] = {}
    for item in image_env:
        name, sep, value = item.partition("=")
        if sep and name:
            env[name] = value
    env.update(config_env or {})
    env.update(host_env or {})
    for f in env_files:
        env.update(read_env_file(f))
    for item in set_env:
        name, value = parse_assignment(item, "--set-env")
        env[name] = value
    return env
