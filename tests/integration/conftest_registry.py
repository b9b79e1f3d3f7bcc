"""Fixtures for container image tests: a local registry and the test images.

Test modules import these names (``from conftest_registry import ...``) so that pytest
registers them; the lead may move them into ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import shutil

import pytest

from helpers import testimages
from helpers.registry import REGISTRY_BIN, local_registry


def _need(*tools: str) -> None:
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (run helpers/setup)")


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """A docker-registry on a free loopback port, stopped at the end of the session."""
    _need(REGISTRY_BIN)
    with local_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="session")
def busybox_image(tmp_path_factory) -> testimages.TestImage:
    _need("umoci", "skopeo")
    return testimages.build_busybox(tmp_path_factory.mktemp("busybox-image"))


@pytest.fixture(scope="session")
def multilayer_image(tmp_path_factory) -> testimages.TestImage:
    """busybox plus two layers with whiteouts (deleted file and dir, opaque dir)."""
    _need("umoci", "skopeo")
    return testimages.build_multilayer(tmp_path_factory.mktemp("multi-image"))
