"""A fetched qcow2 that already is a base layer as the repository stores it is stored as
downloaded (hashed while it arrived, no qemu-img convert, no second read); anything else is
still converted, and one naming another file still refused."""

from __future__ import annotations

import hashlib
import subprocess

from tests.fixtures.https import https_server  # noqa: F401 - fixture
from tests.fixtures.pgp import pgp_keys  # noqa: F401 - fixture
from tests.integration.repo_testlib import make_raw
from tests.integration.test_fetch import env, pcocc, serve_signed, trust  # noqa: F401


def _qcow2(env, name, *opts):
    out = env["tmp"] / name
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", *opts,
                    str(make_raw(env["tmp"] / f"{name}.raw", 1 << 20, seed=7)), str(out)],
                   check=True, capture_output=True)
    return out


def _blobs(env):
    return {p.name: p for p in (env["repo"] / "data").rglob("*") if p.is_file()}


def test_a_plain_qcow2_is_stored_as_downloaded(env, pcocc_bin, https_server):
    # 4 KiB clusters, qcow2 v2: qemu-img convert would write 64 KiB clusters, v3
    img = _qcow2(env, "small.qcow2", "-o", "cluster_size=4096,compat=0.10")
    url = serve_signed(env, https_server, body=img.read_bytes())
    trust(env, pcocc_bin, "good", "--root")
    pcocc(pcocc_bin, "image", "fetch", url)
    want = hashlib.sha256(img.read_bytes()).hexdigest()
    assert list(_blobs(env)) == [want]
    blob = _blobs(env)[want]
    assert blob.stat().st_mode & 0o777 == 0o444
    subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(img), str(blob)],
                   check=True, capture_output=True)


def test_a_qcow2_with_a_snapshot_is_converted(env, pcocc_bin, https_server):
    img = _qcow2(env, "snap.qcow2", "-o", "cluster_size=4096")
    subprocess.run(["qemu-img", "snapshot", "-c", "s1", str(img)], check=True)
    url = serve_signed(env, https_server, body=img.read_bytes())
    trust(env, pcocc_bin, "good", "--root")
    pcocc(pcocc_bin, "image", "fetch", url)
    (name, blob), = _blobs(env).items()
    assert name != hashlib.sha256(img.read_bytes()).hexdigest()
    info = subprocess.run(["qemu-img", "info", "--output=json", str(blob)], check=True,
                          capture_output=True, text=True).stdout
    assert '"snapshots"' not in info and '"cluster-size": 65536' in info


def test_a_qcow2_naming_a_backing_file_is_still_refused(env, pcocc_bin, https_server):
    base = _qcow2(env, "base.qcow2")
    top = env["tmp"] / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
                    str(top)], check=True, capture_output=True)
    url = serve_signed(env, https_server, body=top.read_bytes())
    trust(env, pcocc_bin, "good", "--root")
    res = pcocc(pcocc_bin, "image", "fetch", url, check=1)
    assert "backing file" in res.stderr and "Traceback" not in res.stderr
    assert not (env["repo"] / "data").exists() or not _blobs(env)
