"""pcocc image fetch from a loopback HTTPS server with real signatures: trusted fetch by
URL and by meta discovery, each refusal (unsigned, modified, wrong key, other prefix,
expired, revoked) with nothing stored, HTTP caching by ETag and max-age, --store-only and
--no-store, credentials, and what each insecure option relaxes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.fixtures.cli import run_pcocc
from tests.fixtures.https import http_server, https_server  # noqa: F401 - fixtures
from tests.fixtures.pgp import pgp_keys  # noqa: F401 - fixture
from tests.integration.repo_testlib import convert, make_raw, write_repos


@pytest.fixture
def env(pcocc_env, tmp_path, pgp_keys):
    repo = tmp_path / "repo"
    write_repos(pcocc_env["user"], {"user": repo})
    img = convert(make_raw(tmp_path / "disk.raw", 1 << 20), tmp_path / "app.qcow2", "qcow2")
    pcocc_env.update(repo=repo, img=img, keys=pgp_keys, tmp=tmp_path)
    return pcocc_env


def pcocc(pcocc_bin, *args, check=0):
    return run_pcocc(pcocc_bin, *args, check=check, stdin=open(os.devnull))


def trust(env, pcocc_bin, who, *where):
    key = env["keys"].export(who, env["tmp"] / f"{who}.pub")
    pcocc(pcocc_bin, "trust", *where, "--skip-fingerprint-review", key)


def serve_signed(env, server, who="good", path="/images/app.qcow2", body=None, **kw):
    body = body if body is not None else env["img"].read_bytes()
    data = env["tmp"] / "signed"
    data.write_bytes(body)
    sig = env["keys"].sign(who, data, env["tmp"] / "signed.asc")
    server.serve(path + ".asc", sig.read_bytes())
    return server.serve(path, body, **kw)


def images(pcocc_bin):
    return pcocc(pcocc_bin, "image", "list").stdout


def test_fetch_a_url_signed_by_a_key_trusted_for_its_prefix(env, pcocc_bin, https_server):
    url = serve_signed(env, https_server)
    trust(env, pcocc_bin, "good", "--prefix", f"{https_server.host}/images")
    res = pcocc(pcocc_bin, "image", "fetch", url)
    assert res.stdout.startswith("sha256-") and len(res.stdout.strip()) == len("sha256-") + 12
    assert "signature verified" in res.stderr
    assert "app" in images(pcocc_bin)
    full = pcocc(pcocc_bin, "image", "fetch", "--full", url).stdout.strip()
    assert len(full) == len("sha256-") + 64 and full.startswith(res.stdout.strip())


def test_fetch_by_meta_discovery_with_a_root_key(env, pcocc_bin, https_server):
    host = https_server.host
    https_server.serve("/app?ac-discovery=1", f"""<html><head><meta name="ac-discovery"
        content="{host}/app https://{host}/dl/{{name}}-{{version}}.{{ext}}"></head>""".encode())
    serve_signed(env, https_server, path=f"/dl/{host}/app-1.0.qcow2")
    trust(env, pcocc_bin, "good", "--root")
    res = pcocc(pcocc_bin, "image", "fetch", f"{host}/app:1.0")
    assert "signature verified" in res.stderr
    res = pcocc(pcocc_bin, "image", "fetch", f"{host}/app", check=1)
    assert "app-latest.qcow2" in res.stderr  # version defaults to latest: not served
    res = pcocc(pcocc_bin, "image", "fetch", "--label", "version=1.0", "--no-store",
                f"{host}/app")
    assert "app@1" in res.stderr


def _refused(env, pcocc_bin, url, *words):
    res = pcocc(pcocc_bin, "image", "fetch", url, check=1)
    for w in words:
        assert w in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert "app" not in images(pcocc_bin)
    data = env["repo"] / "data"
    assert not data.exists() or not any(p.is_file() for p in data.rglob("*"))
    return res


def test_refusals_store_nothing(env, pcocc_bin, https_server):
    host = https_server.host
    trust(env, pcocc_bin, "good", "--prefix", f"{host}/images")
    # unsigned
    https_server.serve("/images/app.qcow2", env["img"].read_bytes())
    _refused(env, pcocc_bin, https_server.url("/images/app.qcow2"), "is not signed",
             f"pcocc trust --prefix {host}/images/app")
    # a modified byte
    url = serve_signed(env, https_server)
    body = bytearray(env["img"].read_bytes())
    body[100] ^= 1
    https_server.serve("/images/app.qcow2", bytes(body))
    _refused(env, pcocc_bin, url, "modified", f'prefix "{host}/images"')
    # a wrong key
    url = serve_signed(env, https_server, who="other")
    _refused(env, pcocc_bin, url, "not trusted", f'prefix "{host}/images"')
    # a key trusted for another prefix
    url = serve_signed(env, https_server, path="/elsewhere/app.qcow2")
    _refused(env, pcocc_bin, url, "no key is trusted for image")


def test_expired_and_revoked_keys_are_refused(env, pcocc_bin, https_server, tmp_path):
    host = https_server.host
    # the expired key, placed by an admin by hand in the system trust directory
    d = env["system"] / "trustedkeys" / "root.d"
    d.mkdir(parents=True)
    env["keys"].export("expired", d / env["keys"].fingerprints["expired"], armor=False)
    url = serve_signed(env, https_server, who="expired")
    _refused(env, pcocc_bin, url, "expired")
    # a key revoked after it was trusted
    key = env["keys"].export("revoked-before", tmp_path / "before.pub")
    pcocc(pcocc_bin, "trust", "--prefix", host, "--skip-fingerprint-review", key)
    url = serve_signed(env, https_server, who="revoked", path="/r/app.qcow2")
    pcocc(pcocc_bin, "image", "fetch", "--dest", "first", "--no-store", url)
    pcocc(pcocc_bin, "trust", "--prefix", host, "--skip-fingerprint-review",
          env["keys"].export("revoked", tmp_path / "rev.pub"), check=1)
    res = pcocc(pcocc_bin, "image", "fetch", "--no-store", url, check=1)
    assert "revoked" in res.stderr


def test_etag_reuse_store_only_and_no_store(env, pcocc_bin, https_server):
    url = serve_signed(env, https_server)
    trust(env, pcocc_bin, "good", "--root")
    first = pcocc(pcocc_bin, "image", "fetch", url).stdout
    assert https_server.hits["/images/app.qcow2"] == 1
    again = pcocc(pcocc_bin, "image", "fetch", url)
    assert again.stdout == first
    # asked with If-None-Match and answered 304: no body, no signature download
    assert https_server.hits["/images/app.qcow2"] == 2
    assert https_server.hits["/images/app.qcow2.asc"] == 1
    assert "unchanged" in again.stderr
    assert images(pcocc_bin).count("app") == 1
    https_server.stop()
    assert pcocc(pcocc_bin, "image", "fetch", "--store-only", url).stdout == first
    res = pcocc(pcocc_bin, "image", "fetch", "--store-only", url + "x", check=1)
    assert "not in the store" in res.stderr


def test_no_store_downloads_again_and_a_change_makes_a_revision(env, pcocc_bin, https_server):
    url = serve_signed(env, https_server)
    trust(env, pcocc_bin, "good", "--root")
    pcocc(pcocc_bin, "image", "fetch", url)
    pcocc(pcocc_bin, "image", "fetch", "--no-store", "--dest", "copy", url)
    assert https_server.hits["/images/app.qcow2"] == 2
    body = convert(make_raw(env["tmp"] / "d2.raw", 1 << 20, seed=7), env["tmp"] / "v2.qcow2",
                   "qcow2").read_bytes()
    serve_signed(env, https_server, body=body)
    res = pcocc(pcocc_bin, "image", "fetch", url)
    assert "app@1" in res.stderr


def test_max_age_avoids_asking(env, pcocc_bin, https_server):
    url = serve_signed(env, https_server, max_age=3600)
    trust(env, pcocc_bin, "good", "--root")
    pcocc(pcocc_bin, "image", "fetch", url)
    pcocc(pcocc_bin, "image", "fetch", url)
    assert https_server.hits["/images/app.qcow2"] == 1


def test_file_url_and_signature_option(env, pcocc_bin, tmp_path):
    trust(env, pcocc_bin, "good", "--prefix", "app")
    f = tmp_path / "app.qcow2"
    sig = env["keys"].sign("good", f, tmp_path / "elsewhere.sig")
    pcocc(pcocc_bin, "image", "fetch", f"file://{f}", check=1)  # no app.qcow2.asc
    pcocc(pcocc_bin, "image", "fetch", "--signature", sig, f"file://{f}")
    assert "app" in images(pcocc_bin)


def test_credentials_by_domain_and_file_mode(env, pcocc_bin, https_server):
    url = serve_signed(env, https_server, auth="Bearer s3cret")
    trust(env, pcocc_bin, "good", "--root")
    pcocc(pcocc_bin, "image", "fetch", url, check=1)  # 401 without credentials
    auth = env["user"] / "auth.json"
    auth.write_text(json.dumps({"https": [{"domains": [https_server.host], "type": "bearer",
                                           "token": "s3cret"}]}))
    os.chmod(auth, 0o644)
    res = pcocc(pcocc_bin, "image", "fetch", url, check=1)
    assert "chmod 600" in res.stderr
    os.chmod(auth, 0o600)
    pcocc(pcocc_bin, "image", "fetch", url)
    # the signature (another path of the same host) got the header, nobody else did
    assert ("/images/app.qcow2", "Bearer s3cret") in https_server.seen_auth


def test_insecure_options_relax_what_they_name_only(env, pcocc_bin, https_server, http_server,
                                                   monkeypatch):
    # image: an unsigned image is accepted, with a warning
    https_server.serve("/u/app.qcow2", env["img"].read_bytes())
    url = https_server.url("/u/app.qcow2")
    pcocc(pcocc_bin, "image", "fetch", url, check=1)
    res = pcocc(pcocc_bin, "--insecure-skip-verify", "image", "fetch", "--dest", "a", url)
    assert "verification has been disabled" in res.stderr
    # http: plain HTTP allowed, but the signature is still required
    plain = serve_signed(env, http_server, path="/p/app.qcow2")
    assert "plain HTTP" in pcocc(pcocc_bin, "image", "fetch", plain, check=2).stderr
    res = pcocc(pcocc_bin, "--insecure-options", "http", "image", "fetch", "--dest", "b",
                plain, check=1)
    assert "no key is trusted" in res.stderr
    trust(env, pcocc_bin, "good", "--root")
    pcocc(pcocc_bin, "--insecure-options", "http", "image", "fetch", "--dest", "b", plain)
    # tls: an unverified certificate is accepted, the signature still checked
    monkeypatch.delenv("SSL_CERT_FILE")
    signed = serve_signed(env, https_server, path="/t/app.qcow2")
    assert "not trusted" in pcocc(pcocc_bin, "image", "fetch", signed, check=1).stderr
    pcocc(pcocc_bin, "--insecure-options", "tls", "image", "fetch", "--dest", "c", signed)
    https_server.serve("/t2/app.qcow2", env["img"].read_bytes())
    res = pcocc(pcocc_bin, "--insecure-options", "tls", "image", "fetch", "--dest", "d",
                https_server.url("/t2/app.qcow2"), check=1)
    assert "is not signed" in res.stderr
    # docker:// needs image (no signatures there)
    res = pcocc(pcocc_bin, "image", "fetch", "docker://localhost:1/x", check=2)
    assert "--insecure-options=image" in res.stderr
