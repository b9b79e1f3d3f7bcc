"""The click-free parser of ``pcocc image fetch`` agrees with click, or steps aside."""

from __future__ import annotations

import click
import pytest

from pcocc.cli import fastfetch
from pcocc.cli.app import cli
from pcocc.cli.image_fetch import fetch as fetch_command
from tests.fixtures.clickparity import assert_table_matches_click

AGREE = [
    ["image", "fetch", "https://h/app.qcow2"],
    ["image", "fetch", "--full", "--no-store", "h/app:1.0"],
    ["image", "fetch", "--store-only", "--dest", "user:x", "h/app"],
    ["image", "fetch", "--label=version=2", "--label", "arch=arm64", "h/app"],
    ["image", "fetch", "--signature", "s.asc", "file:///x/app.qcow2"],
    ["--debug", "-v", "-v", "--user-config=/u", "image", "fetch", "h/app"],
    ["-q", "--insecure-options", "image,tls", "--insecure-options=http", "--dir", "/d",
     "image", "fetch", "h/app"],
    ["--insecure-skip-verify", "--trust-keys-from-https", "image", "fetch", "docker://x/y"],
]

STEP_ASIDE = [
    [],
    ["image", "fetch"],
    ["image", "fetch", "--help"],
    ["image", "fetch", "a", "b"],
    ["image", "fetch", "--no-such-option", "a"],
    ["image", "fetch", "--full=1", "a"],
    ["image", "fetch", "--dest"],
    ["image", "list"],
    ["--help", "image", "fetch", "a"],
    ["run", "img"],
]


def click_params(argv: list[str]) -> tuple[dict, dict]:
    i = argv.index("image")
    with cli.make_context("pcocc", list(argv[:i] + ["image"])) as gctx:
        glob = {k: v for k, v in gctx.params.items() if v not in (None, False, 0, ())}
    with fetch_command.make_context("fetch", list(argv[i + 2:]), parent=gctx) as ctx:
        return glob, {k: v for k, v in ctx.params.items() if v not in (None, False, ())}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for var in ("PCOCC_SYSTEM_CONF_DIR", "PCOCC_USER_CONF_DIR", *fastfetch._ENV):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("argv", AGREE, ids=" ".join)
def test_same_options_as_click(argv):
    parsed = fastfetch.parse(argv)
    assert parsed is not None
    glob, opts = parsed
    click_glob, click_opts = click_params(argv)
    assert glob.pop("system_config", "/etc/pcocc") == click_glob.pop("system_config")
    assert glob == click_glob
    if "signature" in click_opts:
        click_opts["signature"] = str(click_opts["signature"])
    assert opts == click_opts


def test_every_known_option_is_one_of_click():
    assert_table_matches_click(fetch_command, fastfetch.FETCH)
    glob = {p.name: p for p in cli.params if isinstance(p, click.Option)}
    for opt, (name, takes_value, *rest) in fastfetch.GLOBAL.items():
        assert opt in glob[name].opts + glob[name].secondary_opts
        assert takes_value == (not glob[name].is_flag and not glob[name].count)


@pytest.mark.parametrize("argv", STEP_ASIDE, ids=lambda a: " ".join(a) or "(none)")
def test_steps_aside(argv):
    assert fastfetch.parse(argv) is None


@pytest.mark.parametrize("var", fastfetch._ENV)
def test_security_options_from_the_environment_go_through_click(monkeypatch, var):
    monkeypatch.setenv(var, "1")
    assert fastfetch.parse(["image", "fetch", "h/app"]) is None


def test_fast_fetch_hands_the_request_to_the_library(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_fetch(repos, req, security, store, notify):
        seen.update(req=req, security=security)

        class Meta:
            ref, image_id, short_id = "user:app@0", "sha256-" + "a" * 64, "sha256-aaaa"

        class Done:
            meta = Meta

        return Done

    monkeypatch.setenv("PCOCC_SYSTEM_CONF_DIR", str(tmp_path / "s"))
    monkeypatch.setenv("PCOCC_USER_CONF_DIR", str(tmp_path / "u"))
    monkeypatch.setattr("pcocc.trust.fetch.fetch", fake_fetch)
    monkeypatch.setattr("pcocc.cli.session.Session.config",
                        property(lambda s: type("C", (), {"repos": []})()))
    argv = ["--insecure-options", "tls", "image", "fetch", "--full", "--label", "version=2",
            "--dest", "mine", "h/app"]
    assert fastfetch.fast_fetch(argv) == 0
    req = seen["req"]
    assert (req.ref, req.labels, req.dest, req.no_store) == ("h/app", {"version": "2"},
                                                             "mine", False)
    assert seen["security"].allows("tls") and not seen["security"].allows("image")
    out = capsys.readouterr()
    assert out.out == "sha256-" + "a" * 64 + "\n" and "pcocc: user:app@0" in out.err
