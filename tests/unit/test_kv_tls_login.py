"""Pure logic of etcd logins and TLS settings: the job login's form, where a password may
go in clear, and the TLS files of batch.yaml's etcd section."""

from __future__ import annotations

import pytest

from pcocc.config import EtcdConfig
from pcocc.errors import ConfigError
from pcocc.kv.credentials import (
    JOB_LOGIN_VAR,
    EtcdLogin,
    check_login_transport,
    etcd_login,
    format_job_login,
    parse_job_login,
    read_job_login_file,
)
from pcocc.kv.endpoints import parse_endpoint
from pcocc.netaddr import is_loopback_host as is_loopback
from pcocc.kv.tls import TlsFiles, needs_tls, tls_from_config


def test_job_login_round_trips_and_is_private():
    login = parse_job_login(format_job_login("pcocc-job", "Xy_z-1"), "$V")
    assert (login.user, login.password, login.private) == ("pcocc-job", "Xy_z-1", True)
    assert "Xy_z-1" not in repr(login)


@pytest.mark.parametrize("text", ["", "nouser", ":pw", "user:", "us er:pw", "u:p w"])
def test_malformed_job_logins_are_refused_naming_the_place(text):
    with pytest.raises(ConfigError, match=r"\$PCOCC_ETCD_JOB_LOGIN does not hold"):
        parse_job_login(text, "$PCOCC_ETCD_JOB_LOGIN")


def test_the_job_login_in_the_environment_wins():
    env = {JOB_LOGIN_VAR: "pcocc-job:pw", "PCOCC_ETCD_USER": "alice", "PCOCC_ETCD_PASSWORD": "a"}
    login = etcd_login(EtcdConfig.from_data({"user": "bob"}), env)
    assert (login.user, login.private) == ("pcocc-job", True)
    env = {"PCOCC_ETCD_USER": "alice", "PCOCC_ETCD_PASSWORD": "a"}
    assert etcd_login(EtcdConfig(), env).private is False


def test_job_login_file_must_be_private(tmp_path):
    path = tmp_path / "etcd-login"
    path.write_text("pcocc-job:pw\n")
    path.chmod(0o600)
    assert read_job_login_file(path).password == "pw"
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="readable by group or others"):
        read_job_login_file(path)
    with pytest.raises(ConfigError, match="does not exist"):
        read_job_login_file(tmp_path / "missing")


def test_endpoints_parse_with_their_scheme():
    assert parse_endpoint("10.0.0.1:2379") == ("http", "10.0.0.1", 2379)
    assert parse_endpoint("https://etcd.example:2379").url == "https://etcd.example:2379"
    with pytest.raises(ConfigError, match="invalid etcd endpoint"):
        parse_endpoint("unix:///x")
    assert is_loopback("127.0.0.2") and is_loopback("localhost") and not is_loopback("10.0.0.1")
    assert needs_tls("http://a:1,https://b:2") and not needs_tls(["http://a:1"])


def test_a_password_never_goes_in_clear_to_a_remote_etcd():
    site = EtcdLogin("alice", "pw", "password file x")
    check_login_transport("http://127.0.0.1:2379", site)
    check_login_transport("https://10.0.0.1:2379", site)
    check_login_transport("http://10.0.0.1:2379", None)  # anonymous: nothing to protect
    with pytest.raises(ConfigError, match="refusing to send the etcd password of 'alice' in"
                       " clear to http://10.0.0.1:2379") as info:
        check_login_transport("http://10.0.0.1:2379", site)
    assert "ca-cert" in info.value.hint
    # a job's private etcd between the job's nodes: its one-job secret may
    check_login_transport("http://10.0.0.1:2379", EtcdLogin("pcocc-job", "pw", private=True))


def test_tls_settings_from_batch_yaml(tmp_path):
    assert tls_from_config(EtcdConfig.from_data({"endpoints": ["a:1"]})) is None
    files = {"ca-cert": "ca.pem", "cert": "~/c.pem", "key": "/k.pem"}
    tls = tls_from_config(EtcdConfig.from_data(files, tmp_path))
    assert tls.ca == tmp_path / "ca.pem" and tls.key.as_posix() == "/k.pem"
    assert tls.cert.is_absolute() and tls.cert.name == "c.pem"
    with pytest.raises(ConfigError, match="'cert' and 'key' go together"):
        tls_from_config(EtcdConfig.from_data({"ca-cert": "ca.pem", "cert": "c.pem"}))
    with pytest.raises(ConfigError, match="'cert' needs 'ca-cert'"):
        tls_from_config(EtcdConfig.from_data({"cert": "c.pem", "key": "k.pem"}))


def test_missing_or_unreadable_tls_files_are_named(tmp_path):
    ca = tmp_path / "ca.pem"
    with pytest.raises(ConfigError, match=f"etcd ca-cert file {ca} does not exist"):
        TlsFiles(ca).read()
    ca.write_text("x")
    key = tmp_path / "key.pem"
    key.mkdir()
    with pytest.raises(ConfigError, match=f"cannot read etcd key file {key}"):
        TlsFiles(ca, tmp_path / "ca.pem", key).read()
    with pytest.raises(ConfigError, match="is not a PEM CA certificate"):
        TlsFiles(ca).ssl_context()
