"""``pcocc run`` and ``pcocc alloc`` fetch an image that no repository holds (a URL or a
discoverable name), with the signature checks of ``pcocc image fetch``, and never ask the
network again for what they fetched once. Real GnuPG keys, a loopback HTTPS server, skopeo,
crun and, for alloc, a real VM."""

from __future__ import annotations

import os
import shutil

import pytest
import yaml

from helpers import testimages
from tests.fixtures.cli import run_pcocc
from tests.fixtures.cluster import assert_nothing_left, local_env  # noqa: F401 - fixture
from tests.fixtures.https import https_server  # noqa: F401 - fixture
from tests.fixtures.pgp import pgp_keys  # noqa: F401 - fixture


def pcocc(pcocc_bin, *args, check=0):
    return run_pcocc(pcocc_bin, *args, check=check, stdin=open(os.devnull), timeout=300)


def serve_signed(keys, server, tmp, path, body, who="good"):
    data = tmp / "to-sign"
    data.write_bytes(body)
    server.serve(path + ".asc", keys.sign(who, data, tmp / "to-sign.asc").read_bytes())
    return server.serve(path, body)


def trust_root(keys, tmp, run, who="good"):
    run("trust", "--root", "--skip-fingerprint-review", keys.export(who, tmp / f"{who}.pub"))


@pytest.fixture
def ctr_env(https_server, pcocc_env, tmp_path, monkeypatch, busybox_image, pgp_keys):
    if not shutil.which("crun"):
        pytest.skip("crun is not installed")
    runtime_dir = tmp_path / "xdg-runtime"
    runtime_dir.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime_dir))
    (pcocc_env["user"] / "repos.yaml").write_text(yaml.safe_dump({
        "repos": [{"name": "user", "path": str(tmp_path / "repo")}],
        "cache": {"path": str(tmp_path / "cache"), "max-size": "1G"},
    }))
    archive = tmp_path / "bb.oci.tar"
    testimages.convert(busybox_image, "oci-archive", str(archive))
    return {"tmp": tmp_path, "archive": archive.read_bytes()}


def test_run_fetches_a_signed_image_once(ctr_env, pcocc_bin, https_server, pgp_keys):
    tmp = ctr_env["tmp"]
    url = serve_signed(pgp_keys, https_server, tmp, "/images/bb.tar", ctr_env["archive"])
    trust_root(pgp_keys, tmp, lambda *a: pcocc(pcocc_bin, *a))
    res = pcocc(pcocc_bin, "run", "--runtime", "crun", url, "--", "echo", "hello")
    assert res.stdout.strip() == "hello"
    assert "signature verified" in res.stderr
    assert https_server.hits == {"/images/bb.tar": 1, "/images/bb.tar.asc": 1}
    # the second run uses what the first fetched: not one request
    res = pcocc(pcocc_bin, "run", "--runtime", "crun", url, "--", "echo", "again")
    assert res.stdout.strip() == "again"
    assert https_server.hits == {"/images/bb.tar": 1, "/images/bb.tar.asc": 1}
    listing = pcocc(pcocc_bin, "image", "list").stdout.splitlines()
    assert [ln.split()[0] for ln in listing if ln.strip()].count("bb") == 1  # not in an ID


def test_run_of_a_discovered_name(ctr_env, pcocc_bin, https_server, pgp_keys):
    tmp, host = ctr_env["tmp"], https_server.host
    https_server.serve("/bb?ac-discovery=1", f"""<html><head><meta name="ac-discovery"
        content="{host}/bb https://{host}/dl/{{name}}-{{version}}.{{ext}}"></head>""".encode())
    pcocc(pcocc_bin, "trust", "--prefix", f"{host}/bb", "--skip-fingerprint-review",
          pgp_keys.export("good", tmp / "good.pub"))
    # run fills the template with the default labels (ext: qcow2); the contents decide
    # how the file is imported
    serve_signed(pgp_keys, https_server, tmp, f"/dl/{host}/bb-2.0.qcow2", ctr_env["archive"])
    res = pcocc(pcocc_bin, "run", "--runtime", "crun", f"{host}/bb:2.0", "--", "echo", "ok")
    assert res.stdout.strip() == "ok"
    assert https_server.hits[f"/dl/{host}/bb-2.0.qcow2"] == 1
    pcocc(pcocc_bin, "run", "--runtime", "crun", f"{host}/bb:2.0", "--", "true")
    assert https_server.hits[f"/dl/{host}/bb-2.0.qcow2"] == 1


def test_run_of_an_unsigned_image_is_refused_with_nothing_stored(ctr_env, pcocc_bin,
                                                                 https_server, pgp_keys):
    tmp = ctr_env["tmp"]
    url = https_server.serve("/images/bb.tar", ctr_env["archive"])
    trust_root(pgp_keys, tmp, lambda *a: pcocc(pcocc_bin, *a))
    res = pcocc(pcocc_bin, "run", "--runtime", "crun", url, "--", "echo", "hello", check=1)
    assert "hello" not in res.stdout and "Traceback" not in res.stderr
    assert "signature" in res.stderr, res.stderr
    assert "bb" not in pcocc(pcocc_bin, "image", "list").stdout
    assert "/images/bb.tar" not in https_server.hits  # no signature: not even downloaded
    # a local name is never looked up on the network
    hits = dict(https_server.hits)
    pcocc(pcocc_bin, "run", "--runtime", "crun", "nosuch", "--", "true", check=1)
    assert https_server.hits == hits


@pytest.mark.slow
def test_alloc_fetches_the_remote_image_of_a_template_once(https_server, pgp_keys, local_env,
                                                         pcocc_env, testvm_artifacts):
    env, tmp = local_env, local_env.tmp
    (pcocc_env["user"] / "repos.yaml").write_text(yaml.safe_dump(
        {"repos": [{"name": "user", "path": str(tmp / "repo")}]}))
    url = serve_signed(pgp_keys, https_server, tmp, "/vm/disk.qcow2",
                       testvm_artifacts.disk.read_bytes())
    templates = pcocc_env["system"] / "templates.yaml"
    data = yaml.safe_load(templates.read_text())
    data["templates"]["remote"] = {**data["templates"]["testvm"], "image": url}
    templates.write_text(yaml.safe_dump(data))
    env.env["SSL_CERT_FILE"] = str(https_server.ca_file)

    def run(*args, check=0):
        res = env.run(*args)
        assert res.returncode == check, (res.stdout, res.stderr)
        return res

    # not trusted yet: refused before anything is allocated, nothing stored
    res = run("alloc", "-E", "true", "remote", check=1)
    assert "signature" in res.stderr and "Traceback" not in res.stderr
    assert "disk" not in run("image", "list").stdout
    assert "/vm/disk.qcow2" not in https_server.hits  # refused before its download
    trust_root(pgp_keys, tmp, run)
    run("alloc", "-E", "true", "remote")
    assert https_server.hits["/vm/disk.qcow2"] == 1
    run("alloc", "-E", "true", "remote")
    assert https_server.hits["/vm/disk.qcow2"] == 1   # local now: no request
    assert run("image", "list").stdout.count("disk") == 1
    assert_nothing_left(env)
