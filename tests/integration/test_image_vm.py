"""VM images with the real qemu-img, through a real ``pcocc`` process where it matters."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from repo_testlib import (
    assert_one_line_error,
    convert,
    make_raw,
    ok,
    pcocc,
    repo_files,
    same_content,
    write_repos,
)

from pcocc.config import RepoConfig
from pcocc.repo import ops, qemu_img
from pcocc.repo.reposet import RepoSet

FORMATS = ("raw", "qcow2", "qed", "vdi", "vmdk")

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img missing")


@pytest.fixture
def env(pcocc_env, tmp_path):
    repos = {"user": tmp_path / "repo-user", "other": tmp_path / "repo-other"}
    write_repos(pcocc_env["user"], repos)
    work = tmp_path / "work"
    work.mkdir()
    return {**pcocc_env, "repos": repos, "work": work,
            "set": RepoSet([RepoConfig(n, p) for n, p in repos.items()])}


@pytest.mark.parametrize("src_fmt", FORMATS)
def test_round_trip_every_format(env, pcocc_bin, src_fmt):
    work = env["work"]
    raw = make_raw(work / "orig.raw", seed=len(src_fmt))
    src = raw if src_fmt == "raw" else convert(raw, work / f"src.{src_fmt}", src_fmt)
    ok(pcocc_bin, "image", "import", src, "vmimg")  # format from the extension
    meta = env["set"].resolve("vmimg")[1]
    layer = env["repos"]["user"] / "data" / meta.vm["layers"][0][7:9] / meta.vm["layers"][0][7:]
    assert qemu_img.info(layer).format == "qcow2"
    assert (layer.stat().st_mode & 0o777) == 0o444
    for out_fmt in FORMATS:
        dest = work / f"out-{out_fmt}.img"
        ok(pcocc_bin, "image", "export", "-t", out_fmt, "vmimg", dest)
        assert qemu_img.info(dest).format == out_fmt
        assert same_content(raw, dest), f"{src_fmt} -> {out_fmt} changed the contents"
    ok(pcocc_bin, "image", "export", "vmimg", f"vdi:{work / 'prefixed'}")
    assert qemu_img.info(work / "prefixed").format == "vdi"
    ok(pcocc_bin, "image", "repo", "fsck")


def test_raw_import_written_in_one_pass_is_a_clean_qcow2(env, pcocc_bin):
    """The raw fast path (pcocc.repo.qcow2write) against qemu-img itself: check finds
    nothing, compare finds the source, the blob is as small as qemu-img convert's, and the
    digest is the file's (fsck)."""
    work = env["work"]
    raw = make_raw(work / "disk.raw", size=(600 << 20) + 512)  # 2 L2 tables, a short cluster
    with open(raw, "r+b") as f:  # zeros written as data, and a byte in the last sector
        f.seek(4 << 20)
        f.write(bytes(1 << 20))
        f.seek((600 << 20) + 100)
        f.write(b"end")
    ok(pcocc_bin, "image", "import", "-t", "raw", raw, "fast")
    layer = env["set"].resolve("fast")[1].vm_layers().layers[0]
    blob = env["repos"]["user"] / "data" / layer.digest[7:9] / layer.digest[7:]
    subprocess.run(["qemu-img", "check", "-q", "-f", "qcow2", str(blob)], check=True)
    subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", str(raw),
                    str(blob)], check=True)
    assert qemu_img.info(blob).virtual_size == raw.stat().st_size
    theirs = convert(raw, work / "theirs.qcow2", "qcow2")
    assert blob.stat().st_size <= theirs.stat().st_size + (64 << 10)
    ok(pcocc_bin, "image", "repo", "fsck")


def test_format_from_option_prefix_and_probe(env, pcocc_bin):
    work = env["work"]
    raw = make_raw(work / "disk")  # no extension: raw needs saying
    qcow = convert(raw, work / "qdisk", "qcow2")
    ok(pcocc_bin, "image", "import", "-t", "raw", raw, "a")
    ok(pcocc_bin, "image", "import", f"raw:{raw}", "b")
    ok(pcocc_bin, "image", "import", qcow, "c")  # probed
    for name in "abc":
        ok(pcocc_bin, "image", "export", name, work / f"{name}.raw")
        assert same_content(raw, work / f"{name}.raw")
    res = pcocc(pcocc_bin, "image", "import", raw, "d")
    assert_one_line_error(res, 2, "cannot tell the format", str(raw))
    res = pcocc(pcocc_bin, "image", "import", "-t", "vmdk", qcow, "d")
    assert_one_line_error(res, 2, "is a qcow2 image, not vmdk")
    shutil.copy(qcow, work / "lying.raw")
    res = pcocc(pcocc_bin, "image", "import", work / "lying.raw", "d")
    assert_one_line_error(res, 2, "is a qcow2 image, not raw", "extension")
    res = pcocc(pcocc_bin, "image", "import", "-t", "raw", f"qcow2:{qcow}", "d")
    assert_one_line_error(res, 2, "conflicts")
    assert json.loads(ok(pcocc_bin, "image", "list", "--json").stdout)[-1]["name"] == "c"


def test_images_naming_other_files_are_refused(env, pcocc_bin):
    """A backing file (even a readable one of ours) is refused: pcocc reads only the file it
    is given. Security cases (data files, vmdk extents, other users) are in tests/security."""
    work = env["work"]
    raw = make_raw(work / "base.raw")
    convert(raw, work / "base.qcow2", "qcow2")
    top = work / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
                    str(top)], check=True, cwd=work)
    res = pcocc(pcocc_bin, "image", "import", top, "layered")
    assert_one_line_error(res, 1, "refused", "backing file 'base.qcow2'")
    assert "layered" not in ok(pcocc_bin, "image", "list").stdout
    assert repo_files(env["repos"]["user"])["tmp"] == []


def test_allow_backing_in_repo_flattens_onto_a_stored_blob(env, pcocc_bin):
    if os.geteuid() != 0:
        pytest.skip("--allow-backing-in-repo is for root")
    work = env["work"]
    raw = make_raw(work / "b.raw")
    ok(pcocc_bin, "image", "import", raw, "base")
    repo, meta = env["set"].resolve("base")
    blob = repo.blob_path(meta.vm["layers"][0])
    top = work / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(blob), "-F", "qcow2",
                    str(top)], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 1M 64k", str(top)], check=True,
                   capture_output=True)
    res = pcocc(pcocc_bin, "image", "import", top, "nope")
    assert_one_line_error(res, 1, "refused", "backing file")
    ok(pcocc_bin, "image", "import", "--allow-backing-in-repo", top, "flat")
    flat = env["set"].resolve("flat")[1]
    assert len(flat.vm["layers"]) == 1
    assert qemu_img.info(repo.blob_path(flat.vm["layers"][0])).backing_filename is None
    ok(pcocc_bin, "image", "export", "flat", work / "flat.qcow2")
    assert same_content(top, work / "flat.qcow2")
    outside = work / "outside.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "b.raw", "-F", "raw",
                    str(outside)], check=True, cwd=work)
    res = pcocc(pcocc_bin, "image", "import", "--allow-backing-in-repo", outside, "out",
                "-t", "qcow2")
    assert_one_line_error(res, 1, "is not a blob of the destination repository")


def test_resize_makes_revisions_and_protects_data(env, pcocc_bin):
    work = env["work"]
    raw = make_raw(work / "r.raw", size=8 << 20)
    ok(pcocc_bin, "image", "import", raw, "img")
    ok(pcocc_bin, "image", "resize", "img", "16M")
    repo, meta = env["set"].resolve("img")
    assert (meta.revision, meta.vm["virtual_size"], meta.parent) == (1, 16 << 20, "img@0")
    assert len(meta.vm["layers"]) == 2
    top = repo.blob_path(meta.vm["layers"][1])
    assert qemu_img.info(top).backing_filename == "../" + meta.vm["layers"][0][7:9] + "/" + \
        meta.vm["layers"][0][7:]
    ok(pcocc_bin, "image", "export", "img", work / "grown.raw")
    assert os.path.getsize(work / "grown.raw") == 16 << 20
    assert same_content(raw, work / "grown.raw") is False  # strict: sizes differ
    subprocess.run(["qemu-img", "compare", "-q", str(raw), str(work / "grown.raw")], check=True)
    res = pcocc(pcocc_bin, "image", "resize", "img", "4M")
    assert_one_line_error(res, 2, "smaller than the image")
    res = pcocc(pcocc_bin, "image", "resize", "--shrink", "img", "4M")
    assert_one_line_error(res, 1, "holds data up to byte")
    ok(pcocc_bin, "image", "resize", "--shrink", "img", "12M")  # nothing past 8M: safe
    assert env["set"].resolve("img")[1].vm["virtual_size"] == 12 << 20
    ok(pcocc_bin, "image", "export", "img@0", work / "rev0.raw")
    assert same_content(raw, work / "rev0.raw")
    ok(pcocc_bin, "image", "repo", "fsck")
    res = pcocc(pcocc_bin, "image", "delete", "img@0")  # the base layer stays referenced
    ok(pcocc_bin, "image", "repo", "gc", "--grace-period", "0")
    ok(pcocc_bin, "image", "repo", "fsck")
    ok(pcocc_bin, "image", "export", "img", work / "after-gc.raw")
    subprocess.run(["qemu-img", "compare", "-q", str(raw), str(work / "after-gc.raw")],
                   check=True)


def test_copy_across_repositories_keeps_chains(env, pcocc_bin):
    work = env["work"]
    raw = make_raw(work / "c.raw")
    ok(pcocc_bin, "image", "import", raw, "user:img")
    ok(pcocc_bin, "image", "resize", "img", "10M")
    ok(pcocc_bin, "image", "copy", "user:img", "other:copy")
    other = env["set"].get("other")
    meta = other.get("copy")
    assert meta.revision == 0 and len(meta.vm["layers"]) == 2
    for d in meta.vm["layers"]:  # hard-linked: same inode, shared bytes
        assert other.blob_path(d).stat().st_ino == env["set"].get("user").blob_path(d).stat().st_ino
    ok(pcocc_bin, "image", "delete", "user:img")
    ok(pcocc_bin, "image", "repo", "gc", "user", "--grace-period", "0")
    ok(pcocc_bin, "image", "export", "other:copy", work / "copy.raw")
    subprocess.run(["qemu-img", "compare", "-q", str(raw), str(work / "copy.raw")], check=True)
    out = ok(pcocc_bin, "image", "repo", "fsck", "other").stdout
    assert "0 problems" in out
    res = pcocc(pcocc_bin, "image", "copy", "other:copy", "other:copy")
    assert_one_line_error(res, 1, "already exists")


def test_bad_input_gives_one_line_and_status(env, pcocc_bin):
    work = env["work"]
    raw = make_raw(work / "ok.raw")
    ok(pcocc_bin, "image", "import", raw, "there")
    cases = [
        (["image", "import", "-t", "iso", raw, "x"], 2, "unknown image format 'iso'"),
        (["image", "import", "foo:bar", "x"], 2, "unknown image format 'foo'"),
        (["image", "import", work / "missing.qcow2", "x"], 1, "does not exist"),
        (["image", "import", raw, "bad name!"], 2, "invalid image URI"),
        (["image", "import", raw, "nope:x"], 1, "repository 'nope' is not configured"),
        (["image", "import", raw, "there"], 1, "'user:there' already exists"),
        (["image", "show", "ghost"], 1, "image 'ghost' not found"),
        (["image", "show", "there@9"], 1, "not found"),
        (["image", "export", "ghost", work / "g.raw"], 1, "not found"),
        (["image", "export", "there", work / "ok.raw"], 1, "already exists"),
        (["image", "export", "there", "docker-archive:x.tar"], 2, "is a VM image"),
        (["image", "delete", "user:ghost"], 1, "not found"),
        (["image", "resize", "there", "lots"], 2, "invalid size"),
        (["image", "list", "("], 2, "invalid regular expression"),
        (["image", "repo", "gc", "--grace-period", "soon"], 2, "invalid duration"),
        (["image", "repo", "fsck", "nope"], 1, "repository 'nope' is not configured"),
    ]
    for args, status, needle in cases:
        assert_one_line_error(pcocc(pcocc_bin, *args), status, needle)
    assert [m.name for m in env["set"].images()] == ["there"]


def test_list_many_images(env, pcocc_bin):
    repos = env["set"]
    ok(pcocc_bin, "image", "import", make_raw(env["work"] / "m.raw"), "img-000")
    for i in range(1, 150):
        ops.copy_image(repos, "img-000", f"img-{i:03d}")
    lines = ok(pcocc_bin, "image", "list").stdout.splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "REVISION", "REPO", "OWNER", "DATE", "ID"]
    assert [ln.split()[0] for ln in lines[2:]] == [f"img-{i:03d}" for i in range(150)]
    assert all(ln.split()[1:4] == ["vm", "0", "user"] for ln in lines[2:])
    listed = json.loads(ok(pcocc_bin, "image", "list", "-R", "user", "--json", r"^img-.1[0-4]$")
                        .stdout)
    assert sorted(m["name"] for m in listed) == [f"img-{i:03d}" for i in (10, 11, 12, 13, 14,
                                                                           110, 111, 112, 113,
                                                                           114)]
    assert len(repo_files(repos.get("user").path)["blobs"]) == 1  # all share one layer


def test_show_every_revision(env, pcocc_bin):
    raw = make_raw(env["work"] / "s.raw")
    ok(pcocc_bin, "image", "import", "--description", "a test disk", raw, "img")
    ok(pcocc_bin, "image", "resize", "img", "9M")
    out = ok(pcocc_bin, "image", "show", "img").stdout
    assert "user:img@0" in out and "user:img@1" in out and "a test disk" in out
    assert "parent:       img@0" in out
    full_id = env["set"].resolve("img@1")[1].image_id
    shown = json.loads(ok(pcocc_bin, "image", "show", "--json", full_id[:16]).stdout)
    assert [(s["revision"], s["id"]) for s in shown] == [(1, full_id)]
    assert ok(pcocc_bin, "image", "show", "--full", "img").stdout.count(full_id) == 1


def _unshare_ok() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    res = subprocess.run(["unshare", "-m", "sh", "-c",
                          "mount -t tmpfs -o size=1m tmpfs /mnt 2>/dev/null"])
    return res.returncode == 0


def test_full_disk_is_one_line_and_leaves_repo_consistent(pcocc_env, pcocc_bin, tmp_path):
    if not _unshare_ok():
        pytest.skip("cannot mount a tmpfs in a private mount namespace (needs root)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    write_repos(pcocc_env["user"], {"user": mnt / "repo"})
    small = make_raw(tmp_path / "small.raw", size=1 << 20)
    big = tmp_path / "big.raw"
    big.write_bytes(os.urandom(12 << 20))
    script = """
        set -u
        mount -t tmpfs -o size=6m tmpfs "$1" || exit 99
        "$2" image import "$3" small; echo "small=$?"
        "$2" image import -t raw "$4" big 2>"$1/../big.err"; echo "big=$?"
        "$2" image list; echo "list=$?"
        "$2" image repo fsck; echo "fsck=$?"
        ls -A "$1/repo/tmp" | wc -l | sed 's/^/tmp_entries=/'
    """
    res = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(mnt), pcocc_bin,
                          str(small), str(big)], capture_output=True, text=True, timeout=120)
    out = res.stdout
    assert "small=0" in out and "big=1" in out and "list=0" in out and "fsck=0" in out, (
        out, res.stderr)
    assert "tmp_entries=0" in out
    listed = [ln.split()[0] for ln in out.splitlines() if ln.startswith(("small ", "big "))]
    assert listed == ["small"]
    err = (tmp_path / "big.err").read_text().strip().splitlines()
    assert err[0].startswith("pcocc: error: ") and "No space left on device" in err[0], err
    assert len(err) <= 2 and "Traceback" not in "\n".join(err)


def test_system_repository_is_read_only(pcocc_env, pcocc_bin, tmp_path):
    sys_repo = tmp_path / "global"
    raw = make_raw(tmp_path / "g.raw")
    write_repos(pcocc_env["user"], {"seed": sys_repo})
    ok(pcocc_bin, "image", "import", raw, "seed:base")  # as a user repo, to fill it
    write_repos(pcocc_env["system"], {"global": sys_repo})
    write_repos(pcocc_env["user"], {"user": tmp_path / "mine"})
    assert "global" in ok(pcocc_bin, "image", "list").stdout
    for args in (["import", raw, "global:x"], ["delete", "global:base"],
                 ["resize", "global:base", "20M"], ["copy", "base", "global:y"],
                 ["repo", "gc", "global"]):
        assert_one_line_error(pcocc(pcocc_bin, "image", *args), 1, "read-only")
    ok(pcocc_bin, "image", "copy", "global:base", "mine")  # default: first writable repo
    assert "user:mine@0" in ok(pcocc_bin, "image", "show", "mine").stdout
    ok(pcocc_bin, "image", "export", "base", tmp_path / "out.qcow2")
    ok(pcocc_bin, "image", "repo", "fsck", "global")
    rows = ok(pcocc_bin, "image", "repo", "list").stdout.splitlines()[2:]
    assert [r.split()[:2] for r in rows] == [["global", "ro"], ["user", "rw"]]


def test_unwritable_directory_is_read_only(pcocc_env, pcocc_bin, tmp_path):
    if not _unshare_ok():
        pytest.skip("cannot bind-mount read-only in a private mount namespace (needs root)")
    repo = tmp_path / "repo"
    raw = make_raw(tmp_path / "u.raw")
    write_repos(pcocc_env["user"], {"user": repo})
    ok(pcocc_bin, "image", "import", raw, "base")
    script = """
        mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" || exit 99
        "$2" image import "$3" other
    """
    res = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(repo), pcocc_bin,
                          str(raw)], capture_output=True, text=True, timeout=60)
    assert_one_line_error(res, 1, "read-only for you", "(user)")
    res = subprocess.run(["unshare", "-m", "sh", "-c", script.replace("$3\" other",
                          "$3\" user:other"), "sh", str(repo), pcocc_bin, str(raw)],
                         capture_output=True, text=True, timeout=60)
    assert_one_line_error(res, 1, f"repository 'user' ({repo}) is read-only for you")


def test_non_root_user_cannot_write_a_root_repository(pcocc_bin, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to a throwaway user")
    from tests.nonroot import SYSTEM_PYTHON, nonroot_pythonpath, system_python_problem

    problem = system_python_problem()
    if problem:
        pytest.skip(problem)
    base = Path(tempfile.mkdtemp(prefix="pcocc-perm-"))
    try:
        os.chmod(base, 0o755)
        # the test's virtualenv may sit in a private directory: the unprivileged user runs
        # the system Python on readable copies of pcocc and its dependencies
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                  "env", f"PYTHONPATH={nonroot_pythonpath(base)}",
                  SYSTEM_PYTHON, "-m", "pcocc.cli.main"]  # fmt: skip
        conf = base / "conf"
        write_repos(conf, {"shared": base / "repo"})
        env = {**os.environ, "HOME": str(base), "PCOCC_USER_CONF_DIR": str(conf),
               "PCOCC_SYSTEM_CONF_DIR": str(base / "none")}
        raw = make_raw(base / "p.raw")
        os.chmod(raw, 0o644)
        assert pcocc(pcocc_bin, "image", "import", raw, "img", env=env).returncode == 0
        res = subprocess.run([*nobody, "image", "import", raw, "img2"], env=env,
                             capture_output=True, text=True)
        assert_one_line_error(res, 1, "read-only")
        res = subprocess.run([*nobody, "image", "list"], env=env,
                             capture_output=True, text=True)
        assert res.returncode == 0 and "img" in res.stdout
    finally:
        shutil.rmtree(base)


def test_progress_only_on_a_terminal(env, pcocc_bin):
    import pty
    import select

    raw = make_raw(env["work"] / "p.raw", size=32 << 20)
    res = pcocc(pcocc_bin, "image", "import", raw, "quiet")
    assert res.returncode == 0 and res.stdout == ""
    assert res.stderr.splitlines() == [res.stderr.strip()]  # just the "imported" line
    assert res.stderr.startswith("imported user:quiet@0 (sha256-")
    master, slave = pty.openpty()
    p = subprocess.Popen([pcocc_bin, "image", "export", "quiet", env["work"] / "p.qcow2"],
                         stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    drawn = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        try:
            chunk = os.read(master, 65536) if ready else b""
        except OSError:  # EIO: the terminal's other side is closed
            chunk = b""
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    assert p.wait(timeout=60) == 0
    assert p.stdout.read() == b""
    p.stdout.close()
    assert b"exporting" in drawn  # the rich bar was drawn on the terminal


def test_fsck_checks_qcow2_backing_chains(env, pcocc_bin):
    from pcocc.repo.model import BlobRef
    from pcocc.repo.store import new_meta

    raw = make_raw(env["work"] / "f.raw")
    ok(pcocc_bin, "image", "import", raw, "img")
    ok(pcocc_bin, "image", "resize", "img", "9M")
    repo, meta = env["set"].resolve("img")
    base, top = meta.vm["layers"]
    # A layer that claims to sit on 'base' but whose backing file points elsewhere:
    with repo.staging() as st:
        bad = st / "bad.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "../00/nothere",
                        "-F", "qcow2", str(bad), "9M"], check=True)
        bad_digest = repo.add_blob(bad)
    forged = new_meta("forged", "vm", [*meta.blobs[:1], BlobRef(bad_digest, 1)],
                      vm={"layers": [base, bad_digest], "virtual_size": 9 << 20})
    repo.commit(forged, new_image=True)
    res = pcocc(pcocc_bin, "image", "repo", "fsck")
    assert res.returncode == 1
    assert f"image user:forged@0: layer {bad_digest} has backing file '../00/nothere'" \
        in res.stdout
    assert "user:img" not in res.stdout
    ok(pcocc_bin, "image", "delete", "forged")
    os.unlink(repo.blob_path(base))  # the top layer's parent disappears
    res = pcocc(pcocc_bin, "image", "repo", "fsck")
    assert res.returncode == 1
    assert f"image user:img@1: blob {base} is missing" in res.stdout
    assert f"image user:img@1: layer {top}: backing blob {base} is missing" in res.stdout
    assert_one_line_error(res, 1, "problems found")


def test_awkward_paths(pcocc_env, pcocc_bin, tmp_path):
    weird = tmp_path / "dir with 'quotes'; and \\ spaces"
    weird.mkdir()
    write_repos(pcocc_env["user"], {"user": weird / "repo $HOME"})
    raw = make_raw(weird / "disk \"1\".raw")
    qcow = convert(raw, weird / "a:b c.qcow2", "qcow2")
    ok(pcocc_bin, "image", "import", qcow, "img")
    ok(pcocc_bin, "image", "resize", "img", "9M")
    out = weird / "out put.vmdk"
    ok(pcocc_bin, "image", "export", "img@0", out)
    assert same_content(raw, out)
    assert "0 problems" in ok(pcocc_bin, "image", "repo", "fsck").stdout
