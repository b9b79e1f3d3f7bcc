"""Split a command line between pcocc's own options and those of a tool it runs.

``pcocc alloc -p debug -c 2 tpl:2 -t 30`` mixes pcocc's options (``-c``) with salloc's
(``-p``, ``-t``); ``pcocc ssh -J web -L 8080:localhost:80 vm0`` mixes pcocc's (``-J``) with
ssh's. Both sides are getopt-style: to split the words right, the splitter must know, for
each option, whether it takes a value (``-t 30``, ``-t30``, ``--time 30``, ``--time=30``), a
value only when attached (``--exclusive[=user]``), or none (``--hold``, ``-Hk``). The tables
of the tools live with the code that runs them (:mod:`pcocc.batch.slurm_options`,
:mod:`pcocc.cluster.ssh_options`); this module is the walk over the words.

The words are only sorted, never joined, split or quoted: each ends up as one argv element.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


class Arity(enum.Enum):
    FLAG = "flag"  #: no value
    VALUE = "value"  #: a value, attached or in the next word
    OPTIONAL = "optional"  #: a value only when attached (``--nice=5``, ``-I5``)


@dataclass(frozen=True)
class OptionTable:
    """The options of one program: name (``-p`` or ``--partition``) -> arity."""

    program: str
    options: Mapping[str, Arity]

    @classmethod
    def of(
        cls,
        program: str,
        *,
        flags: Iterable[str] = (),
        values: Iterable[str] = (),
        optional: Iterable[str] = (),
    ) -> OptionTable:
        table: dict[str, Arity] = {}
        for names, arity in ((flags, Arity.FLAG), (values, Arity.VALUE),
                             (optional, Arity.OPTIONAL)):
            for name in names:
                if name in table:
                    raise ValueError(f"{program}: option {name} listed twice")
                table[name] = arity
        return cls(program, table)

    def arity(self, name: str) -> Arity | None:
        return self.options.get(name)


@dataclass
class Split:
    """The words of a command line, sorted.

    ``own``: pcocc's options with their values; ``tool``: the tool's options (and options
    neither side knows) with their values, in their order; ``positional``: the operands;
    ``unknown``: the options neither table knows (passed on in ``tool``).
    """

    own: list[str] = field(default_factory=list)
    tool: list[str] = field(default_factory=list)
    positional: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def split_args(
    args: Sequence[str],
    own: OptionTable,
    tool: OptionTable,
    *,
    interspersed: bool,
    after_double_dash: str = "tool",
) -> Split:
    """Sort ``args`` into pcocc's options, the tool's options and operands.

    ``own`` wins when both tables know an option. ``interspersed``: options may follow
    operands (as GNU getopt allows, e.g. ``alloc tpl:2 -t 30``); otherwise the first
    operand ends the options and every later word is an operand (ssh's command, scp's
    files). ``after_double_dash``: where the words after ``--`` go, ``"tool"`` (alloc and
    batch: ``-- SLURM_OPTIONS``) or ``"positional"`` (ssh, scp: ``--`` itself is kept for
    the tool, before the operands).

    An option neither table knows goes to the tool as it is (the tool reports it), taking
    no value unless attached (``--opt=value``, ``-Xvalue``).
    """
    out = Split()
    words = list(args)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            if after_double_dash == "tool":
                out.tool += words[i:]
            else:
                out.tool.append("--")
                out.positional += words[i:]
            break
        if not word.startswith("-") or word == "-":
            out.positional.append(word)
            if not interspersed:
                out.positional += words[i:]
                break
            continue
        if word.startswith("--"):
            i = _long(word, words, i, own, tool, out)
        else:
            i = _short(word, words, i, own, tool, out)
    return out


def _long(word: str, words: list[str], i: int, own: OptionTable, tool: OptionTable,
          out: Split) -> int:
    name, eq, _value = word.partition("=")
    for table, dest in ((own, out.own), (tool, out.tool)):
        arity = table.arity(name)
        if arity is None:
            continue
        dest.append(word)
        if arity is Arity.VALUE and not eq and i < len(words):
            dest.append(words[i])
            return i + 1
        return i
    out.tool.append(word)
    out.unknown.append(name)
    return i


def _short(word: str, words: list[str], i: int, own: OptionTable, tool: OptionTable,
           out: Split) -> int:
    """A cluster of short options (``-Hk``, ``-t30``, ``-p debug``), letter by letter."""
    pos = 1
    while pos < len(word):
        name = "-" + word[pos]
        rest = word[pos + 1 :]
        for table, dest in ((own, out.own), (tool, out.tool)):
            arity = table.arity(name)
            if arity is None:
                continue
            if arity is Arity.FLAG:
                dest.append(name)
                pos += 1
                break
            if rest:
                dest.append(name + rest)  # -t30, -I5: the value is the rest of the word
                return i
            dest.append(name)
            if arity is Arity.VALUE and i < len(words):
                dest.append(words[i])
                return i + 1
            return i
        else:
            out.tool.append("-" + word[pos:])  # unknown: the rest of the word, as it is
            out.unknown.append(name)
            return i
    return i
