"""Where pcocc finds its etcd login: environment, then batch.yaml's user and password-file."""

from __future__ import annotations

import os

import pytest

from pcocc.config import EtcdConfig
from pcocc.errors import ConfigError
from pcocc.kv.credentials import (
    etcd_login,
    new_password,
    read_password_file,
    write_password_file,
)


def _secret(path, text="s3cret\n", mode=0o600):
    path.write_text(text)
    path.chmod(mode)
    return path


def test_batch_yaml_user_and_password_file(tmp_path):
    pw = _secret(tmp_path / "pw")
    login = etcd_login(EtcdConfig.from_data({"user": "alice", "password-file": str(pw)}), {})
    assert (login.user, login.password) == ("alice", "s3cret")
    assert str(pw) in login.hint and "s3cret" not in login.hint
    assert "s3cret" not in repr(login)


def test_no_user_means_anonymous(tmp_path):
    assert etcd_login(EtcdConfig.from_data({"endpoints": ["h:1"]}), {}) is None
    assert etcd_login(EtcdConfig(), {}) is None


def test_environment_wins_over_batch_yaml(tmp_path):
    pw = _secret(tmp_path / "pw")
    conf = EtcdConfig.from_data({"user": "alice", "password-file": str(pw)})
    login = etcd_login(conf, {"PCOCC_ETCD_USER": "bob", "PCOCC_ETCD_PASSWORD": "envpw"})
    assert (login.user, login.password) == ("bob", "envpw")
    # a password from the environment, for the configured user: the file is not read
    pw.chmod(0o644)
    assert etcd_login(conf, {"PCOCC_ETCD_PASSWORD": "envpw"}).password == "envpw"


def test_relative_and_home_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _secret(tmp_path / "home-pw", "fromhome")
    home_file = EtcdConfig.from_data({"user": "a", "password-file": "~/home-pw"})
    assert etcd_login(home_file, {}).password == "fromhome"
    (tmp_path / "conf").mkdir()
    _secret(tmp_path / "conf" / "pw", "relative")
    relative = EtcdConfig.from_data({"user": "a", "password-file": "pw"}, tmp_path / "conf")
    login = etcd_login(relative, {})
    assert login.password == "relative"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_password_file_open_to_others_is_refused(tmp_path, mode):
    pw = _secret(tmp_path / "pw", mode=mode)
    with pytest.raises(ConfigError) as info:
        etcd_login(EtcdConfig.from_data({"user": "alice", "password-file": str(pw)}), {})
    message = str(info.value)
    assert str(pw) in message and f"chmod 600 {pw}" in message and "\n" not in message
    assert "s3cret" not in message
    assert info.value.exit_status == 2


def test_missing_password_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path / 'nope'} does not exist") as info:
        read_password_file(tmp_path / "nope")
    assert info.value.exit_status == 2


def test_unreadable_or_empty_password_file(tmp_path):
    if os.geteuid() != 0:
        pw = _secret(tmp_path / "pw", mode=0o000)
        with pytest.raises(ConfigError, match=f"cannot read etcd password file {pw}"):
            read_password_file(pw)
    empty = _secret(tmp_path / "empty", "")
    with pytest.raises(ConfigError, match="is empty"):
        read_password_file(empty)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_password_file(tmp_path)


def test_written_password_file_is_private_and_reads_back(tmp_path):
    password = new_password()
    assert len(password) >= 24 and password != new_password()
    path = tmp_path / "sub" / "alice.password"
    write_password_file(path, password)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_password_file(path) == password


def test_symlinked_password_file_is_checked_at_its_target(tmp_path):
    target = _secret(tmp_path / "target", "linked")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert read_password_file(link) == "linked"
    target.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_password_file(link)


def test_batch_yaml_placeholders_and_relative_password_file(tmp_path, monkeypatch):
    """What every pcocc process reads: user and password-file of the loaded batch.yaml."""
    from pcocc.config import load_config
    from pcocc.config.placeholders import user_name

    sysconf = tmp_path / "etc"
    sysconf.mkdir()
    (sysconf / "batch.yaml").write_text(
        'etcd:\n  endpoints: ["e1:2379"]\n  user: "%{user}"\n  password-file: "pw-%{user}"\n'
    )
    _secret(sysconf / f"pw-{user_name()}", "fromconfig")
    config = load_config(sysconf, tmp_path / "user")
    login = etcd_login(config.batch.etcd, {})
    assert (login.user, login.password) == (user_name(), "fromconfig")
    assert str(sysconf / f"pw-{user_name()}") in login.hint
