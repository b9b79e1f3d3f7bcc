"""An OCI image archive fetched over HTTPS is split into its blobs as it downloads, each
hashed as it is written: the store takes the downloaded files by a rename (no skopeo copy,
no second hashing pass), a blob that does not hash to its name is refused, and an
interrupted download leaves nothing. pcocc runs under a Python audit hook that logs the
files it creates, the renames and the programs it starts."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest
import yaml

from helpers import testimages
from tests.fixtures.cli import run_pcocc
from tests.fixtures.https import https_server  # noqa: F401 - fixture
from tests.fixtures.pgp import pgp_keys  # noqa: F401 - fixture

_AUDITED = r"""
import json, os, sys
log = open(os.environ["AUDIT_LOG"], "a", buffering=1)
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes)) and (args[2] or 0) & os.O_CREAT:
        log.write(json.dumps(["create", os.fsdecode(args[0])]) + "\n")
    elif event == "os.rename":
        log.write(json.dumps(["rename", os.fsdecode(args[0]), os.fsdecode(args[1])]) + "\n")
    elif event == "subprocess.Popen":
        argv = args[1] if isinstance(args[1], (list, tuple)) else [args[1]]
        log.write(json.dumps(["run", os.path.basename(os.fsdecode(argv[0]))]) + "\n")
sys.addaudithook(hook)
from pcocc.cli.main import main
main(sys.argv[1:])
"""


@pytest.fixture
def env(pcocc_env, tmp_path, busybox_image, pgp_keys, https_server, pcocc_bin):
    (pcocc_env["user"] / "repos.yaml").write_text(yaml.safe_dump(
        {"repos": [{"name": "user", "path": str(tmp_path / "repo")}]}))
    archive = tmp_path / "bb.oci.tar"
    testimages.convert(busybox_image, "oci-archive", str(archive))
    key = pgp_keys.export("good", tmp_path / "good.pub")
    run_pcocc(pcocc_bin, "trust", "--root", "--skip-fingerprint-review", key, check=0,
              stdin=subprocess.DEVNULL)
    return {"tmp": tmp_path, "repo": tmp_path / "repo", "archive": archive.read_bytes(),
            "log": tmp_path / "audit.log", "keys": pgp_keys}


def _serve(env, server, body: bytes, path="/images/bb.tar", **kw) -> str:
    data = env["tmp"] / "signed"
    data.write_bytes(body)
    server.serve(path + ".asc", env["keys"].sign("good", data).read_bytes())
    return server.serve(path, body, **kw)


def _audited(env, *args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _AUDITED, *args],
                            env={**os.environ, "AUDIT_LOG": str(env["log"])},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _log(env) -> list[list[str]]:
    return [json.loads(ln) for ln in env["log"].read_text().splitlines()]


def _stored(env) -> dict[str, os.stat_result]:
    data = env["repo"] / "data"
    return {p.name: p.stat() for p in data.rglob("*") if p.is_file()} if data.exists() else {}


def _image_digests(archive: bytes) -> set[str]:
    """The hex digests of the blobs the archive's image is made of (manifest included)."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        def read(name: str) -> bytes:
            return tar.extractfile(name).read()

        mdesc = json.loads(read("index.json"))["manifests"][0]
        manifest = json.loads(read("blobs/sha256/" + mdesc["digest"].split(":")[1]))
    return {d["digest"].split(":")[1]
            for d in [mdesc, manifest["config"], *manifest["layers"]]}


def test_the_downloaded_blobs_become_the_stored_ones(env, https_server, pcocc_bin):
    url = _serve(env, https_server, env["archive"])
    proc = _audited(env, "image", "fetch", url)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "signature verified" in err
    log = _log(env)
    assert "skopeo" not in [e[1] for e in log if e[0] == "run"], log
    created = {e[1] for e in log if e[0] == "create"}
    renamed = {os.path.basename(e[2]): e[1] for e in log if e[0] == "rename"}
    want = _image_digests(env["archive"])
    assert set(_stored(env)) == want
    for hexd in want:  # each blob is the file the download wrote, moved by a rename
        assert renamed[hexd] in created, (hexd, renamed.get(hexd))
        assert "/tmp/fetch-" in renamed[hexd]
    # a container runs from it
    res = run_pcocc(pcocc_bin, "image", "show", "bb", check=0)
    assert "fetched from " + url in res.stdout


def _tampered(archive: bytes) -> bytes:
    """The archive with one byte of its config blob changed (its name kept)."""
    want = _image_digests(archive)
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(archive)) as src, \
            tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst:
        done = False
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None
            if data and not done and m.name.split("/")[-1] in want and data.startswith(b"{") \
                    and b'"rootfs"' in data:
                data = data.replace(b'"rootfs"', b'"rootfS"', 1)
                done = True
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
        assert done
    return out.getvalue()


def test_a_blob_that_does_not_match_its_name_is_refused(env, https_server, pcocc_bin):
    url = _serve(env, https_server, _tampered(env["archive"]))  # signed as it is
    res = run_pcocc(pcocc_bin, "image", "fetch", url, check=1)
    assert "does not match" in res.stderr or "holds data of digest" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert _stored(env) == {}
    assert "bb" not in run_pcocc(pcocc_bin, "image", "list", check=0).stdout
    assert not list((env["repo"] / "tmp").iterdir())


def test_an_interrupted_download_leaves_nothing(env, https_server, pcocc_bin):
    body = env["archive"]
    url = _serve(env, https_server, body, pause_after=len(body) // 2)
    route = https_server.routes["/images/bb.tar"]
    proc = _audited(env, "image", "fetch", url)
    try:
        assert route.paused.wait(60), "the server never sent half of the archive"
        tmp = env["repo"] / "tmp"
        deadline = time.monotonic() + 30
        while not any(tmp.rglob("*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(tmp.rglob("*")), "nothing was being written"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        route.resume.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert not list((env["repo"] / "tmp").iterdir())
    assert _stored(env) == {}
    assert "bb" not in run_pcocc(pcocc_bin, "image", "list", check=0).stdout
