"""Sizes written like ``512M``, ``20G``, ``1.5TiB`` or a plain number of bytes."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTPE]?)(i?)(B?)\s*$", re.IGNORECASE)
_POWERS = "KMGTPE"


def parse_size(value: int | str) -> int:
    """Bytes in ``value``. Suffixes are binary (K = 1024), as in Slurm and qemu-img.

    :raise ValueError: not a size
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    m = _SIZE.match(value) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"not a size: {value!r} (expected e.g. 512M, 20G)")
    number, unit = float(m.group(1)), m.group(2).upper()
    factor = 1024 ** (_POWERS.index(unit) + 1) if unit else 1
    return int(number * factor)


def format_size(size_bytes: int) -> str:
    """``21474836480`` -> ``20G``; exact multiples only get a suffix."""
    for power in reversed(range(len(_POWERS))):
        unit = 1024 ** (power + 1)
        if size_bytes and size_bytes % unit == 0:
            return f"{size_bytes // unit}{_POWERS[power]}"
    return str(size_bytes)
