"""``pcocc image repo import-legacy``: a repository written as pcocc 0.7 writes it (see
tests/fixtures/legacy.py) imports completely; damaged or escaping images are skipped whole."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.fixtures.cli import run_pcocc
from tests.fixtures.legacy import LegacyRepoWriter

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img missing")

KIB = 1024
PATTERNS = [0xAB, 0xCD, 0xEF]  # revision i writes PATTERNS[i] at 64*i KiB


@pytest.fixture
def legacy(tmp_path):
    w = LegacyRepoWriter(tmp_path / "repo-0.7")
    w.blobs = w.vm_chain("centos", PATTERNS)
    w.ctr_blobs, index = w.ctr_image()
    w.meta("alpine", 0, "ctr", w.ctr_blobs, custom_meta={"oci_index": index})
    return w


def _json(pcocc_bin, *args):
    return json.loads(run_pcocc(pcocc_bin, *args, "--json", check=0).stdout)


def _user_repo(pcocc_env):
    return pcocc_env["home"] / ".pcocc" / "repo"


def test_imports_every_image_and_revision(pcocc_bin, pcocc_env, legacy, tmp_path):
    res = run_pcocc(pcocc_bin, "image", "repo", "import-legacy", legacy.root, check=0)
    assert "2 images imported, 0 already there, 0 skipped" in res.stdout
    images = {m["name"]: m for m in _json(pcocc_bin, "image", "list")}
    assert set(images) == {"centos", "alpine"}
    assert images["centos"]["revision"] == 2 and images["alpine"]["type"] == "cont"

    revs = _json(pcocc_bin, "image", "show", "centos")
    assert [r["revision"] for r in revs] == [0, 1, 2]
    assert [r["owner"] for r in revs] == ["ann"] * 3
    assert [r["created"] for r in revs] == [1546300800.5] * 3
    assert [r["description"] for r in revs] == ["centos base", "centos rev 1", "centos rev 2"]
    assert [r["parent"] for r in revs] == [None, "centos@0", "centos@1"]
    assert [len(r["layers"]) for r in revs] == [1, 2, 3]
    assert revs[2]["layers"][:2] == revs[1]["layers"]  # layers shared, not copied
    assert revs[0]["layers"] == ["sha256:" + legacy.blobs[0]]  # the base is unchanged

    # the content of each revision is its chain's: revision i sees patterns 0..i
    for rev in (1, 2):
        out = tmp_path / f"centos{rev}.raw"
        run_pcocc(pcocc_bin, "image", "export", f"centos@{rev}", f"raw:{out}", check=0)
        data = out.read_bytes()
        for i, pattern in enumerate(PATTERNS):
            want = bytes([pattern]) * (64 * KIB) if i <= rev else bytes(64 * KIB)
            assert data[64 * KIB * i: 64 * KIB * (i + 1)] == want, (rev, i)

    alpine = _json(pcocc_bin, "image", "show", "alpine")[0]
    assert alpine["manifest_digest"] == legacy.ctr_blobs[0]
    assert alpine["layers"] == [legacy.ctr_blobs[2]] and alpine["entrypoint"] is None
    # each stored layer is a sound qcow2 whose chain opens inside the repository
    data = _user_repo(pcocc_env) / "data"
    for digest in revs[2]["layers"]:
        hexd = digest.split(":")[1]
        subprocess.run(["qemu-img", "check", "-q", "-f", "qcow2", "-U",
                        str(data / hexd[:2] / hexd)], check=True)
    # every digest and every qcow2 chain of the result checks out
    res = run_pcocc(pcocc_bin, "image", "repo", "fsck", "user", check=0)
    assert "0 problems" in res.stdout


def test_second_run_changes_nothing(pcocc_bin, pcocc_env, legacy):
    run_pcocc(pcocc_bin, "image", "repo", "import-legacy", legacy.root, check=0)
    meta = _user_repo(pcocc_env) / "meta"
    before = sorted(p.relative_to(meta) for p in meta.rglob("*"))
    res = run_pcocc(pcocc_bin, "image", "repo", "import-legacy", legacy.root, "--repo", "user",
                    check=0)
    assert "0 images imported, 2 already there, 0 skipped" in res.stdout
    assert sorted(p.relative_to(meta) for p in meta.rglob("*")) == before
    # a revision added to the old repository since: said, not merged
    legacy.meta("centos", 3, "vm", legacy.blobs)
    res = run_pcocc(pcocc_bin, "image", "repo", "import-legacy", legacy.root, check=1)
    assert (f"centos: skipped: image 'user:centos' was imported from {legacy.root} with "
            "revisions [0, 1, 2], which now has [0, 1, 2, 3]") in res.stderr


def test_a_corrupted_blob_skips_its_image_whole(pcocc_bin, pcocc_env, legacy):
    damaged = legacy.blob_path(legacy.blobs[1])
    os.chmod(damaged, 0o644)
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    res = run_pcocc(pcocc_bin, "image", "repo", "import-legacy", legacy.root, check=1)
    assert f"centos: skipped: blob {damaged} is damaged" in res.stderr
    assert "1 images imported, 0 already there, 1 skipped" in res.stdout
    assert "Traceback" not in res.stderr
    assert [m["name"] for m in _json(pcocc_bin, "image", "list")] == ["alpine"]
    assert not (_user_repo(pcocc_env) / "meta" / "centos").exists()  # no revision at all
    assert list((_user_repo(pcocc_env) / "tmp").iterdir()) == []


@pytest.mark.parametrize("backing", ["/etc/passwd", "../../../outside.qcow2",
                                     "../../data/{other}"])
def test_a_backing_file_other_than_its_parent_blob_is_refused(
        pcocc_bin, pcocc_env, legacy, tmp_path, backing):
    """A layer may name only its parent blob in the same repository: an absolute path, a
    path out of the repository, or another blob of it are all refused for that image."""
    outside = tmp_path / "outside.qcow2"
    shutil.copy(legacy.blob_path(legacy.blobs[0]), outside)
    name = backing.format(other=f"{legacy.blobs[1][:2]}/{legacy.blobs[1]}")
    base = legacy.vm_base(0x11)
    evil = legacy.vm_layer(base, 0x22, 64, backing_name=name)
    legacy.meta("evil", 0, "vm", [base])
    legacy.meta("evil", 1, "vm", [base, evil])
    res = run_pcocc(pcocc_bin, "image", "repo", "import-legacy", legacy.root, check=1)
    assert f"evil: skipped: VM layer {legacy.blob_path(evil)} is refused" in res.stderr
    assert f"backing file {name!r}" in res.stderr
    assert sorted(m["name"] for m in _json(pcocc_bin, "image", "list")) == ["alpine", "centos"]


def test_a_symlinked_blob_is_refused(pcocc_bin, pcocc_env, legacy, tmp_path):
    """A blob that is a symbolic link (here to a file with the right content) is not read."""
    target = legacy.blob_path(legacy.blobs[0])
    outside = tmp_path / "outside.qcow2"
    shutil.copy(target, outside)
    os.unlink(target)
    os.symlink(outside, target)
    res = run_pcocc(pcocc_bin, "image", "repo", "import-legacy", legacy.root, check=1)
    assert f"centos: skipped: {target} is a symbolic link: refused" in res.stderr
    assert [m["name"] for m in _json(pcocc_bin, "image", "list")] == ["alpine"]


def test_a_legacy_repository_in_repos_yaml_is_not_written_in_place(pcocc_bin, pcocc_env,
                                                                   legacy, tmp_path):
    (pcocc_env["user"] / "repos.yaml").write_text(
        f"repos:\n  - name: old\n    path: {legacy.root}\n")
    src = tmp_path / "disk.qcow2"
    shutil.copy(legacy.blob_path(legacy.blobs[0]), src)
    res = run_pcocc(pcocc_bin, "image", "import", src, "old:new", check=1)
    assert "holds a pcocc 0.7 repository" in res.stderr and "import-legacy" in res.stderr
    assert not (legacy.root / "repo.json").exists()
