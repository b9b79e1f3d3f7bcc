"""Multi-user etcd against a real etcd: ``pcocc admin etcd-auth|etcd-user`` and the logins
that pcocc takes from batch.yaml (user, private password-file)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from pcocc.kv import connect
from pcocc.cluster.definition import build_definition
from pcocc.cluster.record import ClusterRecord
from pcocc.cluster.state import ClusterState
from pcocc.config import EtcdConfig, load_config
from pcocc.errors import PermissionDenied
from pcocc.kv import keys
from pcocc.kv.client import KvClient


@dataclass
class AuthEtcd:
    endpoint: str
    top: Path
    sysconf: Path
    root_password_file: Path
    alice_password_file: Path
    bob_password_file: Path
    setup: dict[str, subprocess.CompletedProcess]


def _env(sysconf: Path, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PCOCC_", "ETCD"))}
    env.update(
        HOME=str(home),
        PCOCC_SYSTEM_CONF_DIR=str(sysconf),
        PCOCC_USER_CONF_DIR=str(home / ".pcocc"),
        **extra,
    )
    return env


def _pcocc(pcocc_bin: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [pcocc_bin, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _pcocc_bin() -> str:
    import sys

    return str(Path(sys.executable).parent / "pcocc")


@pytest.fixture(scope="module")
def auth_etcd():
    """An etcd of its own (auth would lock out the other tests' etcd), set up by pcocc admin:
    auth enabled, users alice (password generated in the system dir) and bob (generated into
    a file given with --password-file)."""
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (Debian package etcd-server)")
    from pcocc.kv.server import EtcdServer

    top = Path(tempfile.mkdtemp(prefix="pcocc-etcd-auth-"))
    sysconf, home = top / "etc-pcocc", top / "admin-home"
    sysconf.mkdir()
    (home / ".pcocc").mkdir(parents=True)
    pcocc_bin = _pcocc_bin()
    try:
        with EtcdServer(top / "etcd") as server:
            env = _env(sysconf, home, PCOCC_ETCD_ENDPOINTS=server.endpoint)
            setup = {
                "status-before": _pcocc(pcocc_bin, env, "admin", "etcd-auth", "status"),
                "enable": _pcocc(pcocc_bin, env, "admin", "etcd-auth", "enable"),
                "status-after": _pcocc(pcocc_bin, env, "admin", "etcd-auth", "status"),
                "enable-again": _pcocc(pcocc_bin, env, "admin", "etcd-auth", "enable"),
                "add-alice": _pcocc(pcocc_bin, env, "admin", "etcd-user", "add", "alice"),
                "add-bob": _pcocc(
                    pcocc_bin,
                    env,
                    *("admin", "etcd-user", "add", "bob"),
                    *("--password-file", str(top / "bob" / "etcd-password")),
                ),
            }
            for name, res in setup.items():
                assert res.returncode == 0, f"{name}: {res.stderr}"
            yield AuthEtcd(
                endpoint=server.endpoint,
                top=top,
                sysconf=sysconf,
                root_password_file=sysconf / "etcd-root.password",
                alice_password_file=sysconf / "etcd-users" / "alice.password",
                bob_password_file=top / "bob" / "etcd-password",
                setup=setup,
            )
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _user_config(auth: AuthEtcd, tmp_path: Path, user: str, password_file: Path | str) -> Path:
    """A system config dir whose batch.yaml logs in to the test etcd as ``user``."""
    sysconf = tmp_path / "etc-pcocc"
    sysconf.mkdir(exist_ok=True)
    (sysconf / "batch.yaml").write_text(
        "etcd:\n"
        f"  endpoints: [{auth.endpoint.removeprefix('http://')}]\n"
        f"  user: {user}\n"
        f"  password-file: {json.dumps(str(password_file))}\n"
    )
    (tmp_path / "home" / ".pcocc").mkdir(parents=True, exist_ok=True)
    return sysconf


def _etcd(sysconf: Path, tmp_path: Path) -> EtcdConfig:
    """The etcd section of the batch.yaml in ``sysconf``."""
    return load_config(sysconf, tmp_path / "home" / ".pcocc").batch.etcd


def _put_cluster(kv: KvClient, user: str, batchid: str) -> None:
    definition = build_definition("tpl:1", {"tpl": {"kernel": "/k"}}, owner=user)
    record = ClusterRecord(batchid, definition, ClusterState.RUNNING, "n1", 123, batch="local")
    kv.put(keys.cluster_definition(user, batchid), record.to_json())


def test_enable_creates_a_private_root_password_and_locks_out_anonymous(auth_etcd):
    out = auth_etcd.setup["enable"].stdout
    assert "authentication enabled" in out and str(auth_etcd.root_password_file) in out
    assert auth_etcd.root_password_file.stat().st_mode & 0o777 == 0o600
    assert "already enabled" in auth_etcd.setup["enable-again"].stdout
    assert "authentication disabled" in auth_etcd.setup["status-before"].stdout
    assert "authentication enabled" in auth_etcd.setup["status-after"].stdout
    with KvClient(auth_etcd.endpoint) as anonymous, pytest.raises(PermissionDenied) as info:
        anonymous.get(keys.cluster_definition("alice", "1"))
    assert "anonymous" in str(info.value) and "password-file" in info.value.hint


def test_added_users_get_private_generated_passwords(auth_etcd):
    alice_out = auth_etcd.setup["add-alice"].stdout
    assert "pcocc-user-alice" in alice_out and str(auth_etcd.alice_password_file) in alice_out
    assert str(auth_etcd.bob_password_file) in auth_etcd.setup["add-bob"].stdout
    for path in (auth_etcd.alice_password_file, auth_etcd.bob_password_file):
        assert path.stat().st_mode & 0o777 == 0o600
    alice_pw = auth_etcd.alice_password_file.read_text().strip()
    assert len(alice_pw) >= 24 and alice_pw != auth_etcd.bob_password_file.read_text().strip()
    for res in auth_etcd.setup.values():  # passwords never printed
        assert alice_pw not in res.stdout + res.stderr


def test_list_shows_each_user_and_its_prefix(auth_etcd, pcocc_bin, tmp_path):
    env = _env(auth_etcd.sysconf, tmp_path, PCOCC_ETCD_ENDPOINTS=auth_etcd.endpoint)
    res = _pcocc(pcocc_bin, env, "admin", "etcd-user", "list", "--json")
    assert res.returncode == 0, res.stderr
    users = {u["name"]: u for u in json.loads(res.stdout)}
    assert users["alice"]["roles"] == ["pcocc-user-alice"]
    assert users["alice"]["permissions"] == [{"kind": "readwrite", "prefix": "/pcocc/users/alice/"}]
    assert users["bob"]["permissions"] == [{"kind": "readwrite", "prefix": "/pcocc/users/bob/"}]
    assert users["root"]["roles"] == ["root"]


def test_alice_uses_her_prefix_only_with_batch_yaml_credentials(auth_etcd, tmp_path):
    sysconf = _user_config(auth_etcd, tmp_path, "alice", auth_etcd.alice_password_file)
    etcd = _etcd(sysconf, tmp_path)
    kv = connect.open_kv(connect.configured_endpoints(etcd, {}), etcd)
    try:
        assert kv.client.user == "alice" and kv.client.is_logged_in
        mine = keys.cluster_definition("alice", uuid.uuid4().hex[:8])
        kv.put(mine, "{}")
        assert kv.get(mine) == "{}"
        bobs = keys.cluster_definition("bob", "1")
        denied = "refused to let user 'alice'"
        with pytest.raises(PermissionDenied, match=f"{denied} read /pcocc/users/bob/"):
            kv.get_prefix(keys.user_prefix("bob"))
        with pytest.raises(PermissionDenied, match=f"{denied} write {bobs}") as info:
            kv.put(bobs, "{}")
        assert "role" in info.value.hint
        with pytest.raises(PermissionDenied):
            kv.get_prefix(keys.node_prefix("n1"))
    finally:
        kv.close()


def test_environment_login_wins_over_batch_yaml(auth_etcd, tmp_path):
    sysconf = _user_config(auth_etcd, tmp_path, "alice", auth_etcd.alice_password_file)
    etcd = _etcd(sysconf, tmp_path)
    env = {
        "PCOCC_ETCD_ENDPOINTS": auth_etcd.endpoint,
        "PCOCC_ETCD_USER": "bob",
        "PCOCC_ETCD_PASSWORD": auth_etcd.bob_password_file.read_text().strip(),
    }
    kv = connect.EtcdKv.from_env(env, etcd)
    try:
        assert kv.client.user == "bob"
        kv.put(keys.cluster_definition("bob", "env-login"), "{}")
    finally:
        kv.close()


def test_ps_as_alice_with_batch_yaml_credentials(auth_etcd, pcocc_bin, tmp_path):
    batchid = uuid.uuid4().hex[:8]
    password = auth_etcd.alice_password_file.read_text().strip()
    with KvClient(auth_etcd.endpoint, user="alice", password=password) as alice:
        _put_cluster(alice, "alice", batchid)
    sysconf = _user_config(auth_etcd, tmp_path, "alice", auth_etcd.alice_password_file)
    # pcocc names the user's prefix after the login name of the process
    env = _env(sysconf, tmp_path / "home", USER="alice", LOGNAME="alice")
    res = _pcocc(pcocc_bin, env, "ps", "--json")
    assert res.returncode == 0, res.stderr
    assert batchid in [c["id"] for c in json.loads(res.stdout)]
    assert password not in res.stdout + res.stderr

    # the same without a login: etcd refuses, and pcocc says what to configure
    (sysconf / "batch.yaml").write_text(
        f"etcd:\n  endpoints: [{auth_etcd.endpoint.removeprefix('http://')}]\n"
    )
    res = _pcocc(pcocc_bin, env, "ps")
    assert res.returncode == 1
    assert "authentication enabled" in res.stderr and "password-file" in res.stderr


def test_password_file_readable_by_others_is_refused(auth_etcd, pcocc_bin, tmp_path):
    leaky = tmp_path / "leaky-password"
    leaky.write_text(auth_etcd.alice_password_file.read_text())
    leaky.chmod(0o644)
    sysconf = _user_config(auth_etcd, tmp_path, "alice", leaky)
    res = _pcocc(pcocc_bin, _env(sysconf, tmp_path / "home", USER="alice"), "ps")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(leaky) in lines[0] and f"chmod 600 {leaky}" in lines[0]
    assert leaky.read_text().strip() not in res.stderr


def test_missing_password_file_is_named(auth_etcd, pcocc_bin, tmp_path):
    missing = tmp_path / "no-such-password"
    sysconf = _user_config(auth_etcd, tmp_path, "alice", missing)
    res = _pcocc(pcocc_bin, _env(sysconf, tmp_path / "home", USER="alice"), "ps")
    assert res.returncode == 2
    assert f"etcd password file {missing} does not exist" in res.stderr


def test_wrong_password_is_a_clear_login_error(auth_etcd, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("not-alices-password\n")
    wrong.chmod(0o600)
    sysconf = _user_config(auth_etcd, tmp_path, "alice", wrong)
    with pytest.raises(PermissionDenied, match="log in as alice") as info:
        connect.open_kv(auth_etcd.endpoint, _etcd(sysconf, tmp_path))
    assert str(wrong) in info.value.hint and "not-alices-password" not in str(info.value)


def test_admin_errors(auth_etcd, pcocc_bin, tmp_path):
    env = _env(auth_etcd.sysconf, tmp_path, PCOCC_ETCD_ENDPOINTS=auth_etcd.endpoint)
    res = _pcocc(pcocc_bin, env, "admin", "etcd-user", "remove", "carol")
    assert res.returncode == 1 and "etcd user carol does not exist" in res.stderr
    res = _pcocc(pcocc_bin, env, "admin", "etcd-user", "add", "alice")
    assert res.returncode == 1 and "etcd user alice already exists" in res.stderr
    res = _pcocc(pcocc_bin, env, "admin", "etcd-user", "remove", "root")
    assert res.returncode == 2
    res = _pcocc(pcocc_bin, env, "admin", "etcd-user", "add", "a/b")
    assert res.returncode == 2 and "invalid user name" in res.stderr
    wrong = tmp_path / "wrong-root"
    wrong.write_text("nope\n")
    wrong.chmod(0o600)
    res = _pcocc(pcocc_bin, env, "admin", "etcd-user", "list", "--root-password-file", str(wrong))
    assert res.returncode == 1 and "log in as root" in res.stderr and str(wrong) in res.stderr
    res = _pcocc(pcocc_bin, env, "admin", "etcd-user", "list",
                 "--root-password-file", str(tmp_path / "none"))  # fmt: skip
    assert res.returncode == 2 and "has authentication enabled" in res.stderr
    no_etcd = _env(tmp_path / "empty-conf", tmp_path)
    res = _pcocc(pcocc_bin, no_etcd, "admin", "etcd-user", "list")
    assert res.returncode == 2 and "no etcd to administer" in res.stderr


def test_removed_user_can_no_longer_log_in(auth_etcd, pcocc_bin, tmp_path):
    env = _env(auth_etcd.sysconf, tmp_path, PCOCC_ETCD_ENDPOINTS=auth_etcd.endpoint)
    res = _pcocc(pcocc_bin, env, "admin", "etcd-user", "add", "carol",
                 "--password-file", str(tmp_path / "carol.pw"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    password = (tmp_path / "carol.pw").read_text().strip()
    KvClient(auth_etcd.endpoint, user="carol", password=password).close()
    res = _pcocc(pcocc_bin, env, "admin", "etcd-user", "remove", "carol")
    assert res.returncode == 0, res.stderr
    with pytest.raises(PermissionDenied, match="log in as carol"):
        KvClient(auth_etcd.endpoint, user="carol", password=password)


def test_no_password_is_stored_in_etcd(auth_etcd):
    root_pw = auth_etcd.root_password_file.read_text().strip()
    with KvClient(auth_etcd.endpoint, user="root", password=root_pw) as root:
        values = b"".join(root.get_prefix("/").values())
    for path in (auth_etcd.alice_password_file, auth_etcd.bob_password_file):
        assert path.read_text().strip().encode() not in values
    assert root_pw.encode() not in values


NOBODY_UID = 65534


def test_non_root_user_logs_in_with_user_and_homedir_placeholders(auth_etcd, tmp_path):
    """The site's batch.yaml: ``user: %{user}``, ``password-file: %{homedir}/...``; an admin
    adds the user with a password generated into that home; the user (not root) runs pcocc."""
    import pwd

    from tests.nonroot import SYSTEM_PYTHON, nonroot_pythonpath, system_python_problem

    try:
        nobody = pwd.getpwuid(NOBODY_UID).pw_name
    except KeyError:
        pytest.skip(f"no user with uid {NOBODY_UID} to run pcocc as")
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run pcocc as another user")
    top = Path(tempfile.mkdtemp(prefix="pcocc-etcd-nonroot-"))  # pytest's tmp is root-only
    try:
        top.chmod(0o755)
        home, sysconf = top / "home", top / "etc-pcocc"
        home.mkdir()
        os.chown(home, NOBODY_UID, NOBODY_UID)
        sysconf.mkdir()
        (sysconf / "batch.yaml").write_text(
            "etcd:\n"
            f"  endpoints: [{auth_etcd.endpoint.removeprefix('http://')}]\n"
            '  user: "%{user}"\n'
            '  password-file: "%{homedir}/.pcocc/etcd-password"\n'
        )
        (sysconf / "batch.yaml").chmod(0o644)
        admin_env = _env(auth_etcd.sysconf, top, PCOCC_ETCD_ENDPOINTS=auth_etcd.endpoint)
        res = _pcocc(_pcocc_bin(), admin_env, "admin", "etcd-user", "add", nobody,
                     "--password-file", str(home / ".pcocc" / "etcd-password"))  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert (home / ".pcocc" / "etcd-password").stat().st_uid == NOBODY_UID
        assert (home / ".pcocc").stat().st_uid == NOBODY_UID

        root_pw = auth_etcd.root_password_file.read_text().strip()
        batchid = uuid.uuid4().hex[:8]
        with KvClient(auth_etcd.endpoint, user="root", password=root_pw) as root:
            _put_cluster(root, nobody, batchid)
        user_env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(home),
            "USER": nobody,
            "LOGNAME": nobody,
            "PCOCC_SYSTEM_CONF_DIR": str(sysconf),
            "PYTHONPATH": nonroot_pythonpath(top),
        }
        problem = system_python_problem()
        if problem:
            pytest.skip(problem)
        argv = ["setpriv", f"--reuid={NOBODY_UID}", f"--regid={NOBODY_UID}", "--clear-groups",
                SYSTEM_PYTHON]  # fmt: skip
        probe = subprocess.run(
            [*argv, "-c", "import etcd3, click, yaml, jsonschema"],
            env=user_env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if probe.returncode != 0:
            pytest.skip(f"the test interpreter is not usable by uid {NOBODY_UID}: {probe.stderr}")
        res = subprocess.run(
            [*argv, "-m", "pcocc.cli.main", "ps", "--json"],
            env=user_env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert [c["id"] for c in json.loads(res.stdout)] == [batchid]
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_configured_login_is_not_used_while_etcd_has_no_auth(etcd_server, tmp_path):
    """Admins may deploy batch.yaml's login before they turn etcd authentication on."""
    password_file = tmp_path / "pw"
    password_file.write_text("whatever\n")
    password_file.chmod(0o600)
    auth = AuthEtcd(etcd_server.endpoint, tmp_path, tmp_path, password_file, password_file,
                    password_file, {})  # fmt: skip
    sysconf = _user_config(auth, tmp_path, "alice", password_file)
    etcd = _etcd(sysconf, tmp_path)
    kv = connect.open_kv(connect.configured_endpoints(etcd, {}), etcd)
    try:
        assert not kv.client.is_logged_in
        key = keys.cluster_definition("alice", uuid.uuid4().hex[:8])
        kv.put(key, "{}")
        assert kv.get(key) == "{}"
    finally:
        kv.close()


def test_login_survives_an_etcd_restart(tmp_path):
    """etcd keeps login tokens in memory: after a restart, a logged-in client gets one
    "passing outage" error, logs in again, and its next calls and watches work."""
    from pcocc.errors import ServiceUnavailable
    from pcocc.kv.admin import EtcdAuthAdmin
    from pcocc.kv.server import EtcdServer

    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (Debian package etcd-server)")
    server = EtcdServer(tmp_path / "etcd").start()
    again = None
    try:
        with EtcdAuthAdmin.connect(server.endpoint, tmp_path / "root.pw") as admin:
            admin.add_user("alice", tmp_path / "alice.pw")
            admin.enable_auth()
        password = (tmp_path / "alice.pw").read_text().strip()
        key = keys.cluster_definition("alice", "restart")
        with KvClient(server.endpoint, user="alice", password=password) as alice:
            alice.put(key, b"before")
            argv = Path(f"/proc/{server.pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
            server.stop()
            # in etcd's directory: its unix sockets are relative to it
            again = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True, cwd=server.directory)  # fmt: skip
            errors = []
            for _ in range(100):  # etcd takes about a second to answer again
                try:
                    value = alice.get(key)
                    break
                except ServiceUnavailable as err:
                    errors.append(str(err))
                    __import__("time").sleep(0.2)
            assert value == b"before"
            assert any("logged in again" in e for e in errors)
            with alice.watch_prefix(keys.cluster_prefix("alice", "restart")) as watch:
                alice.put(key, b"after")
                assert watch.get(10).value == b"after"
    finally:
        if again is not None:
            again.kill()
            again.wait()
        server.stop()
