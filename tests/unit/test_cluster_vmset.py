"""The one parser of VM sets (vm3, vm[0-3,7], -i 0-3,7), fed hostile input."""

from __future__ import annotations

import pytest

from pcocc.cluster.vmset import (
    check_in_cluster,
    format_vm_set,
    looks_like_vm_set,
    parse_vm_set,
    split_vm_set,
)
from pcocc.cluster.vmstate import MAX_RANK
from pcocc.errors import NotFound, UsageError


@pytest.mark.parametrize(
    ("text", "ranks"),
    [
        ("vm0", (0,)),
        ("vm12", (12,)),
        ("3", (3,)),
        ("0-3,7", (0, 1, 2, 3, 7)),
        ("vm[0-3,7]", (0, 1, 2, 3, 7)),
        ("vm[7,0-2,1]", (0, 1, 2, 7)),
        ("vm[5]", (5,)),
        ("vm[2-2]", (2,)),
        (f"0-{MAX_RANK}", tuple(range(MAX_RANK + 1))),
    ],
)
def test_valid_sets(text, ranks):
    assert parse_vm_set(text) == ranks


@pytest.mark.parametrize(
    "text",
    [
        "", "vm", "vm[]", "vm[", "vm]", "vm[0-3", "vm0-3]", "vmx", "vm-1", "-1", "1-", "-",
        "3-1", "vm[3-1]", "1,,2", ",1", "1,", " 1", "1 ", "1 - 2", "+1", "01", "vm01",
        "1e3", "0x1", "١", "vm[١]", "²", "1-2-3", "vm[[1]]", "vm[1];rm -rf /", "1\n2",
        "vm1\x00", str(MAX_RANK + 1), f"0-{MAX_RANK + 1}", "9" * 40, "0-" + "9" * 400,
        "1," * 2000, "all", "vm*",
    ],
)
def test_hostile_sets_are_refused_in_one_line(text):
    with pytest.raises(UsageError) as err:
        parse_vm_set(text)
    message = str(err.value)
    assert "\n" not in message.replace("\\n", "") and len(message) < 200


def test_looks_like_vm_set():
    assert looks_like_vm_set("vm0") and looks_like_vm_set("vm[0-3]")
    assert not looks_like_vm_set("info") and not looks_like_vm_set("query-status")


def test_check_in_cluster_names_the_missing_vm():
    check_in_cluster((0, 3), 4, "77")
    with pytest.raises(NotFound) as err:
        check_in_cluster((0, 5, 9), 4, "77")
    assert "vm5 does not exist in cluster 77" in str(err.value)
    assert err.value.hint == "its VMs are vm[0-3]"


@pytest.mark.parametrize(
    ("ranks", "text"),
    [((3,), "vm3"), ((0, 1, 2, 3, 7), "vm[0-3,7]"), ((1, 3, 5), "vm[1,3,5]"), ((0, 1), "vm[0-1]")],
)
def test_format_round_trips(ranks, text):
    assert format_vm_set(ranks) == text
    assert parse_vm_set(text) == ranks


@pytest.mark.parametrize(
    ("index", "words", "chosen", "rest"),
    [
        (None, [], None, []),
        (None, ["info", "status"], None, ["info", "status"]),
        (None, ["vm[1-2]", "info", "status"], (1, 2), ["info", "status"]),
        ("0-1", ["query-status"], (0, 1), ["query-status"]),
        ("vm3", [], (3,), []),
    ],
)
def test_split_vm_set(index, words, chosen, rest):
    assert split_vm_set(index, words) == (chosen, rest)


def test_split_vm_set_refuses_both_forms_and_bad_words():
    with pytest.raises(UsageError, match="either with -i or as 'vm1', not both"):
        split_vm_set("0", ["vm1", "info"])
    with pytest.raises(UsageError, match="is not a VM set"):
        split_vm_set(None, ["vm[0-", "info"])
