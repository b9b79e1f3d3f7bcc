"""The global security options reach what they name: pcocc run gets the run-side values."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pcocc.cli.app import cli


@pytest.fixture
def captured(monkeypatch, pcocc_env):
    seen = []
    import pcocc.ctr.pod as pod

    monkeypatch.setattr(pod, "run_request", lambda req, cfg, notify, **_: seen.append(req) or 0)
    return seen


def _run(*args):
    return CliRunner().invoke(cli, list(args), standalone_mode=False, catch_exceptions=False)


def test_run_side_values_reach_pcocc_run(captured):
    _run("--insecure-options", "seccomp,image", "run", "img")
    assert set(captured[-1].options.insecure) == {"seccomp"}
    _run("--insecure-options", "all-run", "run", "--insecure-options", "paths", "img")
    assert set(captured[-1].options.insecure) == {"capabilities", "paths", "seccomp"}
    _run("--insecure-options", "all-fetch", "run", "img")
    assert set(captured[-1].options.insecure) == set()


def test_trust_yaml_sets_defaults_the_command_line_overrides(pcocc_env, captured):
    from pcocc.cli.context import Session

    (pcocc_env["system"] / "trust.yaml").write_text("insecure-options: [seccomp]\n")
    (pcocc_env["user"] / "trust.yaml").write_text(
        f"trust-keys-from-https: true\ndir: {pcocc_env['home']}/elsewhere\n")
    s = Session(str(pcocc_env["system"]), str(pcocc_env["user"]))
    assert s.security.insecure == {"seccomp"}
    assert s.security.trust_keys_from_https
    assert s.security.trust_dir == pcocc_env["home"] / "elsewhere" / "trustedkeys"
    s = Session(str(pcocc_env["system"]), str(pcocc_env["user"]),
                security_args=(("http",), False, "/x"))
    assert s.security.insecure == {"http"} and str(s.security.dir) == "/x"
    _run("run", "img")
    assert set(captured[-1].options.insecure) == {"seccomp"}


@pytest.mark.parametrize("text, words", [
    ("insecure-options: [bogus]\n", "unknown value"),
    ("insecure-options: ondisk\n", "ondisk"),
    ("trust-keys-from-https: yes please\n", "true or false"),
    ("colour: blue\n", "expected a mapping"),
    ("dir: 3\n", "dir"),
    ("[1, 2\n", "YAML"),
])
def test_bad_trust_yaml_is_a_config_error(pcocc_env, text, words):
    from pcocc.cli.context import Session
    from pcocc.errors import ConfigError

    (pcocc_env["user"] / "trust.yaml").write_text(text)
    with pytest.raises(ConfigError, match=words):
        Session(str(pcocc_env["system"]), str(pcocc_env["user"])).security


def test_credentials_file_mode_and_format(tmp_path):
    import json
    import os

    from pcocc.errors import ConfigError, PermissionDenied
    from pcocc.trust import auth

    assert auth.load(tmp_path).header_for("https://a.b/x") is None
    f = tmp_path / "auth.json"
    f.write_text(json.dumps({"https": [
        {"domains": ["a.b", "c.d:8443"], "type": "basic", "user": "u", "password": "p"},
        {"domains": ["e.f"], "type": "bearer", "token": "t"}]}))
    for mode in (0o644, 0o640, 0o604, 0o660):
        os.chmod(f, mode)
        with pytest.raises(PermissionDenied, match="others may read it") as e:
            auth.load(tmp_path)
        assert e.value.hint == f"chmod 600 {f}"
    os.chmod(f, 0o600)
    creds = auth.load(tmp_path)
    assert creds.header_for("https://a.b/x") == "Basic dTpw"
    assert creds.header_for("https://c.d:8443/x") == "Basic dTpw"
    assert creds.header_for("https://c.d/x") is None
    assert creds.header_for("https://e.f/y") == "Bearer t"
    assert creds.header_for("https://a.b.evil.org/") is None
    link = tmp_path / "l"
    link.mkdir()
    (link / "auth.json").symlink_to(f)
    with pytest.raises(PermissionDenied, match="link"):
        auth.load(link)
    for bad in ({"https": [{"domains": ["x"], "type": "digest"}]},
                {"https": [{"domains": ["x/y"], "type": "bearer", "token": "t"}]},
                {"https": [{"domains": ["x"], "type": "bearer", "token": "t\r\nX: y"}]},
                {"other": []}, []):
        f.write_text(json.dumps(bad))
        with pytest.raises(ConfigError):
            auth.load(tmp_path)
