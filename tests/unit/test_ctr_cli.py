"""Command-line splitting of pcocc run and app naming."""

from __future__ import annotations

import pytest

from pcocc.cli.fastrun import split_apps
from pcocc.ctr.launch import app_names, exit_status
from pcocc.errors import UsageError


def test_split_apps():
    assert split_apps(["img"]) == [("img", [])]
    assert split_apps(["img", "--", "-x", "--", "y"]) == [("img", ["-x", "--", "y"])]
    assert split_apps(["a", "--", "1", "---", "b", "2", "---", "c"]) == [
        ("a", ["1"]),
        ("b", ["2"]),
        ("c", []),
    ]


@pytest.mark.parametrize("tokens", [["--", "x"], ["a", "---"], ["---", "b"]])
def test_split_apps_missing_image(tokens):
    with pytest.raises(UsageError, match="an image is missing"):
        split_apps(tokens)


def test_app_names_are_unique_and_readable():
    assert app_names(["/x/busybox", "/y/busybox/", "user:My_Img@3", "/a/b/rootfs"]) == [
        "busybox",
        "busybox-2",
        "my-img",
        "b",
    ]


def test_exit_status_of_signals():
    assert exit_status(3) == 3 and exit_status(-9) == 137
