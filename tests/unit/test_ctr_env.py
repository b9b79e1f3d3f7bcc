"""Environment precedence of pcocc run and NAME=VALUE parsing."""

from __future__ import annotations

import pytest

from pcocc.ctr.env import merge_env, parse_assignment, read_env_file
from pcocc.errors import NotFound, UsageError


def test_precedence_later_layers_win(tmp_path):
    f1 = tmp_path / "one.env"
    f1.write_text("# comment\n\nFILE=one\nHOSTVAR=from-file\nBOTH=file1\n")
    f2 = tmp_path / "two.env"
    f2.write_text("BOTH=file2\n")
    env = merge_env(
        image_env=["PATH=/img", "IMG=image", "CONF=image", "HOSTVAR=image"],
        config_env={"CONF": "config", "SET": "config"},
        host_env={"HOSTVAR": "host", "PATH": "/host"},
        env_files=[f1, f2],
        set_env=["SET=explicit", "EMPTY=", "EQ=a=b"],
    )
    assert env == {
        "PATH": "/host",
        "IMG": "image",
        "CONF": "config",
        "HOSTVAR": "from-file",
        "FILE": "one",
        "BOTH": "file2",
        "SET": "explicit",
        "EMPTY": "",
        "EQ": "a=b",
    }


def test_without_inherit_env_the_host_is_not_used():
    env = merge_env(image_env=["A=1"], host_env=None, set_env=["B=2"])
    assert env == {"A": "1", "B": "2"}


@pytest.mark.parametrize("bad", ["NOVALUE", "=x", "1A=x", "A-B=x", ""])
def test_bad_assignment_names_the_option(bad):
    with pytest.raises(UsageError, match=r"--set-env: .* is not NAME=VALUE"):
        merge_env(set_env=[bad])


def test_env_file_error_names_file_and_line(tmp_path):
    f = tmp_path / "bad.env"
    f.write_text("OK=1\nthis is wrong\n")
    with pytest.raises(UsageError, match=rf"{f}:2: 'this is wrong' is not NAME=VALUE"):
        read_env_file(f)


def test_missing_env_file(tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        read_env_file(tmp_path / "nope")


def test_parse_assignment_keeps_equal_signs():
    assert parse_assignment("X=a=b", "x") == ("X", "a=b")
