"""The security suite: a victim and an attacker, two throwaway local users.

Each test replays an attack as ``attacker`` against state or processes of ``victim`` and
asserts it fails with nothing read, changed or executed. The suite runs as root (it creates
the users); it skips, with the reason shown, anywhere it cannot.

Both users run the system Python on readable copies of pcocc and its dependencies (the
checkout and its virtualenv may sit where other users cannot enter).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.nonroot import (
    SYSTEM_PYTHON,
    nonroot_pythonpath,
    system_python_problem,
)

# The real services of the attacks (etcd_server, slurm_cluster, slurm_env, testvm_artifacts,
# ssh_user_key) are the fixtures of the whole suite: tests/conftest.py loads them.

pytestmark = pytest.mark.security

SUBID_RANGES = {"victim": "400000-465535", "attacker": "470000-535535"}


@dataclass
class LocalUser:
    """A throwaway Unix user with a private home and a pcocc it can run."""

    name: str
    uid: int
    gid: int
    home: Path
    base_env: dict[str, str] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        """The user's environment (``env -i`` style), plus ``extra``."""
        return {**self.base_env, **extra}

    def _argv(self, argv: list[str], env: dict[str, str] | None) -> list[str]:
        full_env = self.env(**(env or {}))
        return ["runuser", "-u", self.name, "--", "env", "-i",
                *(f"{k}={v}" for k, v in full_env.items()), *argv]

    def run(self, argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 120,
            cwd: Path | None = None, input: str | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` as this user; never raises on a non-zero status."""
        return subprocess.run(self._argv(argv, env), capture_output=True, text=True,
                              timeout=timeout, cwd=cwd or self.home, input=input, check=False)

    def popen(self, argv: list[str], *, env: dict[str, str] | None = None,
              **kwargs) -> subprocess.Popen:
        kwargs.setdefault("cwd", self.home)
        return subprocess.Popen(self._argv(argv, env), **kwargs)

    def pcocc(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """``pcocc ARGS`` as this user."""
        return self.run([SYSTEM_PYTHON, "-m", "pcocc.cli.main", *args], **kwargs)

    def python(self, code: str, **kwargs) -> subprocess.CompletedProcess:
        """Python ``code`` as this user, with pcocc importable (an attacker's script)."""
        return self.run([SYSTEM_PYTHON, "-c", code], **kwargs)

    def sh(self, script: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run(["/bin/sh", "-c", script], **kwargs)

    def chown(self, path: Path) -> None:
        subprocess.run(["chown", "-R", f"{self.uid}:{self.gid}", str(path)], check=True)


def _need_root_and_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("the security suite creates local users: it needs root")
    for tool in ("useradd", "userdel", "usermod", "runuser"):
        if shutil.which(tool) is None:
            pytest.skip(f"'{tool}' is missing (package passwd/util-linux)")
    problem = system_python_problem()
    if problem:
        pytest.skip(problem)


def _create_user(name: str, top: Path, pythonpath: str, sysconf: Path) -> LocalUser:
    subprocess.run(["userdel", "--force", "--remove", name], capture_output=True, check=False)
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True)
    ids = subprocess.run(["id", "-u", name], capture_output=True, text=True, check=True)
    uid = int(ids.stdout)
    gid = int(subprocess.run(["id", "-g", name], capture_output=True, text=True,
                             check=True).stdout)
    role = name.rsplit("-", 1)[-1]
    subprocess.run(["usermod", "--add-subuids", SUBID_RANGES[role], "--add-subgids",
                    SUBID_RANGES[role], name], capture_output=True, check=False)
    home = top / name
    home.mkdir()
    os.chown(home, uid, gid)
    home.chmod(0o700)
    base_env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": str(home),
        "USER": name,
        "LOGNAME": name,
        "PYTHONPATH": pythonpath,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PCOCC_SYSTEM_CONF_DIR": str(sysconf),
        "PCOCC_USER_CONF_DIR": str(home / ".pcocc"),
    }
    return LocalUser(name=name, uid=uid, gid=gid, home=home, base_env=base_env)


@dataclass
class TwoUsers:
    victim: LocalUser
    attacker: LocalUser
    #: the system configuration directory both read (root-owned; tests may write into it)
    sysconf: Path
    #: a 0755 directory for anything both users must reach (owned by root)
    shared: Path


@pytest.fixture(scope="session")
def two_users():
    """``TwoUsers(victim, attacker, sysconf, shared)``: created once per session."""
    _need_root_and_tools()
    top = Path(tempfile.mkdtemp(prefix="pcocc-security-"))
    top.chmod(0o755)
    suffix = os.getpid() % 10000
    names = [f"pcs{suffix}-victim", f"pcs{suffix}-attacker"]
    try:
        (top / "py").mkdir()
        pythonpath = nonroot_pythonpath(top / "py")
        sysconf = top / "etc-pcocc"
        sysconf.mkdir(mode=0o755)
        shared = top / "shared"
        shared.mkdir(mode=0o755)
        victim, attacker = (_create_user(n, top, pythonpath, sysconf) for n in names)
        yield TwoUsers(victim=victim, attacker=attacker, sysconf=sysconf, shared=shared)
    finally:
        for name in names:
            subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True, check=False)
            subprocess.run(["userdel", "--force", name], capture_output=True, check=False)
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def victim(two_users) -> LocalUser:
    return two_users.victim


@pytest.fixture
def attacker(two_users) -> LocalUser:
    return two_users.attacker


@pytest.fixture
def victim_cluster_conf(two_users, testvm_artifacts):
    """The system configuration of a test VM template whose user network forwards 7777
    (private, the default) and 7778 (public); the kernel and initrd in the shared dir."""
    shared = two_users.shared
    boot = shared / "testvm"
    boot.mkdir(exist_ok=True)
    for src in (testvm_artifacts.kernel, testvm_artifacts.initrd):
        dest = boot / src.name
        dest.write_bytes(src.read_bytes())
        dest.chmod(0o644)
    bindir = shared / "bin"
    bindir.mkdir(exist_ok=True)
    wrapper = bindir / "pcocc"
    wrapper.write_text('#!/bin/sh\nexec /usr/bin/python3 -m pcocc.cli.main "$@"\n')
    wrapper.chmod(0o755)
    sysconf = two_users.sysconf
    files = {
        "templates.yaml": {"templates": {"testvm": {
            "kernel": str(boot / testvm_artifacts.kernel.name),
            "initrd": str(boot / testvm_artifacts.initrd.name),
            "append": testvm_artifacts.append + " testvm.net=dhcp",
            "accel": "tcg",
            "resource-set": "tiny",
        }}},
        "resources.yaml": {"resource-sets": {"tiny": {"cores": 1, "memory": "256M",
                                                      "networks": ["nat"]}}},
        "networks.yaml": {"networks": {"nat": {"type": "user", "ssh-forward": True,
                                               "forwards": [7777],
                                               "public-forwards": [7778]}}},
        "batch.yaml": {"type": "local", "etcd": {"mode": "private"}},
    }
    for name, content in files.items():
        (sysconf / name).write_text(yaml.safe_dump(content))
        (sysconf / name).chmod(0o644)
    yield bindir
    for name in files:
        (sysconf / name).unlink(missing_ok=True)
