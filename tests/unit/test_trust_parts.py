"""The pure parts of pcocc.trust: names and prefixes, their escaping, the longest-prefix
match, discovery pages (hostile ones too), gpgv status lines, --insecure-options."""

from __future__ import annotations

import pytest

from pcocc.errors import UsageError
from pcocc.trust import discovery, gpg
from pcocc.trust.prefix import (
    check_name,
    covers,
    escape,
    fetchable,
    longest_match,
    split_version,
    unescape,
)
from pcocc.trust.settings import parse_insecure


@pytest.mark.parametrize("name", ["example.com", "example.com/app", "a-b.c_d~e/f/g1",
                                  "localhost:8443/app", "127.0.0.1:8443/x"])
def test_valid_names_escape_to_one_directory_name_and_back(name):
    esc = escape(name)
    assert "/" not in esc and esc not in (".", "..")
    assert unescape(esc) == name


@pytest.mark.parametrize("name", ["", ".", "..", "a/../b", "/abs", "a//b", "A/b", "a/", "a b",
                                  "a\nb", "a\0b", "a/./b", "-a", "a:port/b", "%2e%2e", "a/b:1"])
def test_hostile_names_are_refused(name):
    with pytest.raises(UsageError):
        escape(name)


@pytest.mark.parametrize("dirname", ["..", ".", "a%2F..", "a%2f", "A", "a%2F%2Fb", "%2e%2e"])
def test_directories_we_did_not_write_are_not_prefixes(dirname):
    assert unescape(dirname) is None


def test_prefixes_cover_whole_components_only():
    assert covers("example.com/app", "example.com/app")
    assert covers("example.com/app", "example.com/app/x")
    assert not covers("example.com/app", "example.com/apple")
    assert not covers("example.com/app/x", "example.com/app")


def test_longest_match_wins():
    prefixes = ["example.com", "example.com/app", "example.com/app/x/y", "other.org"]
    assert longest_match(prefixes, "example.com/app/x") == "example.com/app"
    assert longest_match(prefixes, "example.com/b") == "example.com"
    assert longest_match(prefixes, "example.org/app") is None


def test_split_version():
    assert split_version("example.com/app:v1.2") == ("example.com/app", "v1.2")
    assert split_version("example.com/app") == ("example.com/app", None)
    assert split_version("localhost:8443/app:3") == ("localhost:8443/app", "3")
    assert split_version("localhost:8443") == ("localhost:8443", None)
    with pytest.raises(UsageError):
        split_version("example.com/app:v1;rm")


def test_discovery_page_is_parsed_and_noise_ignored():
    page = """<html><head>
    <meta name="ac-discovery" content="example.com/app https://dl.example.com/{name}-{version}.{ext}">
    <META NAME="ac-discovery-pubkeys" CONTENT="example.com https://example.com/key.asc"/>
    <meta name="ac-discovery" content="bad prefix!! https://x">
    <meta name="ac-discovery" content="example.com/app file:///etc/passwd">
    <meta name="ac-discovery" content="example.com/app https://a https://b">
    <meta name="ac-discovery-pubkeys" content="other.org https://other.org/key">
    <meta name="ac-discovery" content="example.com/app https://x/&#10;y">
    </head>"""
    tags = discovery.parse_page(page)
    assert discovery.pubkey_urls(tags, "example.com/app") == [
        ("example.com", "https://example.com/key.asc")]
    assert discovery.image_templates(tags, "example.com/app") == [
        "https://dl.example.com/{name}-{version}.{ext}"]


@pytest.mark.parametrize("page", ["<meta", "<<<>>>" * 10000, "<meta name=ac-discovery content=",
                                  "\0\0<meta name='ac-discovery' content='a https://x'>",
                                  "<meta " + "a=b " * 100000 + ">", ""])
def test_hostile_discovery_pages_give_no_tags_and_no_error(page):
    assert isinstance(discovery.parse_page(page), list)


def test_too_many_tags_are_cut():
    page = "<meta name='ac-discovery-pubkeys' content='a.b https://k'>" * 10000
    assert len(discovery.parse_page(page)) <= 64


def test_template_expansion():
    labels = {"name": "example.com/app", "version": "1", "os": "linux", "arch": "amd64",
              "ext": "qcow2"}
    assert discovery.expand("https://h/{name}-{version}-{os}-{arch}.{ext}", labels) == \
        "https://h/example.com/app-1-linux-amd64.qcow2"
    assert discovery.expand("https://h/{unknown}", labels) is None
    assert discovery.expand("https://h/{name", labels) is None


GOOD = """[GNUPG:] NEWSIG
[GNUPG:] KEY_CONSIDERED AAAA 0
[GNUPG:] SIG_ID x 2026-12-03 1
[GNUPG:] GOODSIG 8627BBFD694CF2C0 Test good <good@example.org>
[GNUPG:] VALIDSIG 1111 2026-12-03 1 0 4 0 22 8 00 B4FB83E882D115D58905FDB18627BBFD694CF2C0
"""


def test_status_good():
    v = gpg.parse_status(GOOD, 0)
    assert v.ok and v.key == "B4FB83E882D115D58905FDB18627BBFD694CF2C0"


@pytest.mark.parametrize("line, words", [
    ("[GNUPG:] BADSIG 86 Test", "modified"),
    ("[GNUPG:] EXPKEYSIG 86 Test", "expired"),
    ("[GNUPG:] REVKEYSIG 86 Test", "revoked"),
    ("[GNUPG:] EXPSIG 86 Test", "signature has expired"),
    ("[GNUPG:] ERRSIG 86 22 8 00 1 9 x\n[GNUPG:] NO_PUBKEY 86", "not trusted"),
    ("[GNUPG:] ERRSIG 86 99 8 00 1 4 x", "cannot be checked"),
    ("[GNUPG:] NEWSIG", "several signatures"),
])
def test_any_bad_status_refuses_even_next_to_a_good_one(line, words):
    v = gpg.parse_status(GOOD + line + "\n", 0)
    assert not v.ok and words in v.reason


def test_status_needs_validsig_and_zero_exit():
    assert not gpg.parse_status(GOOD, 1).ok
    assert not gpg.parse_status("[GNUPG:] GOODSIG 86 x\n", 0).ok
    assert not gpg.parse_status("", 0).ok
    assert not gpg.parse_status("GOODSIG 86 x\nVALIDSIG x", 0).ok


def test_colon_listing():
    text = ("pub:e:255:22:86:1:2::u:::sc:\nfpr:::::::::AAAA:\nuid:e::::1::x::Me\\x3a <m@x>:\n"
            "sub:e:255:18:87:1:2:::::e:\nfpr:::::::::BBBB:\n"
            "pub:r:255:22:88:1:2::u:::sc:\nfpr:::::::::cccc:\n")
    keys = gpg.parse_colons(text)
    assert [(k.fingerprint, k.expired, k.revoked) for k in keys] == [
        ("AAAA", True, False), ("CCCC", False, True)]
    assert keys[0].uids == ("Me: <m@x>",)


def test_insecure_options():
    assert parse_insecure([]) == frozenset()
    assert parse_insecure(["none"]) == frozenset()
    assert parse_insecure(["http,tls", "image"]) == {"http", "tls", "image"}
    assert parse_insecure(["all-fetch"]) == {"image", "tls", "http"}
    assert parse_insecure(["all-run"]) == {"capabilities", "paths", "seccomp"}
    assert "pubkey" in parse_insecure(["all"]) and "pubkey" not in parse_insecure(["all-fetch"])
    for bad in ("bogus", "ondisk", "http,nope"):
        with pytest.raises(UsageError):
            parse_insecure([bad])


@pytest.mark.parametrize("ref", ["https://h.org/a/app.qcow2", "http://h/x", "file:///tmp/a.tar",
                                 "example.org/app", "example.org/app:1.0",
                                 "localhost:8443/tools/app"])
def test_urls_and_host_names_are_fetchable(ref):
    assert fetchable(ref)


@pytest.mark.parametrize("ref", ["centos", "user:centos", "user:centos@2", "sha256-abcd",
                                 "docker://reg/x", "oci-archive:/tmp/x.tar", "/abs/dir",
                                 "./rel", "rel/dir", "Example.org/App", "example.org/a b"])
def test_local_refs_and_paths_are_not_fetchable(ref):
    assert not fetchable(ref)


def test_an_existing_path_is_not_fetchable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "build.d" / "rootfs").mkdir(parents=True)
    assert not fetchable("build.d/rootfs") and fetchable("build.d/other")
