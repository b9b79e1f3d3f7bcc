"""The checkpoint directory: strict manifest reading (hostile input), the atomic appearance
of DIR, -F that only ever replaces a checkpoint, and the restore checks."""

from __future__ import annotations

import json
import os

import pytest

from pcocc.cluster import ckptdir
from pcocc.cluster.checkpoint import Report, Request
from pcocc.cluster.ckptrestore import check_restore
from pcocc.cluster.definition import build_definition
from pcocc.errors import Corrupt, NotFound, UsageError
from pcocc.repo.digest import sha256_bytes

TEMPLATES = {"tpl": {"kernel": "/k", "accel": "tcg"}, "img": {"image": "user:deb"}}
LAYER = "sha256:" + "a" * 64
OTHER_LAYER = "sha256:" + "b" * 64


def _definition(spec="tpl:2", templates=TEMPLATES):
    return build_definition(spec, templates, owner="alice")


def _manifest(definition=None, **over) -> ckptdir.Manifest:
    definition = definition or _definition()
    vms = tuple(
        ckptdir.VmCheckpoint(rank=vm.rank, image=vm.image,
                             layer=LAYER if vm.image else None,
                             files={ckptdir.STATE: sha256_bytes(b"state%d" % vm.rank),
                                    **({ckptdir.DISK: sha256_bytes(b"disk")} if vm.image
                                       else {})})
        for vm in definition.vms
    )
    fields = dict(batchid="42", qemu_version="7.2.22",
                  definition=json.loads(definition.to_json()), vms=vms)
    fields.update(over)
    return ckptdir.Manifest(**fields)


def _write_checkpoint(root, manifest):
    root.mkdir()
    (root / ckptdir.MANIFEST).write_text(manifest.to_json())
    for vm in manifest.vms:
        d = ckptdir.vm_dir(root, vm.rank)
        d.mkdir()
        (d / ckptdir.STATE).write_bytes(b"state%d" % vm.rank)
        if ckptdir.DISK in vm.files:
            (d / ckptdir.DISK).write_bytes(b"disk")


# -- the manifest ---------------------------------------------------------------------------
def test_manifest_round_trip():
    m = _manifest()
    back = ckptdir.Manifest.from_json(m.to_json(), "m")
    assert back == m


def _hostile(mutate):
    data = json.loads(_manifest().to_json())
    mutate(data)
    return json.dumps(data)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d.update(version=2), "version"),
        (lambda d: d.update(extra=1), "extra"),
        (lambda d: d.pop("vms"), "vms"),
        (lambda d: d.update(vms=[]), "vms"),
        (lambda d: d.update(vms="vm0"), "vms"),
        (lambda d: d.update(batchid="../1"), "batchid"),
        (lambda d: d.update(qemu_version="7.2; rm -rf /"), "qemu_version"),
        (lambda d: d.update(definition=[]), "definition"),
        (lambda d: d["vms"][1].update(rank=0), "vms[1].rank"),
        (lambda d: d["vms"][0].update(rank=True), "vms[0].rank"),
        (lambda d: d["vms"][0]["files"].update({"../../etc/passwd": LAYER}), "vms[0].files"),
        (lambda d: d["vms"][0]["files"].update({ckptdir.STATE: "md5:00"}), "vms[0].files"),
        (lambda d: d["vms"][0].update(files={}), "vms[0].files"),
        (lambda d: d["vms"][0].update(layer="sha256:xyz"), "vms[0].layer"),
        (lambda d: d["vms"][0].update(layer=LAYER), "vms[0].files"),  # a layer, no disk
        (lambda d: d["vms"][0].update(image="x\n"), "vms[0].image"),
        (lambda d: d["vms"][0].update(extra=1), "vms[0].extra"),
        (lambda d: d.update(created=float("nan")), "(record)"),
    ],
)
def test_hostile_manifests_are_refused_naming_the_field(mutate, field):
    with pytest.raises(Corrupt) as err:
        ckptdir.Manifest.from_json(_hostile(mutate), "/ck/manifest.json")
    assert "/ck/manifest.json" in err.value.message
    assert f"'{field}" in err.value.message


@pytest.mark.parametrize("raw", [b"", b"[]", b"{", b"\xff\xfe", b"null",
                                 b"{" + b" " * (ckptdir.MAX_MANIFEST_BYTES + 1) + b"}"])
def test_garbage_is_corrupt(raw):
    with pytest.raises(Corrupt):
        ckptdir.Manifest.from_json(raw, "m")


def test_read_manifest_missing_dir_or_file(tmp_path):
    with pytest.raises(NotFound, match="no such directory"):
        ckptdir.read_manifest(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound, match="has no manifest.json"):
        ckptdir.read_manifest(tmp_path / "empty")


def test_read_manifest_does_not_follow_a_symlink(tmp_path):
    root = tmp_path / "ck"
    root.mkdir()
    (tmp_path / "elsewhere.json").write_text(_manifest().to_json())
    (root / ckptdir.MANIFEST).symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(Exception, match="manifest.json"):
        ckptdir.read_manifest(root)


def test_check_vm_files_sees_a_modified_or_missing_file(tmp_path):
    m = _manifest()
    root = tmp_path / "ck"
    _write_checkpoint(root, m)
    ckptdir.check_vm_files(root, m.vms[0])
    (root / "vm0" / ckptdir.STATE).write_bytes(b"tampered")
    with pytest.raises(Corrupt, match="damaged or modified"):
        ckptdir.check_vm_files(root, m.vms[0])
    (root / "vm1" / ckptdir.STATE).unlink()
    (root / "vm1" / ckptdir.STATE).symlink_to(root / "vm0" / ckptdir.STATE)
    with pytest.raises(Corrupt, match="not a regular file"):
        ckptdir.check_vm_files(root, m.vms[1])


# -- the directory --------------------------------------------------------------------------
def test_existing_dir_is_refused_without_force(tmp_path):
    (tmp_path / "ck").mkdir()
    with pytest.raises(UsageError, match="already exists") as err:
        ckptdir.check_destination(tmp_path / "ck", force=False)
    assert err.value.exit_status == 2
    with pytest.raises(UsageError, match="parent"):
        ckptdir.check_destination(tmp_path / "no" / "ck", force=False)


def test_force_replaces_only_a_checkpoint(tmp_path):
    data = tmp_path / "mydata"
    data.mkdir()
    (data / "thesis.tex").write_text("years of work")
    with pytest.raises(UsageError, match="not a checkpoint"):
        ckptdir.check_destination(data, force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a checkpoint"):
        ckptdir.check_destination(tmp_path / "file", force=True)
    _write_checkpoint(tmp_path / "old", _manifest())
    ckptdir.check_destination(tmp_path / "old", force=True)


def test_commit_makes_dir_appear_whole(tmp_path):
    dest = tmp_path / "ck"
    staging = ckptdir.make_staging(dest)
    assert staging.parent == tmp_path and staging.name.startswith(".ck.ckpt-")
    assert staging.stat().st_mode & 0o777 == 0o700
    (staging / ckptdir.MANIFEST).write_text("{}")
    assert not dest.exists()
    ckptdir.commit(staging, dest, force=False)
    assert sorted(os.listdir(tmp_path)) == ["ck"]
    assert (dest / ckptdir.MANIFEST).read_text() == "{}"


def test_commit_never_replaces_a_dir_that_appeared_meanwhile(tmp_path):
    dest = tmp_path / "ck"
    staging = ckptdir.make_staging(dest)
    dest.mkdir()  # e.g. an empty directory made by someone else meanwhile
    with pytest.raises(UsageError, match="already exists"):
        ckptdir.commit(staging, dest, force=False)
    assert staging.exists() and os.listdir(dest) == []


def test_force_commit_exchanges_and_removes_the_old_checkpoint(tmp_path):
    dest = tmp_path / "ck"
    _write_checkpoint(dest, _manifest())
    staging = ckptdir.make_staging(dest)
    (staging / ckptdir.MANIFEST).write_text("new")
    ckptdir.commit(staging, dest, force=True)
    assert (dest / ckptdir.MANIFEST).read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_stale_staging_of_a_dead_writer_is_removed(tmp_path):
    dead = tmp_path / ".ck.ckpt-999999999-0123abcd"
    dead.mkdir()
    (dead / "vm0").mkdir()
    other = tmp_path / ".other.ckpt-999999999-0123abcd"
    other.mkdir()
    mine = tmp_path / f".ck.ckpt-{os.getpid()}-0123abcd"
    mine.mkdir()
    ckptdir.remove_stale_staging(tmp_path / "ck")
    assert not dead.exists()
    assert other.exists() and mine.exists()


# -- the etcd records -----------------------------------------------------------------------
def test_request_and_report_round_trip_and_refuse_hostile_input():
    req = Request("ab12", "save", "/d/.ck.ckpt-1-00000000", "/d/ck")
    assert Request.from_json(req.to_json()) == req
    for bad in ('{"id": "a b", "phase": "save", "dir": "/x", "dest": "/y"}',
                '{"id": "a", "phase": "rm", "dir": "/x", "dest": "/y"}',
                '{"id": "a", "phase": "save", "dir": "x", "dest": "/y"}',
                '{"id": "a", "phase": "save", "dir": "/x"}'):
        with pytest.raises(Corrupt):
            Request.from_json(bad)
    rep = Report("ab12", "saved", "n1", files={ckptdir.STATE: LAYER}, layer=LAYER,
                 qemu_version="7.2.22")
    assert Report.from_json(rep.to_json()) == rep
    with pytest.raises(Corrupt):
        Report.from_json(rep.to_json().replace(ckptdir.STATE, "../state"))
    with pytest.raises(Corrupt):
        Report.from_json(rep.to_json().replace('"n1"', '"-oProxyCommand"'))


# -- restore checks -------------------------------------------------------------------------
def _restore(tmp_path, definition, saved_definition=None, layer_now=LAYER, qemu="7.2.22"):
    root = tmp_path / "ck"
    if not root.exists():
        _write_checkpoint(root, _manifest(saved_definition or definition))
    return check_restore(root, definition, lambda uri: layer_now, qemu)


def test_restore_accepts_the_same_cluster(tmp_path):
    d = _definition("tpl:1,img:1")
    m = _restore(tmp_path, d)
    assert [vm.layer for vm in m.vms] == [None, LAYER]


def test_restore_refuses_another_definition(tmp_path):
    with pytest.raises(UsageError, match="is of cluster 'tpl:2', not 'tpl:3'") as err:
        _restore(tmp_path, _definition("tpl:3"), saved_definition=_definition("tpl:2"))
    assert err.value.exit_status == 2


def test_restore_refuses_a_changed_template_naming_the_setting(tmp_path):
    changed = {**TEMPLATES, "tpl": {"kernel": "/k2", "accel": "tcg"}}
    with pytest.raises(UsageError, match=r"vm0 \(template tpl\): its settings \(kernel\)"):
        _restore(tmp_path, _definition(templates=changed), saved_definition=_definition())


def test_restore_refuses_a_changed_image_revision(tmp_path):
    d = _definition("img:1")
    with pytest.raises(UsageError, match="image 'user:deb' of vm0 changed"):
        _restore(tmp_path, d, layer_now=OTHER_LAYER)


def test_restore_refuses_another_qemu(tmp_path):
    with pytest.raises(UsageError, match="written by QEMU 7.2.22, this is QEMU 8.0.0"):
        _restore(tmp_path, _definition(), qemu="8.0.0")


def test_restore_refuses_missing_or_corrupt_checkpoint(tmp_path):
    d = _definition()
    with pytest.raises(NotFound, match="no such directory"):
        check_restore(tmp_path / "missing", d, lambda uri: LAYER, None)
    _write_checkpoint(tmp_path / "partial", _manifest(d))
    (tmp_path / "partial" / "vm1" / ckptdir.STATE).unlink()
    with pytest.raises(Corrupt, match="vm1/state is missing"):
        check_restore(tmp_path / "partial", d, lambda uri: LAYER, None)
    root = tmp_path / "ck"
    root.mkdir()
    (root / ckptdir.MANIFEST).write_text('{"format": "pcocc-checkpoint"}')
    with pytest.raises(Corrupt, match="field 'version'"):
        check_restore(root, d, lambda uri: LAYER, None)


def test_ckpt_keys_parse_back_and_a_hostile_request_is_ignored():
    from pcocc.cluster.checkpoint import pending_request
    from pcocc.kv import keys

    assert keys.parse_cluster_key(keys.ckpt_request("alice", "42")).kind == "ckpt_request"
    parsed = keys.parse_cluster_key(keys.ckpt_report("alice", "42", 3))
    assert (parsed.kind, parsed.rank) == ("ckpt_report", 3)
    with pytest.raises(Corrupt):
        keys.parse_cluster_key("/pcocc/users/alice/clusters/42/ckpt/x")
    key = keys.ckpt_request("alice", "42")
    req = Request("ab12", "save", "/d/s", "/d/ck")
    assert pending_request({key: req.to_json()}, "alice", "42", None) == req
    assert pending_request({key: req.to_json()}, "alice", "42", "ab12") is None  # answered
    assert pending_request({key: '{"id": "x", "phase": "save", "dir": "rel", "dest": "/d"}'},
                           "alice", "42", None) is None


def test_ctrl_c_while_the_vms_save_leaves_nothing_and_tells_them_to_resume(tmp_path):
    """Ctrl-C in 'pcocc ckpt' while the nodes save: no DIR, no staging directory, and the
    request says abort (the nodes resume their VMs)."""
    from pcocc.cluster.checkpoint import checkpoint_cluster
    from pcocc.kv import keys
    from tests.fixtures.memkv import MemoryKv

    class Interrupting(MemoryKv):
        interrupted = False

        def wait_for(self, prefix, predicate, timeout_s, tick_s=0.5):
            if not self.interrupted:
                self.interrupted = True
                raise KeyboardInterrupt
            return super().wait_for(prefix, predicate, 0.2, tick_s)

    kv = Interrupting()
    kv.put(keys.cluster_definition("alice", "42"), "{}")
    with pytest.raises(KeyboardInterrupt):
        checkpoint_cluster(kv, "alice", "42", _definition(), tmp_path / "ck", tick_s=0.01)
    assert os.listdir(tmp_path) == []
    request = Request.from_json(kv.get(keys.ckpt_request("alice", "42")))
    assert request.phase == "abort"
