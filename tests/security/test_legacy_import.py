"""import-legacy against a pcocc 0.7 repository written by an attacker.

An admin (root) imports a 0.7 repository that a user handed over (here in a shared
directory, owned by the attacker) into a system repository that everyone reads. The
attacker's VM layers name the victim's private disk as backing file (absolute, or by a
relative path out of the repository), or the attacker's blob is a symbolic link to the
victim's disk. Root can read that disk: if import-legacy followed any of them, the victim's
data would land in a repository the attacker reads. Each such image must be refused, with
nothing of the victim's stored, while the attacker's honest image is imported.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import uuid

import pytest
import yaml

from tests.fixtures.legacy import LegacyRepoWriter
from tests.nonroot import PACKAGE_DIR

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img missing")]


@pytest.fixture
def scene(two_users, victim, attacker, tmp_path):
    tag = uuid.uuid4().hex[:8]
    marker = f"VICTIM-PRIVATE-{tag}"
    disk = victim.home / f"disk-{tag}.raw"
    qdisk = victim.home / f"disk-{tag}.qcow2"
    res = victim.python(
        f"open({str(disk)!r}, 'wb').write({marker!r}.encode() * 40000)")
    assert res.returncode == 0, res.stderr
    res = victim.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disk), str(qdisk)])
    assert res.returncode == 0, res.stderr
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (disk, qdisk)}

    legacy = LegacyRepoWriter(two_users.shared / f"old-{tag}")
    honest = legacy.vm_chain("honest", [0x11, 0x22])
    escapes = {"absolute": str(disk),
               "relative": "../" * (len(legacy.root.parts) + 1) + str(disk).lstrip("/")}
    for kind, name in escapes.items():
        layer = legacy.vm_layer(honest[0], 0x33, 128)
        legacy.meta(f"evil-{kind}", 0, "vm", [honest[0]])
        # the layer names the victim's disk (in raw) instead of its parent blob
        subprocess.run(["qemu-img", "rebase", "-u", "-b", name, "-F", "raw",
                        str(legacy.blob_path(layer))], check=True)
        new = legacy.add_blob(legacy.blob_path(layer))  # renamed to its new digest
        legacy.meta(f"evil-{kind}", 1, "vm", [honest[0], new])
    # a blob that is a link to the victim's disk, under the disk's own digest
    linked = before[qdisk]
    (legacy.root / "data" / linked[:2]).mkdir(exist_ok=True)
    os.symlink(qdisk, legacy.blob_path(linked))
    legacy.meta("evil-link", 0, "vm", [linked])
    attacker.chown(legacy.root)

    global_repo = two_users.shared / f"global-{tag}"
    conf = tmp_path / "admin-conf"
    conf.mkdir()
    (conf / "repos.yaml").write_text(yaml.safe_dump(
        {"repos": [{"name": "site", "path": str(global_repo)}]}))
    admin_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
                 "PYTHONPATH": str(PACKAGE_DIR.parent), "PYTHONDONTWRITEBYTECODE": "1",
                 "PCOCC_SYSTEM_CONF_DIR": str(two_users.sysconf),
                 "PCOCC_USER_CONF_DIR": str(conf)}
    try:
        yield {"legacy": legacy, "global": global_repo, "env": admin_env, "marker": marker,
               "before": before, "escapes": escapes, "qdisk": qdisk}
    finally:
        shutil.rmtree(legacy.root, ignore_errors=True)
        shutil.rmtree(global_repo, ignore_errors=True)
        for p in before:
            p.unlink(missing_ok=True)


def _admin_import(scene) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pcocc.cli.main", "image", "repo",
                           "import-legacy", str(scene["legacy"].root), "--repo", "site"],
                          env=scene["env"], capture_output=True, text=True, timeout=300,
                          check=False)


def test_admin_import_of_a_handed_legacy_repo_leaks_no_private_file(scene, victim, attacker):
    res = _admin_import(scene)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    for kind, name in scene["escapes"].items():
        assert f"evil-{kind}: skipped: VM layer" in res.stderr, res.stderr
        assert f"backing file {name!r}" in res.stderr and "refused" in res.stderr
    link = scene["legacy"].blob_path(scene["before"][scene["qdisk"]])
    assert f"evil-link: skipped: {link} is a symbolic link: refused" in res.stderr
    assert "1 images imported, 0 already there, 3 skipped" in res.stdout

    # Only the honest image is there, and nothing of the victim's disk is stored anywhere
    # in the repository the attacker reads.
    meta = scene["global"] / "meta"
    assert sorted(p.name for p in meta.iterdir()) == ["honest"]
    marker = scene["marker"].encode()
    for path in scene["global"].rglob("*"):
        if path.is_file():
            assert marker not in path.read_bytes(), path
    res = attacker.sh(f"grep -rl {scene['marker']} {scene['global']} || echo CLEAN")
    assert res.stdout.strip() == "CLEAN", res.stdout

    # The victim's files are untouched, and still theirs to use.
    for path, digest in scene["before"].items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
        assert path.stat().st_uid == victim.uid
    res = victim.run(["qemu-img", "info", str(scene["qdisk"])])
    assert res.returncode == 0, res.stderr
