"""Where the store meets the container drivers: the add_blob hooks, the calling convention
of ops -> oci/skopeo (references, TLS), and the look-ups the container cache CLI uses.
skopeo itself is replaced by a recorder here; tests/integration/test_image_ctr_cli.py runs
the real one."""

from __future__ import annotations

import hashlib
import os
import types

import pytest

from pcocc.cli.image import _tls_verify
from pcocc.config import RepoConfig
from pcocc.errors import NotFound, ToolError, UsageError
from pcocc.repo import ops, skopeo
from pcocc.repo.model import KIND_CTR, KIND_VM, BlobRef
from pcocc.repo.cachekeys import live_container_digests, resolve_container_digest
from pcocc.repo.store import new_meta
from pcocc.repo.reposet import RepoSet


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def repos(tmp_path) -> RepoSet:
    return RepoSet([RepoConfig("user", tmp_path / "user"), RepoConfig("more", tmp_path / "more")])


def _put(repo, data: bytes) -> BlobRef:
    with repo.staging() as st:
        (st / "b").write_bytes(data)
        return BlobRef(repo.add_blob(st / "b"), len(data))


def _commit(repo, name: str, kind: str, *datas: bytes):
    blobs = [_put(repo, d) for d in datas]
    if kind == KIND_VM:
        return repo.commit(new_meta(name, kind, blobs, vm={"layers": [blobs[0].digest],
                                                            "virtual_size": 1}), new_image=True)
    oci = {"manifest_digest": blobs[0].digest, "manifest": {"layers": []}, "config": {}}
    return repo.commit(new_meta(name, kind, blobs, oci=oci), new_image=True)


def test_add_blob_offers_the_hooks_the_oci_driver_probes(repos):
    repo = repos.get("user")
    add_blob = repo.add_blob
    assert callable(add_blob) and add_blob is repo.add_blob
    ref = _put(repo, b"layer")
    assert add_blob.has_blob(ref.digest) is True
    assert add_blob.has_blob(sha(b"absent")) is False
    assert add_blob.blob_path(ref.digest) == repo.blob_path(ref.digest)
    assert add_blob.blob_path(ref.digest).read_bytes() == b"layer"
    # A hit refreshes the blob's time, so that gc keeps it until our commit.
    path = repo.blob_path(ref.digest)
    os.utime(path, (1000, 1000))
    assert add_blob.has_blob(ref.digest)
    assert path.stat().st_mtime > 1000


class _SkopeoRecorder:
    """Stands in for proc.run in pcocc.repo.skopeo: records argv, fails every call."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, argv, **kw):
        self.calls.append([str(a) for a in argv])
        raise ToolError("stopped by the test", tool="skopeo")

    def copy_argv(self) -> list[str]:
        [argv] = [a for a in self.calls if "copy" in a]
        return argv


@pytest.fixture
def recorder(monkeypatch):
    rec = _SkopeoRecorder()
    monkeypatch.setattr(skopeo.proc, "run", rec)
    monkeypatch.setattr(skopeo, "transports", lambda: frozenset(skopeo.TRANSPORTS))
    return rec


@pytest.mark.parametrize(
    ("source", "opts", "want_ref", "want_tls"),
    [
        ("docker://busybox", {}, "docker://busybox", None),
        ("docker://quay.io/a/b:1", {"tls_verify": False}, "docker://quay.io/a/b:1", "false"),
        ("docker://127.0.0.1:5000/x:1", {}, "docker://127.0.0.1:5000/x:1", "false"),
        ("docker://localhost:5000/x", {"tls_verify": True}, "docker://localhost:5000/x", "true"),
        ("docker-archive:img.tar", {}, "docker-archive:img.tar", None),
        ("oci-archive:a b/img.tar", {"tls_verify": False}, "oci-archive:a b/img.tar", None),
        ("oci:layout:tag", {}, "oci:layout:tag", None),
        ("dir:some/dir", {}, "dir:some/dir", None),
    ],
)
def test_import_reaches_skopeo_with_a_whole_reference(repos, recorder, source, opts, want_ref,
                                                      want_tls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for d in ("layout", "some/dir", "a b"):
        (tmp_path / d).mkdir(parents=True)
    for f in ("img.tar", "a b/img.tar"):
        (tmp_path / f).write_bytes(b"")
    with pytest.raises(ToolError, match="stopped by the test"):
        ops.import_image(repos, source, "user:img", **opts)
    argv = recorder.copy_argv()
    assert argv[-2] == want_ref
    assert argv[-1].startswith("oci:") and argv[-1].endswith(":pcocc")
    tls = [a.split("=", 1)[1] for a in argv if a.startswith("--src-tls-verify=")]
    assert tls == ([] if want_tls is None else [want_tls])
    assert not repos.get("user").has_image("img")


def test_missing_local_source_fails_before_skopeo(repos, recorder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for source in ("docker-archive:img.tar", "oci:layout:tag", "dir:d", "oci-archive:a:b"):
        with pytest.raises(NotFound, match=f"{source}: no such file"):
            ops.import_image(repos, source, "user:x")
    assert recorder.calls == []


def test_export_reaches_skopeo_with_a_whole_reference(repos, recorder, monkeypatch):
    blobs = []
    for data in (b'{"os":"linux"}', b"layer"):
        blobs.append(_put(repos.get("user"), data))
    manifest = {"schemaVersion": 2, "config": {"mediaType": "application/vnd.oci.image.config."
                                                            "v1+json",
                                               "digest": blobs[0].digest, "size": 14},
                "layers": [{"digest": blobs[1].digest, "size": 5}]}
    mblob = _put(repos.get("user"), b"{}")  # the manifest blob: content does not matter here
    oci = {"manifest_digest": mblob.digest, "manifest": manifest, "config": {"os": "linux"}}
    repos.get("user").commit(new_meta("c", KIND_CTR, [*blobs, mblob], oci=oci), new_image=True)
    with pytest.raises(ToolError):
        ops.export_image(repos, "c", "docker://127.0.0.1:5000/c:1")
    argv = recorder.copy_argv()
    assert argv[-1] == "docker://127.0.0.1:5000/c:1"
    assert "--dest-tls-verify=false" in argv
    with pytest.raises(UsageError, match="only be imported") as info:
        ops.export_image(repos, "c", "c.simg")
    assert "docker-archive" in info.value.hint
    with pytest.raises(UsageError, match="say which container format"):
        ops.export_image(repos, "c", "out.tar")


def test_import_records_absolute_local_sources(repos, monkeypatch, tmp_path):
    seen = {}

    def fake_import(source, fmt, staging, add_blob, progress, **kw):
        seen.update(source=source, fmt=fmt, kw=kw)
        raise ToolError("enough", tool="skopeo")

    from pcocc.repo import oci

    monkeypatch.setattr(oci, "import_image", fake_import)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ToolError):
        ops.import_image(repos, "docker://busybox", "user:x", tls_verify=False)
    assert seen == {"source": "//busybox", "fmt": "docker", "kw": {"tls_verify": False}}
    with pytest.raises(ToolError):
        ops.import_image(repos, "docker-archive:img.tar", "user:x")
    assert seen["kw"] == {}  # not passed when unset
    from pcocc.repo import drivers

    spec = drivers.parse_format("docker-archive:img.tar")
    assert ops._container_source(spec) == f"docker-archive:{tmp_path}/img.tar"
    assert ops._container_source(drivers.parse_format("docker://busybox")) == "docker://busybox"


@pytest.mark.parametrize(
    ("ref", "host", "loopback"),
    [
        ("docker://busybox", None, False),
        ("docker://library/busybox:1", None, False),
        ("docker://quay.io/a/b", "quay.io", False),
        ("docker://127.0.0.1:5000/a", "127.0.0.1", True),
        ("docker://127.3.2.1/a", "127.3.2.1", True),
        ("docker://localhost/a", "localhost", True),
        ("docker://[::1]:5000/a", "::1", True),
        ("docker://10.0.0.1:5000/a", "10.0.0.1", False),
        ("oci:/x", None, False),
    ],
)
def test_loopback_registries(ref, host, loopback):
    assert skopeo.registry_host(ref) == host
    assert skopeo.is_loopback_registry(ref) is loopback
    assert skopeo.tls_verify_for(ref, None) is (False if loopback else None)
    assert skopeo.tls_verify_for(ref, True) is True


def test_insecure_options_parsing():
    assert _tls_verify(None) is None
    assert _tls_verify("tls") is False
    assert _tls_verify("none") is True
    for bad in ("image", "", "tls,none"):
        with pytest.raises(UsageError):
            _tls_verify(bad)


def test_cache_lookups_through_the_store(repos):
    user, more = repos.get("user"), repos.get("more")
    a = _commit(user, "a", KIND_CTR, b"manifest a", b"layer")
    b0 = _commit(more, "b", KIND_CTR, b"manifest b0")
    b1 = more.commit(new_meta("b", KIND_CTR, [_put(more, b"manifest b1")],
                              oci={"manifest_digest": sha(b"manifest b1"),
                                   "manifest": {}, "config": {}}), new_image=False)
    _commit(user, "vm", KIND_VM, b"qcow2")
    config = types.SimpleNamespace(repos=[RepoConfig("user", user.path),
                                          RepoConfig("more", more.path)])
    assert resolve_container_digest(config, "a") == a.oci["manifest_digest"]
    assert resolve_container_digest(config, "more:b") == b1.oci["manifest_digest"]
    assert resolve_container_digest(config, "b@0") == b0.oci["manifest_digest"]
    assert resolve_container_digest(config, a.image_id[:20]) == a.oci["manifest_digest"]
    with pytest.raises(UsageError, match="VM image"):
        resolve_container_digest(config, "vm")
    with pytest.raises(NotFound):
        resolve_container_digest(config, "nope")
    live = live_container_digests(config)
    assert live == {sha(b"manifest a"), sha(b"manifest b0"), sha(b"manifest b1")}
    user.delete("a")
    assert sha(b"manifest a") not in live_container_digests(config)
