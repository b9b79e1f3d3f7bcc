"""``pcocc image cache`` commands on a cache filled through the library."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from pcocc.cli import image_cache
from pcocc.cli.context import Session
from pcocc.errors import NotFound
from pcocc.repo import cachekeys
from pcocc.repo.cache import ContainerCache
from pcocc.repo.model import OciImage


def fake_image(n: int) -> OciImage:
    return OciImage(
        manifest_digest="sha256:" + f"{n:x}" * 64,
        manifest={"schemaVersion": 2, "layers": []},
        config={"architecture": "amd64", "os": "linux"},
    )


@pytest.fixture
def setup(pcocc_env, tmp_path):
    cache_dir = tmp_path / "the-cache"
    (pcocc_env["user"] / "repos.yaml").write_text(f"cache:\n  path: {cache_dir}\n")
    session = Session(str(pcocc_env["system"]), str(pcocc_env["user"]))
    cache = ContainerCache(cache_dir)
    for n in (1, 2):
        cache.prepare(fake_image(n), lambda d: tmp_path / "none")  # no layers: empty rootfs
    return session, cache


def invoke(session, *args):
    return CliRunner().invoke(image_cache.cache, list(args), obj=session)


def test_list_table_and_json(setup):
    session, cache = setup
    res = invoke(session, "list")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["IMAGE", "DIGEST", "MODE", "SIZE", "LAST", "USED", "IMAGES"]
    assert lines[1].startswith("sha256:111111111111") and " dir " in lines[1]
    assert lines[1].endswith("(deleted)")  # no repository holds these fake images
    assert len(lines) == 3
    data = json.loads(invoke(session, "list", "--json").output)
    assert [d["digest"] for d in data] == [e.digest for e in cache.list()]
    assert data[0]["path"].endswith("/rootfs")
    assert data[0]["images"] == []


def test_delete_by_digest_prefix_and_unknown(setup):
    session, cache = setup
    res = invoke(session, "delete", "2222222222")
    assert res.exit_code == 0, res.output
    assert [e.digest for e in cache.list()] == [fake_image(1).manifest_digest]
    res = invoke(session, "delete", "user:busybox")
    assert res.exit_code != 0
    assert isinstance(res.exception, NotFound), res.exception
    assert "busybox" in str(res.exception)


def test_delete_through_the_store_resolver(setup, monkeypatch):
    session, cache = setup
    calls = []

    def resolve(config, uri):
        calls.append(uri)
        return fake_image(1).manifest_digest

    monkeypatch.setattr(cachekeys, "resolve_container_digest", resolve)
    res = invoke(session, "delete", "user:busybox@2")
    assert res.exit_code == 0, res.output
    assert calls == ["user:busybox@2"]
    assert [e.digest for e in cache.list()] == [fake_image(2).manifest_digest]


def test_gc_removes_the_entries_of_deleted_images(setup, monkeypatch):
    session, cache = setup
    live = {fake_image(2).manifest_digest}
    monkeypatch.setattr(cachekeys, "live_container_digests", lambda config: live)
    res = invoke(session, "gc")
    assert res.exit_code == 0, res.output
    assert "removed 1 cached images" in res.output
    assert [e.digest for e in cache.list()] == [fake_image(2).manifest_digest]


def test_a_broken_store_fails_loudly(setup, monkeypatch):
    """No fallback when the store's look-ups cannot be imported: the error reaches the user."""
    session, _cache = setup
    monkeypatch.setitem(sys.modules, "pcocc.repo.cachekeys", None)  # import raises ImportError
    res = invoke(session, "gc")
    assert isinstance(res.exception, ImportError), res.output
