"""Where ``pcocc save`` writes and what it commits (pcocc.repo.ops.save_destination,
commit_saved_disk; pcocc.cluster.save.booted_revision), without QEMU: blobs are plain
files here, the store does not look inside them."""

from __future__ import annotations

import hashlib

import pytest

from pcocc.cluster.save import backing_digest, booted_revision
from pcocc.config import RepoConfig
from pcocc.errors import AlreadyExists, PcoccError, PermissionDenied, UsageError
from pcocc.repo import ops
from pcocc.repo.model import KIND_VM, BlobRef
from pcocc.repo.store import Repository, new_meta
from pcocc.repo.reposet import RepoSet


@pytest.fixture
def repos(tmp_path) -> RepoSet:
    return RepoSet([
        RepoConfig("global", tmp_path / "global", "admins", "user"),
        RepoConfig("user", tmp_path / "user", "mine", "user"),
    ])


def put(repo: Repository, data: bytes) -> BlobRef:
    with repo.staging() as st:
        (st / "b").write_bytes(data)
        return BlobRef(repo.add_blob(st / "b"), len(data), "application/vnd.pcocc.qcow2")


def vm_image(repo: Repository, name: str, *layers: bytes):
    blobs = [put(repo, data) for data in layers]
    meta = new_meta(name, KIND_VM, blobs, description="base image",
                    vm={"layers": [b.digest for b in blobs], "virtual_size": 4096})
    return repo.commit(meta, new_image=not repo.has_image(name))


def saved(repos, src, booted, dest, data: bytes, *, full=False):
    dst, name, new = ops.save_destination(repos, src, booted, dest)
    with dst.staging("save") as staging:
        (staging / "layer.qcow2").write_bytes(data)
        return ops.commit_saved_disk(src, booted, staging / "layer.qcow2", dst, name,
                                     new_image=new, full=full, virtual_size=4096,
                                     description="")


def test_a_save_is_a_new_revision_on_the_booted_one(repos):
    src = repos.get("user")
    rev0 = vm_image(src, "img", b"base")
    vm_image(src, "img", b"other base")  # revision 1: the VM booted from 0
    meta = saved(repos, src, rev0, None, b"changes")
    assert meta.ref == "user:img@2" and meta.parent == "user:img@0"
    layers = meta.vm_layers().layers
    assert [b.digest for b in layers[:-1]] == [b.digest for b in rev0.vm_layers().layers]
    assert layers[-1].digest == "sha256:" + hashlib.sha256(b"changes").hexdigest()
    assert meta.description == "base image"


def test_dest_in_another_repository_copies_the_lower_layers(repos, tmp_path):
    src, dst = repos.get("global"), repos.get("user")
    rev0 = vm_image(src, "img", b"base", b"mid")
    meta = saved(repos, src, rev0, "user:mine", b"changes")
    assert meta.ref == "user:mine@0"
    for b in meta.vm_layers().layers:
        assert dst.blob_path(b.digest).is_file()


def test_full_is_a_single_standalone_layer(repos):
    src = repos.get("user")
    rev0 = vm_image(src, "img", b"base", b"mid")
    meta = saved(repos, src, rev0, "flat", b"whole disk", full=True)
    assert [b.digest for b in meta.vm_layers().layers] == [
        "sha256:" + hashlib.sha256(b"whole disk").hexdigest()]


def test_read_only_repository_without_dest_is_refused(tmp_path):
    repos = RepoSet([RepoConfig("global", tmp_path / "g", "", "user")])
    rev0 = vm_image(repos.get("global"), "img", b"base")
    ro = RepoSet([RepoConfig("global", tmp_path / "g", "", "system"),
                  RepoConfig("user", tmp_path / "u", "", "user")])
    with pytest.raises(PermissionDenied, match="read-only") as exc:
        ops.save_destination(ro, ro.get("global"), rev0, None)
    assert "-d" in exc.value.hint
    repo, name, new = ops.save_destination(ro, ro.get("global"), rev0, "mine")
    assert (repo.name, name, new) == ("user", "mine", True)


def test_bad_destinations(repos):
    src = repos.get("user")
    rev0 = vm_image(src, "img", b"base")
    with pytest.raises(UsageError, match="without @REVISION"):
        ops.save_destination(repos, src, rev0, "new@3")
    with pytest.raises(AlreadyExists):
        ops.save_destination(repos, src, rev0, "user:img")
    with pytest.raises(UsageError, match="invalid image URI"):
        ops.save_destination(repos, src, rev0, "bad name")


def test_booted_revision_is_found_by_its_top_layer(repos):
    src = repos.get("user")
    r0 = vm_image(src, "img", b"a")
    r1 = vm_image(src, "img", b"b")
    r2 = vm_image(src, "img", b"a")  # same content as r0: the highest wins
    revs = src.images(all_revisions=True)
    top = lambda m: m.vm_layers().layers[-1].digest  # noqa: E731
    assert booted_revision(revs, top(r1)).revision == r1.revision
    assert booted_revision(revs, top(r0)).revision == r2.revision
    assert booted_revision(revs, "sha256:" + "0" * 64) is None


def test_backing_digest_wants_a_blob_name():
    hexd = "ab" * 32
    assert backing_digest(f"/repo/data/ab/{hexd}", "vm0") == f"sha256:{hexd}"
    with pytest.raises(PcoccError, match="not an overlay on a repository image"):
        backing_digest("/tmp/disk.qcow2", "vm0")
    with pytest.raises(PcoccError):
        backing_digest(None, "vm0")


def view_of(templates: dict, host: str):
    """A one-VM cluster view as etcd would show it, the VM running on ``host``."""
    from pcocc.cluster.definition import build_definition
    from pcocc.cluster.lookup import ClusterView
    from pcocc.cluster.record import ClusterRecord
    from pcocc.cluster.state import ClusterState
    from pcocc.cluster.vmstate import VmRecord

    d = build_definition("tpl:1", templates, owner="bob")
    rec = ClusterRecord("7", d, ClusterState.RUNNING, "n1", 123, batch="local")
    vm = VmRecord(rank=0, host=host, status="running", node_pid=10,
                  qmp_socket="/nonexistent/qmp.sock",
                  extra={"agent_socket": "/nonexistent/qga.sock"})
    return ClusterView("7", rec, {0: vm})


def test_save_refuses_before_touching_the_vm(repos):
    import socket

    from pcocc.cluster.save import save_vm

    with pytest.raises(UsageError, match="vm0 boots a kernel without an image"):
        save_vm(view_of({"tpl": {"kernel": "/k"}}, socket.gethostname()), "vm0", repos)
    vm_image(repos.get("user"), "img", b"base")
    elsewhere = view_of({"tpl": {"image": "user:img"}}, "other-host")
    with pytest.raises(UsageError, match="runs on host other-host") as exc:
        save_vm(elsewhere, "vm0", repos)
    assert exc.value.hint == "run this command on other-host"
    with pytest.raises(AlreadyExists):
        save_vm(elsewhere, "vm0", repos, dest="user:img")
    with pytest.raises(PcoccError, match="vm3 does not exist"):
        save_vm(elsewhere, "vm3", repos)
    assert repos.get("user").layout.revisions("img") == [0]
