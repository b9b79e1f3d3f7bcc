"""Splitting a command line between pcocc's options and salloc/sbatch's or ssh/scp's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pcocc.batch.slurm_options import SLURM_ALLOC_OPTIONS
from pcocc.cluster.ssh_options import SCP_OPTIONS, SSH_OPTIONS
from pcocc.optsplit import Arity, OptionTable, split_args

#: pcocc alloc's own options, as the click command declares them
ALLOC = OptionTable.of(
    "pcocc alloc",
    flags=("-h", "--help"),
    values=("-c", "--cores", "-E", "--command", "-J", "--jobname", "--job-name", "--image",
            "--mount", "--user-data"),
)
SSH_OWN = OptionTable.of("pcocc ssh", flags=("-h",), values=("-j", "-J", "--user", "-p"))
DATA = Path(__file__).parent / "data" / "slurm-22.05"


def alloc_split(*words):
    s = split_args(words, ALLOC, SLURM_ALLOC_OPTIONS, interspersed=True)
    return s.own, s.tool, s.positional


@pytest.mark.parametrize(("argv", "own", "tool", "positional"), [
    # pcocc 0.7's documented command lines
    (["-p", "debug", "-N", "2", "-t", "30", "tpl:2"], [], ["-p", "debug", "-N", "2", "-t", "30"],
     ["tpl:2"]),
    (["-c", "4", "--qos=test", "-J", "ubuntu", "tpl1:6,tpl2:2"], ["-c", "4", "-J", "ubuntu"],
     ["--qos=test"], ["tpl1:6,tpl2:2"]),
    # after the definition, long options with a separate value, attached short values
    (["tpl:4", "-p", "debug", "--qos", "normal", "-t30"], [],
     ["-p", "debug", "--qos", "normal", "-t30"], ["tpl:4"]),
    # a cluster of flags, then one that takes the rest of the word or the next one
    (["-HQp", "debug", "tpl:1"], [], ["-H", "-Q", "-p", "debug"], ["tpl:1"]),
    (["-Hc2", "tpl:1"], ["-c2"], ["-H"], ["tpl:1"]),
    # an optional value is only ever attached: the next word stays the definition
    (["--exclusive", "tpl:1", "-I"], [], ["--exclusive", "-I"], ["tpl:1"]),
    (["--exclusive=user", "-I30", "tpl:1"], [], ["--exclusive=user", "-I30"], ["tpl:1"]),
    # '--' still passes everything after it to Slurm
    (["tpl:1", "--", "-p", "debug", "weird"], [], ["-p", "debug", "weird"], ["tpl:1"]),
    # a value that looks like an option is a value
    (["-E", "-x", "-D", "-p", "tpl:1"], ["-E", "-x"], ["-D", "-p"], ["tpl:1"]),
    # --job-name is pcocc's -J
    (["--job-name=web", "tpl:1"], ["--job-name=web"], [], ["tpl:1"]),
])
def test_alloc_words_are_sorted(argv, own, tool, positional):
    assert alloc_split(*argv) == (own, tool, positional)


def test_unknown_options_go_to_slurm_as_they_are():
    s = split_args(["--no-such=1", "-Z", "-Yvalue", "tpl:1"], ALLOC, SLURM_ALLOC_OPTIONS,
                   interspersed=True)
    assert s.tool == ["--no-such=1", "-Z", "-Yvalue"]
    assert s.unknown == ["--no-such", "-Z", "-Y"]
    assert s.positional == ["tpl:1"]


def test_ssh_stops_at_the_destination():
    s = split_args(["-J", "web", "-L", "8888:localhost:8888", "-X", "-o", "User=a b;c",
                    "root@vm1", "ls", "-l", "-J"], SSH_OWN, SSH_OPTIONS, interspersed=False,
                   after_double_dash="positional")
    assert s.own == ["-J", "web"]
    assert s.tool == ["-L", "8888:localhost:8888", "-X", "-o", "User=a b;c"]
    assert s.positional == ["root@vm1", "ls", "-l", "-J"]


def test_ssh_double_dash_is_kept_before_the_operands():
    s = split_args(["-v", "--", "vm0", "-x"], SSH_OWN, SSH_OPTIONS, interspersed=False,
                   after_double_dash="positional")
    assert (s.tool, s.positional) == (["-v", "--"], ["vm0", "-x"])


def test_scp_recursive_and_port_values():
    s = split_args(["-J", "c", "-rP", "2222", "-l", "100", "dir", "vm0:"],
                   SSH_OWN, SCP_OPTIONS, interspersed=False, after_double_dash="positional")
    assert (s.own, s.tool, s.positional) == (
        ["-J", "c"], ["-r", "-P", "2222", "-l", "100"], ["dir", "vm0:"])


def test_a_table_refuses_an_option_listed_twice():
    with pytest.raises(ValueError, match="-p"):
        OptionTable.of("x", flags=["-p"], values=["-p"])


# The table against Slurm's own --help text (Slurm 22.05, the version of the dev cluster).
_HELP_LINE = re.compile(r"^\s+(?:-(\w),?\s+)?(--[\w-]+)(\[?=|\s\s|$)")
#: where --help says less than the man page: these take a value (salloc(1), sbatch(1))
_HELP_UNDERSTATES = {"--container": Arity.VALUE, "--export": Arity.VALUE, "--wrap": Arity.VALUE}


def _help_options(text):
    for line in text.splitlines():
        m = _HELP_LINE.match(line)
        if not m:
            continue
        short, long_, eq = m.groups()
        arity = {"  ": Arity.FLAG, "": Arity.FLAG, "=": Arity.VALUE, "[=": Arity.OPTIONAL}[eq]
        yield short, long_, _HELP_UNDERSTATES.get(long_, arity)


def _compatible(ours, theirs):
    # a flag and an optional value split the same way: neither takes the next word
    return ours == theirs or {ours, theirs} == {Arity.FLAG, Arity.OPTIONAL}


@pytest.mark.parametrize("program", ["salloc", "sbatch"])
def test_table_knows_every_option_of_slurm_help(program):
    found = list(_help_options((DATA / f"{program}-help.txt").read_text()))
    assert len(found) > 60
    for short, long_, arity in found:
        for name in filter(None, (long_, short and f"-{short}")):
            ours = SLURM_ALLOC_OPTIONS.arity(name)
            assert ours is not None, f"{program} {name} is missing from the table"
            assert _compatible(ours, arity), f"{program} {name}: {ours} in the table, {arity}"
