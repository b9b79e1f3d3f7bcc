"""Fixtures of the container tests: a test rootfs, a private runtime dir, the runtimes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import testrootfs
from tests.integration.containers.ctrlib import pcocc

RUNTIMES = ["crun", "runc", "unshare"]


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> Path:
    """A small rootfs directory (busybox and friends), built once per session."""
    try:
        return testrootfs.build_rootfs(tmp_path_factory.mktemp("ctr-image") / "img")
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def runtime_dir(tmp_path_factory) -> Path:
    """One XDG runtime dir for the session, so that the per-boot runtime probe runs once."""
    d = tmp_path_factory.mktemp("xdg-runtime")
    d.chmod(0o700)
    return d


@pytest.fixture
def env(pcocc_env, runtime_dir, monkeypatch):
    """pcocc's isolated environment, with the session's runtime dir and no XDG overrides."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime_dir))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return pcocc_env


@pytest.fixture(params=RUNTIMES)
def runtime(request) -> str:
    if not shutil.which(request.param):
        pytest.skip(f"{request.param} is not installed")
    return request.param


@pytest.fixture
def slurm(pcocc_env, slurm_env, runtime_dir, monkeypatch, pcocc_bin, busybox_image):
    """pcocc configured for the dev cluster, with the busybox image as 'busy'."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime_dir))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    (pcocc_env["system"] / "batch.yaml").write_text("type: slurm\n")
    pcocc(pcocc_bin, "image", "import", busybox_image.ref, "busy", check=0)
    return pcocc_env
