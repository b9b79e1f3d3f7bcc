"""pcocc trust with real GnuPG keys, and the signature check of image files against the
keys trusted for the longest prefix of the image name (or root keys)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pcocc.trust.store import TrustStore
from pcocc.trust.verify import SignatureRefused, check_signature
from tests.fixtures.cli import run_pcocc
from tests.fixtures.pgp import pgp_keys  # noqa: F401 - fixture


@pytest.fixture
def env(pcocc_env, tmp_path):
    data = tmp_path / "image.qcow2"
    data.write_bytes(os.urandom(4096))
    pcocc_env["data"] = data
    pcocc_env["store"] = TrustStore(pcocc_env["user"] / "trustedkeys",
                                    pcocc_env["system"] / "trustedkeys")
    return pcocc_env


def trust(pcocc_bin, *args, check=0):
    return run_pcocc(pcocc_bin, "trust", *args, check=check, stdin=open(os.devnull))


def test_trust_by_prefix_list_and_rm(env, pcocc_bin, pgp_keys, tmp_path):
    armored = pgp_keys.export("good", tmp_path / "good.asc")
    binary = pgp_keys.export("other", tmp_path / "other.gpg", armor=False)
    out = trust(pcocc_bin, "--prefix", "example.com/app", "--skip-fingerprint-review",
                armored, binary).stdout
    good, other = pgp_keys.fingerprints["good"], pgp_keys.fingerprints["other"]
    assert good in out and other in out
    stored = env["user"] / "trustedkeys" / "prefix.d" / "example.com%2Fapp" / good
    assert stored.is_file()
    assert (env["user"] / "trustedkeys").stat().st_mode & 0o777 == 0o700
    listing = trust(pcocc_bin, "list").stdout
    assert f"user   example.com/app  {good}" in listing
    trust(pcocc_bin, "rm", other)
    listing = trust(pcocc_bin, "list").stdout
    assert other not in listing and good in listing
    assert trust(pcocc_bin, "rm", other, check=1).stderr.count("no trusted key") == 1


def test_review_needs_a_terminal(env, pcocc_bin, pgp_keys, tmp_path):
    key = pgp_keys.export("good", tmp_path / "good.asc")
    res = trust(pcocc_bin, "--prefix", "example.com", key, check=2)
    assert pgp_keys.fingerprints["good"][:4] in res.stdout  # the fingerprint was shown
    assert "stdin is not a terminal" in res.stderr
    assert not (env["user"] / "trustedkeys" / "prefix.d").exists() or not any(
        (env["user"] / "trustedkeys" / "prefix.d").rglob("*"))


def test_bad_arguments(env, pcocc_bin, pgp_keys, tmp_path):
    key = pgp_keys.export("good", tmp_path / "good.asc")
    assert "either --prefix" in trust(pcocc_bin, key, check=2).stderr
    assert "either --prefix" in trust(pcocc_bin, "--root", "--prefix", "a.b", key,
                                      check=2).stderr
    assert "invalid prefix" in trust(pcocc_bin, "--prefix", "../x", key, check=2).stderr
    assert "no such key file" in trust(pcocc_bin, "--root", tmp_path / "nope", check=1).stderr
    junk = tmp_path / "junk"
    junk.write_text("not a key")
    assert "no OpenPGP public key" in trust(pcocc_bin, "--root", "--skip-fingerprint-review",
                                            junk, check=2).stderr
    assert "--root needs a key" in trust(pcocc_bin, "--root", check=2).stderr
    assert "unknown value" in run_pcocc(pcocc_bin, "--insecure-options", "bogus", "trust",
                                        "list", check=2).stderr


def test_expired_and_revoked_keys_are_not_trusted(env, pcocc_bin, pgp_keys, tmp_path):
    for who in ("expired", "revoked"):
        key = pgp_keys.export(who, tmp_path / f"{who}.asc")
        res = trust(pcocc_bin, "--root", "--skip-fingerprint-review", key, check=1)
        assert f"is {who}: not trusted" in res.stderr
    assert pgp_keys.fingerprints["expired"] not in trust(pcocc_bin, "list").stdout


def test_system_keys_cannot_be_removed_by_the_user(env, pcocc_bin, pgp_keys, tmp_path):
    key = pgp_keys.export("good", tmp_path / "good.asc")
    run_pcocc(pcocc_bin, "--dir", env["system"], "trust", "--root",
              "--skip-fingerprint-review", key, check=0)
    os.chmod(env["system"] / "trustedkeys", 0o755)
    out = trust(pcocc_bin, "list").stdout
    assert f"system  (root)  {pgp_keys.fingerprints['good']}" in out
    res = trust(pcocc_bin, "rm", pgp_keys.fingerprints["good"], check=1)
    assert "only an admin" in res.stderr


def test_a_system_dir_others_may_write_is_refused(env, pcocc_bin, pgp_keys, tmp_path):
    key = pgp_keys.export("good", tmp_path / "good.asc")
    run_pcocc(pcocc_bin, "--dir", env["system"], "trust", "--root",
              "--skip-fingerprint-review", key, check=0)
    os.chmod(env["system"] / "trustedkeys", 0o777)
    res = trust(pcocc_bin, "list", check=1)
    assert "may be written by other users" in res.stderr
    pgp_keys.sign("good", env["data"])
    with pytest.raises(Exception, match="may be written by other users"):
        check_signature(env["store"], "example.com/app", env["data"],
                        Path(str(env["data"]) + ".asc"))


# ---- signature checks

def _trust(env, pgp_keys, tmp_path, who, prefix):
    key = pgp_keys.export(who, tmp_path / f"{who}.pub")
    env["store"].add(key, [pgp_keys.fingerprints[who]], prefix)


def test_signed_by_a_key_trusted_for_the_prefix(env, pgp_keys, tmp_path):
    _trust(env, pgp_keys, tmp_path, "good", "example.com/app")
    sig = pgp_keys.sign("good", env["data"])
    v = check_signature(env["store"], "example.com/app/tool", env["data"], sig)
    assert v.key == pgp_keys.fingerprints["good"]


def test_root_keys_sign_everything(env, pgp_keys, tmp_path):
    _trust(env, pgp_keys, tmp_path, "good", None)
    sig = pgp_keys.sign("good", env["data"])
    assert check_signature(env["store"], "anything.org/x", env["data"], sig).ok


def _refused(env, name, sig, *words):
    with pytest.raises(SignatureRefused) as e:
        check_signature(env["store"], name, env["data"], sig)
    text = f"{e.value}\n{e.value.hint}"
    for w in words:
        assert w in text, text
    return text


def test_a_modified_byte_is_refused(env, pgp_keys, tmp_path):
    _trust(env, pgp_keys, tmp_path, "good", "example.com")
    sig = pgp_keys.sign("good", env["data"])
    raw = bytearray(env["data"].read_bytes())
    raw[1000] ^= 1
    env["data"].write_bytes(bytes(raw))
    _refused(env, "example.com/app", sig, "modified", 'prefix "example.com"')


def test_a_wrong_key_is_refused(env, pgp_keys, tmp_path):
    _trust(env, pgp_keys, tmp_path, "good", "example.com")
    sig = pgp_keys.sign("other", env["data"])
    _refused(env, "example.com/app", sig, "not trusted", 'prefix "example.com"')


def test_a_key_trusted_for_another_prefix_is_refused(env, pgp_keys, tmp_path):
    _trust(env, pgp_keys, tmp_path, "good", "example.com/other")
    sig = pgp_keys.sign("good", env["data"])
    _refused(env, "example.com/app", sig, "no key is trusted for image example.com/app",
             "pcocc trust --prefix example.com/app")
    _refused(env, "example.com/otherapp", sig, "no key is trusted")


def test_the_longest_prefix_decides(env, pgp_keys, tmp_path):
    _trust(env, pgp_keys, tmp_path, "good", "example.com")
    _trust(env, pgp_keys, tmp_path, "other", "example.com/app")
    sig = pgp_keys.sign("good", env["data"])
    assert check_signature(env["store"], "example.com/tool", env["data"], sig).ok
    _refused(env, "example.com/app/x", sig, "not trusted", 'prefix "example.com/app"')


def test_unsigned_is_refused(env, pgp_keys, tmp_path):
    _trust(env, pgp_keys, tmp_path, "good", None)
    _refused(env, "example.com/app", None, "is not signed")


def test_an_expired_key_is_refused(env, pgp_keys, tmp_path):
    # trusted by an admin who placed it by hand: verification still refuses it
    d = env["system"] / "trustedkeys" / "root.d"
    d.mkdir(parents=True)
    os.chmod(env["system"] / "trustedkeys", 0o755)
    fpr = pgp_keys.fingerprints["expired"]
    pgp_keys.export("expired", d / fpr, armor=False)
    sig = pgp_keys.sign("expired", env["data"])
    _refused(env, "example.com/app", sig, "has expired")


def test_a_key_revoked_after_it_was_trusted_is_refused(env, pcocc_bin, pgp_keys, tmp_path):
    before = pgp_keys.export("revoked-before", tmp_path / "before.asc")
    trust(pcocc_bin, "--prefix", "example.com", "--skip-fingerprint-review", before)
    sig = pgp_keys.sign("revoked", env["data"])
    assert check_signature(env["store"], "example.com/app", env["data"], sig).ok
    revoked = pgp_keys.export("revoked", tmp_path / "revoked.asc")
    res = trust(pcocc_bin, "--prefix", "example.com", "--skip-fingerprint-review", revoked,
                check=1)
    assert "no longer accepted" in res.stderr
    _refused(env, "example.com/app", sig, "revoked")


# ---- keys from HTTPS and by meta discovery

from tests.fixtures.https import http_server, https_server  # noqa: E402,F401 - fixtures


def test_trust_a_key_url_over_verified_https(env, pcocc_bin, pgp_keys, tmp_path, https_server):
    url = https_server.serve("/key.asc", pgp_keys.export("good", tmp_path / "k.asc").read_bytes())
    # without --trust-keys-from-https the fingerprint needs a review
    assert "not a terminal" in trust(pcocc_bin, "--prefix", "example.com", url, check=2).stderr
    run_pcocc(pcocc_bin, "--trust-keys-from-https", "trust", "--prefix", "example.com", url,
              check=0, stdin=open(os.devnull))
    assert pgp_keys.fingerprints["good"] in trust(pcocc_bin, "list").stdout


def test_trust_by_meta_discovery(env, pcocc_bin, pgp_keys, tmp_path, https_server):
    host = https_server.host
    key_url = https_server.serve("/keys/app.asc",
                                 pgp_keys.export("good", tmp_path / "k.asc").read_bytes())
    https_server.serve("/app?ac-discovery=1", f"""<html><head>
        <meta name="ac-discovery-pubkeys" content="{host}/app {key_url}">
        </head></html>""".encode())
    run_pcocc(pcocc_bin, "--trust-keys-from-https", "trust", "--prefix", f"{host}/app",
              check=0, stdin=open(os.devnull))
    listing = trust(pcocc_bin, "list").stdout
    assert f"{host}/app" in listing and pgp_keys.fingerprints["good"] in listing
    res = trust(pcocc_bin, "--prefix", f"{host}/none", check=1)
    assert "meta discovery" in res.stderr


def test_key_transport_needs_https_unless_pubkey(env, pcocc_bin, pgp_keys, tmp_path,
                                                 http_server, https_server, monkeypatch):
    body = pgp_keys.export("good", tmp_path / "k.asc").read_bytes()
    plain = http_server.serve("/key.asc", body)
    base = ["--trust-keys-from-https", "trust", "--prefix", "example.com"]
    res = run_pcocc(pcocc_bin, *base, plain, check=2, stdin=open(os.devnull))
    assert "plain HTTP is refused" in res.stderr
    # http and tls relax images, not keys
    run_pcocc(pcocc_bin, "--insecure-options", "http,tls", *base, plain, check=2,
              stdin=open(os.devnull))
    # an unverified certificate is refused for keys too
    monkeypatch.delenv("SSL_CERT_FILE")
    url = https_server.serve("/key.asc", body)
    res = run_pcocc(pcocc_bin, *base, url, check=1, stdin=open(os.devnull))
    assert "certificate is not trusted" in res.stderr
    run_pcocc(pcocc_bin, "--insecure-options", "pubkey", *base, plain, check=0,
              stdin=open(os.devnull))
    assert pgp_keys.fingerprints["good"] in trust(pcocc_bin, "list").stdout
