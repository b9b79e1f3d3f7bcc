"""The click-free parser of a warm ``pcocc run`` agrees with click, or steps aside."""

from __future__ import annotations

import pytest

from pcocc.cli import fastrun
from pcocc.cli.app import cli
from pcocc.cli.containers import run as run_command
from tests.fixtures.clickparity import assert_table_matches_click

AGREE = [
    ["run", "busy"],
    ["run", "busy", "--", "true"],
    ["run", "--runtime", "crun", "busy", "--", "sh", "-c", "exit 3"],
    ["run", "--runtime=runc", "--set-env", "A=1", "--set-env=B=2", "img", "--", "-x"],
    ["run", "-M", "m1", "--module", "m2", "-i", "--root", "--hostname", "h", "img"],
    ["run", "--volume", "v,kind=empty", "--mount", "volume=v,target=/t", "img", "ls"],
    ["run", "--inherit-env", "--set-env-file", "f", "--insecure-options", "seccomp", "img"],
    ["run", "--allow-host-loopback", "-p", "80:80", "--port", "81:81", "img"],
    ["run", "a", "--", "1", "---", "b", "---", "c", "2"],
    ["run", "img", "--runtime", "x"],  # after the image: the app's arguments
    ["--debug", "-v", "-v", "--system-config", "/s", "--user-config=/u", "run", "img"],
    ["-q", "run", "img"],
    ["run", "--register-mds=false", "img", "--", "true"],
    ["run", "--register-mds", "No", "--annotation", "a=1", "--annotation=b=2", "img"],
    ["run", "--register-mds", " on ", "img"],
]

#: command lines click must parse (help, other commands, options not known to fastrun)
STEP_ASIDE = [
    [],
    ["--version"],
    ["run"],
    ["run", "--help"],
    ["--help", "run", "img"],
    ["run", "-N", "2", "img"],
    ["run", "--nodes=2", "img"],
    ["run", "--private-net", "img"],
    ["run", "-iq", "img"],
    ["run", "--runtime"],
    ["run", "--root=1", "img"],
    ["run", "--", "img"],
    ["run", "--no-such-option", "img"],
    ["run", "--register-mds=maybe", "img"],
    ["run", "--register-mds"],
    ["pod", "list"],
    ["image", "list"],
    ["--system-config", "/s", "image", "list"],
]


def click_params(argv: list[str]) -> tuple[dict, dict]:
    """The parameters click gives the group and ``run`` for ``argv``."""
    i = argv.index("run")
    with cli.make_context("pcocc", list(argv[:i] + ["run"])) as gctx:
        glob = {k: v for k, v in gctx.params.items() if v not in (None, False, 0, ())}
    with run_command.make_context("run", list(argv[i + 1 :]), parent=gctx) as ctx:
        return glob, ctx.params


@pytest.mark.parametrize("argv", AGREE, ids=" ".join)
def test_same_request_as_click(argv, monkeypatch):
    monkeypatch.delenv("PCOCC_SYSTEM_CONF_DIR", raising=False)
    monkeypatch.delenv("PCOCC_USER_CONF_DIR", raising=False)
    parsed = fastrun.parse(argv)
    assert parsed is not None
    glob, run = parsed
    click_glob, click_run = click_params(argv)
    # click fills in its default /etc/pcocc; fastrun falls back to the same
    assert glob.pop("system_config", "/etc/pcocc") == click_glob.pop("system_config")
    assert glob == click_glob
    assert fastrun.build_request(run) == fastrun.build_request(click_run)
    for name, value in run.items():
        assert click_run[name] == value


def test_every_known_option_is_one_of_click():
    assert_table_matches_click(run_command, fastrun._RUN)


@pytest.mark.parametrize("argv", STEP_ASIDE, ids=lambda a: " ".join(a) or "(none)")
def test_steps_aside(argv):
    assert fastrun.parse(argv) is None


def test_config_dirs_from_environment(monkeypatch, tmp_path):
    seen = {}

    def fake_run_request(request, config, notify, **_):
        seen["apps"], seen["config"] = request.apps, config
        return 5

    monkeypatch.setenv("PCOCC_SYSTEM_CONF_DIR", str(tmp_path / "s"))
    monkeypatch.setenv("PCOCC_USER_CONF_DIR", str(tmp_path / "u"))
    monkeypatch.setattr("pcocc.ctr.pod.run_request", fake_run_request)
    monkeypatch.setattr(
        "pcocc.cli.session.Session.config", property(lambda s: (s.system_dir, s.user_dir))
    )
    monkeypatch.setattr(fastrun, "skip_exit_collection", lambda: None)
    assert fastrun.fast_run(["run", "img", "--", "x"]) == 5
    assert seen["apps"] == [("img", ["x"])]
    assert seen["config"] == (str(tmp_path / "s"), str(tmp_path / "u"))
    assert fastrun.fast_run(["--user-config", "/x", "run", "img"]) == 5
    assert seen["config"] == (str(tmp_path / "s"), "/x")


def test_trust_yaml_run_side_values_reach_the_fast_path(monkeypatch, tmp_path):
    """trust.yaml's run-side --insecure-options apply to a warm run as they do through click;
    a global --insecure-options on the command line hands the line over to click."""
    seen = []
    system, user = tmp_path / "s", tmp_path / "u"
    system.mkdir()
    user.mkdir()
    (system / "trust.yaml").write_text("insecure-options: [seccomp, image]\n")
    monkeypatch.setenv("PCOCC_SYSTEM_CONF_DIR", str(system))
    monkeypatch.setenv("PCOCC_USER_CONF_DIR", str(user))
    monkeypatch.setattr("pcocc.ctr.pod.run_request",
                        lambda request, config, notify, **_: seen.append(request) or 0)
    monkeypatch.setattr("pcocc.cli.session.Session.config", property(lambda s: None))
    monkeypatch.setattr(fastrun, "skip_exit_collection", lambda: None)
    assert fastrun.fast_run(["run", "--insecure-options", "paths", "img"]) == 0
    assert set(seen[-1].options.insecure) == {"seccomp", "paths"}
    assert fastrun.parse(["--insecure-options", "all-run", "run", "img"]) is None


def test_a_remote_image_goes_through_click_which_fetches(monkeypatch, tmp_path):
    monkeypatch.setenv("PCOCC_SYSTEM_CONF_DIR", str(tmp_path))
    monkeypatch.setenv("PCOCC_USER_CONF_DIR", str(tmp_path))
    monkeypatch.setattr("pcocc.ctr.pod.run_request", lambda *a: pytest.fail("ran unfetched"))
    for image in ("https://example.org/app.oci", "example.org/app:1.0", "localhost:8443/app"):
        assert fastrun.fast_run(["run", image, "--", "true"]) is None
    for image in ("busybox", "user:busybox@2", "/abs/path.sif", "./rel/path.oci"):
        assert not fastrun.may_be_remote(image)
