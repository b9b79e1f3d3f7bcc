"""Pure parts of the etcd user administration (the etcd side is in tests/integration)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from pcocc.cli.app import cli
from pcocc.errors import UsageError
from pcocc.kv.admin import (
    default_root_password_file,
    default_user_password_file,
    prefix_range_end,
    user_role,
)


def test_prefix_range_end_covers_exactly_the_prefix():
    end = prefix_range_end("/pcocc/users/alice/")
    assert end == b"/pcocc/users/alice0"
    assert b"/pcocc/users/alice/x" < end and b"/pcocc/users/alice/\xff" < end
    assert not b"/pcocc/users/alice0" < end and not b"/pcocc/users/alicex" < end
    assert prefix_range_end("") == b"\0"


def test_roles_are_named_after_valid_user_names():
    assert user_role("alice") == "pcocc-user-alice"
    for bad in ("a/b", "", "..", "x\0"):
        with pytest.raises(UsageError, match="invalid user name"):
            user_role(bad)
        with pytest.raises(UsageError):
            default_user_password_file(Path("/etc/pcocc"), bad)


def test_default_password_files_live_in_the_system_dir():
    assert default_root_password_file(Path("/etc/pcocc")) == Path("/etc/pcocc/etcd-root.password")
    assert default_user_password_file(Path("/etc/pcocc"), "bob") == Path(
        "/etc/pcocc/etcd-users/bob.password"
    )


def test_admin_group_is_visible_with_its_commands():
    runner = CliRunner()
    assert "admin" in runner.invoke(cli, ["--help"]).output
    out = runner.invoke(cli, ["admin", "etcd-user", "--help"]).output
    assert all(cmd in out for cmd in ("add", "remove", "list"))
    out = runner.invoke(cli, ["admin", "etcd-auth", "--help"]).output
    assert "enable" in out and "status" in out
    res = runner.invoke(cli, ["admin", "etcd-user", "add"])
    assert res.exit_code == 2 and "Missing argument 'USER'" in res.output
