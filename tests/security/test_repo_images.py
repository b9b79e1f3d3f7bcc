"""Image repositories against a local attacker and hostile image files.

The attacker builds images whose header names another file (a backing file, a qcow2
external data file, vmdk extents), files whose name reads as a qemu protocol, and blobs
planted in their own repository; an admin (root) imports or copies them into a system
repository the attacker can read. Nothing of a root-only file may come out, a copied
blob must not stay writable by the attacker, and an attacker holding flocks must not
stall the admin's writes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tests.nonroot import PACKAGE_DIR

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img missing")]

MIB = 1 << 20


class Admin:
    """root running pcocc with its own repos.yaml (the system repository listed as a
    writable one, as admins fill it) and the shared system configuration."""

    def __init__(self, home: Path, sysconf: Path, repos: dict[str, Path]):
        self.home = home
        self.conf = home / "conf"
        self.conf.mkdir(parents=True)
        _write_repos(self.conf, repos)
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
                    "PYTHONPATH": str(PACKAGE_DIR.parent), "PYTHONDONTWRITEBYTECODE": "1",
                    "PCOCC_SYSTEM_CONF_DIR": str(sysconf), "PCOCC_USER_CONF_DIR": str(self.conf)}

    def pcocc(self, *args, cwd: Path | None = None, timeout: float = 120
              ) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pcocc.cli.main", *map(str, args)],
                              env=self.env, cwd=cwd or self.home, capture_output=True,
                              text=True, timeout=timeout, check=False)


def _write_repos(conf: Path, repos: dict[str, Path]) -> None:
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "repos.yaml").write_text(yaml.safe_dump(
        {"repos": [{"name": n, "path": str(p)} for n, p in repos.items()]}))


@pytest.fixture
def site(two_users, attacker, tmp_path):
    """A root-owned system repository (``global`` in the system repos.yaml), the attacker's
    own repository (``mine``), a root-only secret and an admin configured for both."""
    tag = uuid.uuid4().hex[:8]
    top = two_users.shared / f"repo-{tag}"
    top.mkdir(mode=0o755)
    sys_repo = top / "global"
    secret = top / "secret"
    marker = f"ROOT-ONLY-{tag}".encode()
    secret.write_bytes((marker * (MIB // len(marker) + 1))[:MIB])
    secret.chmod(0o600)
    work = attacker.home / f"work-{tag}"
    mine = attacker.home / f"repo-{tag}"
    res = attacker.sh(f"mkdir -p {work} && mkdir -p {attacker.home}/.pcocc")
    assert res.returncode == 0, res.stderr
    _write_repos(attacker.home / ".pcocc", {"mine": mine})
    attacker.chown(attacker.home / ".pcocc")
    _write_repos(two_users.sysconf, {"global": sys_repo})
    admin = Admin(tmp_path / "admin", two_users.sysconf,
                  {"admin-global": sys_repo, "att": mine})
    try:
        yield {"top": top, "sys_repo": sys_repo, "secret": secret, "marker": marker,
               "work": work, "mine": mine, "admin": admin, "tag": tag}
    finally:
        (two_users.sysconf / "repos.yaml").unlink(missing_ok=True)
        shutil.rmtree(top, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(mine, ignore_errors=True)


def _qemu_img(user, *args: str) -> None:
    res = user.run(["qemu-img", *args])
    assert res.returncode == 0, (args, res.stderr)


def _stored(repo: Path) -> dict[str, list[str]]:
    """What a repository holds: metadata files, blobs and tmp/ entries."""
    def files(d: Path, pattern: str) -> list[str]:
        return sorted(str(p) for p in d.rglob(pattern)) if d.is_dir() else []
    return {"meta": files(repo / "meta", "*.json"),
            "data": [p for p in files(repo / "data", "*") if Path(p).is_file()],
            "tmp": files(repo / "tmp", "*")}


EMPTY = {"meta": [], "data": [], "tmp": []}


def _hostile_images(attacker, site) -> dict[str, tuple[Path, str]]:
    """name -> (image built by the attacker, what the refusal must say)."""
    work, secret = site["work"], site["secret"]
    out = {}
    p = work / "shadow.qcow2"
    _qemu_img(attacker, "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw",
              str(p), "1M")
    out["backing-absolute"] = (p, "backing file '/etc/shadow'")
    rel = "../" * (len(work.parts) + 2) + str(secret).lstrip("/")
    p = work / "relative.qcow2"
    _qemu_img(attacker, "create", "-q", "-f", "qcow2", "-u", "-b", rel, "-F", "raw", str(p),
              "1M")
    out["backing-relative"] = (p, f"backing file '{rel}'")
    p = work / "datafile.qcow2"
    own = work / "own.raw"
    _qemu_img(attacker, "create", "-q", "-f", "raw", str(own), "1M")
    _qemu_img(attacker, "create", "-q", "-f", "qcow2", "-o",
              f"data_file={own},data_file_raw=on", str(p), "1M")
    _qemu_img(attacker, "amend", "-f", "qcow2", "-o", f"data_file={secret}", str(p))
    out["data-file"] = (p, f"external data file '{secret}'")
    p = work / "flat.vmdk"
    p.write_text('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                 'createType="monolithicFlat"\n\n'
                 f'RW 2048 FLAT "{secret}" 0\n\nddb.virtualHWVersion = "4"\n')
    attacker.chown(p)
    out["vmdk-extent"] = (p, "VMDK descriptor")
    return out


HOSTILE = ("backing-absolute", "backing-relative", "data-file", "vmdk-extent")


@pytest.mark.parametrize("case", HOSTILE)
def test_attacker_import_of_an_image_naming_another_file_is_refused(attacker, site, case):
    path, why = _hostile_images(attacker, site)[case]
    res = attacker.pcocc("image", "import", path, "mine:evil")
    assert res.returncode != 0, res.stdout
    assert why in res.stderr and "refused" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert _stored(site["mine"]) == EMPTY


@pytest.mark.parametrize("case", HOSTILE)
def test_admin_import_of_a_handed_image_leaks_no_root_file(attacker, site, case):
    """The attacker hands the admin an image; the admin imports it into the system
    repository; the attacker exports it. Nothing is stored, nothing comes out."""
    path, why = _hostile_images(attacker, site)[case]
    res = site["admin"].pcocc("image", "import", path, "admin-global:handed")
    assert res.returncode != 0, "the admin imported a hostile image"
    assert why in res.stderr and "refused" in res.stderr, res.stderr
    assert _stored(site["sys_repo"]) == {**EMPTY, "data": []}
    out = site["work"] / "out.raw"
    res = attacker.pcocc("image", "export", "global:handed", f"raw:{out}")
    assert res.returncode != 0
    assert not out.exists()


def test_protocol_names_are_read_as_files(attacker, site):
    """A file named like a qemu protocol (``json:{...}``, ``nbd:...``) imported by the admin
    from its directory is that file's bytes, never what the name points at."""
    work, secret, marker = site["work"], site["secret"], site["marker"]
    target = str(secret).replace("/", "\\u002f")  # a JSON escape: no '/' in the name
    names = [f'json:{{"driver":"raw","file":{{"driver":"file","filename":"{target}"}}}}',
             "nbd:localhost:1", "disk:v1"]
    for i, name in enumerate(names):
        raw = work / name
        raw.write_bytes(bytes([0x41 + i]) * MIB)
        attacker.chown(raw)
        res = site["admin"].pcocc("image", "import", "-t", "raw", name,
                                  f"admin-global:named{i}", cwd=work)
        assert res.returncode == 0, res.stderr
        out = site["work"] / f"out{i}.raw"
        res = attacker.pcocc("image", "export", f"global:named{i}", f"raw:{out}")
        assert res.returncode == 0, res.stderr
        data = out.read_bytes()
        assert marker not in data
        assert data == bytes([0x41 + i]) * MIB


PLANT = """
import shutil, sys
from pathlib import Path
from pcocc.config import RepoConfig
from pcocc.repo.model import BlobRef
from pcocc.repo.store import Repository, new_meta

repo = Repository(RepoConfig("mine", Path(sys.argv[1])))
repo.ensure()
with repo.staging() as st:
    shutil.copy(sys.argv[2], st / "evil")
    size = (st / "evil").stat().st_size
    digest = repo.add_blob(st / "evil")
meta = new_meta("evil", "vm", [BlobRef(digest, size, "application/vnd.pcocc.qcow2")],
                vm={"layers": [digest], "virtual_size": 1 << 20})
repo.commit(meta, new_image=True)
print(digest)
"""


@pytest.mark.parametrize("case", ["data-file", "backing-absolute"])
def test_planted_blob_is_reported_by_fsck_and_refused_by_copy(attacker, site, case):
    path, _why = _hostile_images(attacker, site)[case]
    res = attacker.run(["/usr/bin/python3", "-c", PLANT, str(site["mine"]), str(path)])
    assert res.returncode == 0, res.stderr
    digest = res.stdout.strip()
    admin = site["admin"]
    res = admin.pcocc("image", "repo", "fsck", "att")
    assert res.returncode == 1, res.stdout
    want = "external data file" if case == "data-file" else "backing file '/etc/shadow'"
    assert f"image att:evil@0: layer {digest}" in res.stdout and want in res.stdout, res.stdout
    assert admin.pcocc("image", "repo", "fsck", "admin-global").returncode == 0
    res = admin.pcocc("image", "copy", "att:evil", "admin-global:evil")
    assert res.returncode == 1, res.stderr
    assert f"layer {digest}" in res.stderr and want in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert _stored(site["sys_repo"])["meta"] == []
    assert _stored(site["sys_repo"])["data"] == []
    out = site["work"] / "stolen.raw"
    assert attacker.pcocc("image", "export", "global:evil", f"raw:{out}").returncode != 0
    assert not out.exists()


def test_copied_blob_is_not_the_attackers_to_change(attacker, site):
    work = site["work"]
    raw = work / "good.raw"
    raw.write_bytes(b"\x5a" * MIB)
    attacker.chown(raw)
    res = attacker.pcocc("image", "import", f"raw:{raw}", "mine:good")
    assert res.returncode == 0, res.stderr
    admin = site["admin"]
    res = admin.pcocc("image", "copy", "att:good", "admin-global:good")
    assert res.returncode == 0, res.stderr
    meta = json.loads(next((site["sys_repo"] / "meta" / "good").glob("*.json")).read_text())
    digest = meta["vm"]["layers"][0]
    hexd = digest.split(":", 1)[1]
    blob = site["sys_repo"] / "data" / hexd[:2] / hexd
    st = blob.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o444)
    own = site["mine"] / "data" / hexd[:2] / hexd
    attack = (f"chmod u+w {blob}; printf EVIL | dd of={blob} bs=1 seek=0 conv=notrunc; "
              f"chmod u+w {own}; printf EVIL | dd of={own} bs=1 seek=0 conv=notrunc")
    attacker.sh(attack)
    assert blob.stat().st_mode & 0o777 == 0o444
    res = admin.pcocc("image", "repo", "fsck", "admin-global")
    assert res.returncode == 0 and "0 problems" in res.stdout, res.stdout
    out = work / "after.raw"
    res = attacker.pcocc("image", "export", "global:good", f"raw:{out}")
    assert res.returncode == 0, res.stderr
    assert out.read_bytes() == b"\x5a" * MIB


HOLD = """
import fcntl, os, sys, time
held = []
for path in sys.argv[2:]:
    try:
        fd = os.open(path, os.O_RDONLY)
        fcntl.flock(fd, int(sys.argv[1]) | fcntl.LOCK_NB)
        held.append(path)
    except OSError as err:
        print("cannot", path, err.strerror, flush=True)
print("holding", *held, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("op", ["LOCK_SH", "LOCK_EX"])
def test_attacker_flock_does_not_stall_admin_writes(attacker, site, op):
    import fcntl

    work = site["work"]
    raw = work / "disk.raw"
    raw.write_bytes(b"\x11" * MIB)
    attacker.chown(raw)
    admin = site["admin"]
    res = admin.pcocc("image", "import", f"raw:{raw}", "admin-global:first")
    assert res.returncode == 0, res.stderr
    repo = site["sys_repo"]
    locks = [repo / "lock", repo / "locks" / "write.lock"]
    holder = attacker.popen(["/usr/bin/python3", "-c", HOLD, str(getattr(fcntl, op)),
                             *map(str, locks)], stdout=subprocess.PIPE, text=True)
    try:
        line = holder.stdout.readline()
        while line.startswith("cannot"):
            line = holder.stdout.readline()
        assert line.startswith("holding"), line
        assert str(locks[1]) not in line  # writers' lock: out of the attacker's reach
        try:
            res = admin.pcocc("image", "import", f"raw:{raw}", "admin-global:second",
                              timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the admin's import is stalled by the attacker's flock")
        assert res.returncode == 0, res.stderr
        res = admin.pcocc("image", "delete", "admin-global:first", timeout=60)
        assert res.returncode == 0, res.stderr
        res = admin.pcocc("image", "repo", "gc", "admin-global", "--grace-period", "0",
                          timeout=60)
        assert res.returncode == 0, res.stderr
    finally:
        holder.kill()
        holder.wait()
    assert "second" in attacker.pcocc("image", "list", "-R", "global").stdout
