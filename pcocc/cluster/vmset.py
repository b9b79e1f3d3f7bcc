"""VM sets as users write them: ``vm3``, ``vm[0-3,7]``, or the ``-i`` form ``0-3,7``.

One strict parser for every command that acts on several VMs (exec, reset, monitor-cmd...).
Only ASCII digits, no leading zeros, no spaces, ranges low-high with low <= high, and no
rank above :data:`pcocc.cluster.vmstate.MAX_RANK`: anything else is a :class:`UsageError`
that quotes (a bounded part of) the text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pcocc.cluster.vmstate import MAX_RANK
from pcocc.errors import NotFound, UsageError

#: longer texts are refused before they are looked at
MAX_TEXT = 1024
_HINT = "write vm3, vm[0-3,7] or (with -i) 0-3,7"


def looks_like_vm_set(word: str) -> bool:
    """True for a word that means VMs (``vm...``), as opposed to a command word."""
    return word.startswith("vm")


def split_vm_set(index: str | None, words: Sequence[str]) -> tuple[tuple[int, ...] | None,
                                                                   list[str]]:
    """The VMs a command names, and its other words: ``-i RANGE`` (``index``), else a first
    word that names VMs (``vm3``, ``vm[0-3,7]``), else None (the command's default).

    :raise UsageError: a bad set, or both forms given
    """
    rest = list(words)
    given = rest.pop(0) if rest and looks_like_vm_set(rest[0]) else None
    if index is not None and given is not None:
        raise UsageError(f"give the VMs either with -i or as {_quote(given)}, not both")
    text = index if index is not None else given
    return (parse_vm_set(text) if text is not None else None), rest


def parse_vm_set(text: str) -> tuple[int, ...]:
    """The ranks of ``vmN``, ``vm[LIST]`` or a bare ``LIST`` (``0-3,7``), sorted, unique.

    :raise UsageError: naming the text and what is wrong
    """
    if len(text) > MAX_TEXT:
        raise UsageError(f"VM set {_quote(text)} is too long", hint=_HINT)
    body = text
    if body.startswith("vm"):
        body = body[2:]
        if body.startswith("[") and body.endswith("]"):
            body = body[1:-1]
        elif not _is_number(body):
            raise UsageError(f"{_quote(text)} is not a VM set", hint=_HINT)
    ranks: set[int] = set()
    for item in body.split(","):
        low_text, sep, high_text = item.partition("-")
        if not _is_number(low_text) or (sep and not _is_number(high_text)):
            raise UsageError(f"{_quote(text)} is not a VM set: bad item {_quote(item)}",
                             hint=_HINT)
        low = int(low_text)
        high = int(high_text) if sep else low
        if high > MAX_RANK:
            raise UsageError(f"VM set {_quote(text)}: vm{high} is beyond the last possible VM",
                             hint=f"VMs are numbered from 0 to at most {MAX_RANK}")
        if low > high:
            raise UsageError(f"VM set {_quote(text)}: range {_quote(item)} goes backwards",
                             hint=_HINT)
        ranks.update(range(low, high + 1))
    return tuple(sorted(ranks))


def _quote(text: str) -> str:
    """``text`` quoted for a message, cut to a readable length."""
    return repr(text) if len(text) <= 40 else f"{text[:40]!r}..."


def _is_number(text: str) -> bool:
    return (
        0 < len(text) <= 6
        and text.isascii()
        and text.isdigit()
        and (text == "0" or not text.startswith("0"))
    )


def check_in_cluster(ranks: Iterable[int], size: int, batchid: str) -> None:
    """:raise NotFound: a rank is not a VM of the cluster of ``size`` VMs"""
    missing = [r for r in ranks if r >= size]
    if missing:
        raise NotFound(
            f"vm{missing[0]} does not exist in cluster {batchid}",
            hint=f"its VMs are {format_vm_set(range(size))}",
        )


def format_vm_set(ranks: Iterable[int]) -> str:
    """``vm3`` or ``vm[0-3,7]``: the short form of a set of ranks."""
    ordered = sorted(set(ranks))
    if len(ordered) == 1:
        return f"vm{ordered[0]}"
    parts: list[str] = []
    start = prev = None
    for rank in [*ordered, None]:
        if prev is not None and rank == prev + 1:
            prev = rank
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = rank
    return f"vm[{','.join(parts)}]"
