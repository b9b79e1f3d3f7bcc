"""Session fixtures for integration tests: real services started by ``helpers/``.

Services run as child processes in a private temporary directory on free loopback ports and
are always stopped at the end of the session. A fixture skips (with the reason shown by
``-ra``) only when the programs it needs are not installed.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


# helpers/*.py are scripts and importable modules: tests ``import devcluster``
if str(REPO_ROOT / "helpers") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "helpers"))

import devcluster

from helpers import testimages
from helpers.registry import REGISTRY_BIN, local_registry


def _private_dir(prefix: str) -> Path:
    # not below pytest's basetemp: munged wants every parent directory searchable by all
    return Path(tempfile.mkdtemp(prefix=prefix))


@pytest.fixture(scope="session")
def etcd_server():
    """A private etcd v3 server; ``.endpoints`` lists its client URLs."""
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (Debian package etcd-server)")
    from pcocc.kv.server import EtcdServer

    directory = _private_dir("pcocc-etcd-")
    try:
        with EtcdServer(directory) as server:
            yield server
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster():
    """munged + slurmctld + 4 slurmd (n1..n4) on this host; ``.env()`` gives SLURM_CONF.

    etcd is not started here (use ``etcd_server``), so each fixture owns one service.
    """
    missing = devcluster.missing_binaries(with_etcd=False)
    if missing:
        pytest.skip(f"Slurm/munge programs not installed: {', '.join(missing)}")
    directory = _private_dir("pcocc-slurm-")
    try:
        with devcluster.DevCluster(directory, with_etcd=False) as cluster:
            yield cluster
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch):
    """Point Slurm clients of this test at the dev cluster (SLURM_CONF)."""
    for key in list(os.environ):
        if key.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_")):
            monkeypatch.delenv(key)
    for key, value in slurm_cluster.env().items():
        monkeypatch.setenv(key, value)
    return slurm_cluster


# --- container images ---------------------------------------------------------------------


def _need(*tools: str) -> None:
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (run helpers/setup)")


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """A docker-registry on a free loopback port (plain HTTP), stopped with the session."""
    _need(REGISTRY_BIN)
    with local_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="session")
def busybox_image(tmp_path_factory) -> testimages.TestImage:
    """A one-layer OCI layout with a static busybox (built with umoci)."""
    _need("umoci", "skopeo")
    return testimages.build_busybox(tmp_path_factory.mktemp("busybox-image"))


@pytest.fixture(scope="session")
def multilayer_image(tmp_path_factory) -> testimages.TestImage:
    """busybox plus two layers with whiteouts (deleted file and dir, opaque dir)."""
    _need("umoci", "skopeo")
    return testimages.build_multilayer(tmp_path_factory.mktemp("multi-image"))


# The test VM (kernel + initramfs + disk built from Debian packages) and a user ssh key.
from conftest_vm import ssh_user_key, testvm_artifacts  # noqa: E402, F401
