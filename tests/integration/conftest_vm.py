"""Fixtures for tests that boot the small test VM (helpers/build_testvm.py) under TCG.

Import them in a test module (``from conftest_vm import testvm_artifacts, ssh_user_key``) or
list this module in ``pytest_plugins`` of the top-level conftest.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from pcocc import proc
from pcocc.vm.qemu import VmSpec

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILDER = REPO_ROOT / "helpers" / "build_testvm.py"

#: Set to a directory to keep the built test VM between test sessions.
CACHE_ENV = "PCOCC_TESTVM_DIR"


@dataclass(frozen=True)
class TestVmArtifacts:
    """What helpers/build_testvm.py produced."""

    __test__ = False  # not a test class, despite the name

    directory: Path
    kernel: Path
    initrd: Path
    disk: Path  # tiny qcow2 image (ext2 with /etc/os-release), importable into a repo
    append: str
    has_guest_agent: bool

    def spec(self, name: str = "vm0", **overrides) -> VmSpec:
        """A TCG direct-boot VmSpec of the test VM."""
        fields = {"name": name, "accel": "tcg", "memory_mib": 256, "kernel": self.kernel,
                  "initrd": self.initrd, "append": self.append}
        fields.update(overrides)
        return VmSpec(**fields)


def load_builder():
    """helpers/build_testvm.py as a module (helpers/ is not a package)."""
    spec = importlib.util.spec_from_file_location("pcocc_build_testvm", BUILDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def testvm_artifacts(tmp_path_factory) -> TestVmArtifacts:
    """The test VM, built once per session (or reused from $PCOCC_TESTVM_DIR)."""
    if not glob.glob("/boot/vmlinuz-*-cloud-amd64"):
        pytest.skip("no Debian cloud kernel (install linux-image-cloud-amd64: helpers/setup)")
    for tool in ("qemu-system-x86_64", "qemu-img", "genisoimage", "dropbear", "busybox"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            pytest.skip(f"'{tool}' is not installed (run helpers/setup)")
    outdir = Path(os.environ.get(CACHE_ENV) or tmp_path_factory.mktemp("testvm"))
    manifest = load_builder().build(outdir)
    return TestVmArtifacts(
        directory=outdir,
        kernel=Path(manifest["kernel"]),
        initrd=Path(manifest["initrd"]),
        disk=Path(manifest["disk"]),
        append=manifest["append"],
        has_guest_agent=bool(manifest["has_guest_agent"]),
    )


@dataclass(frozen=True)
class SshKey:
    private: Path
    public: str


@pytest.fixture(scope="session")
def ssh_user_key(tmp_path_factory) -> SshKey:
    """A throwaway ed25519 key pair of 'the user'."""
    directory = tmp_path_factory.mktemp("user-key")
    key = directory / "id_ed25519"
    proc.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pcocc-test", "-f", key])
    return SshKey(key, key.with_suffix(".pub").read_text().strip())


def ssh_argv(key: SshKey, port: int, known_hosts: Path, *command: str) -> list[str]:
    """ssh to root@127.0.0.1:port with strict host key checking against ``known_hosts``."""
    return ["ssh", "-i", str(key.private), "-p", str(port),
            # ssh splits this option's value on blanks (it is a list): quote it
            "-o", f'UserKnownHostsFile="{known_hosts}"', "-o", "StrictHostKeyChecking=yes",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
            "root@127.0.0.1", *command]


def ssh_run(key: SshKey, port: int, known_hosts: Path, *command: str,
            timeout_s: float = 60) -> subprocess.CompletedProcess:
    res = proc.run(ssh_argv(key, port, known_hosts, *command), check=False,
                   timeout_s=timeout_s)
    return subprocess.CompletedProcess(res.argv, res.returncode, res.stdout, res.stderr)
