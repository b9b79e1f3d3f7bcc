"""The click-free parser of ``pcocc save`` agrees with click, or steps aside."""

from __future__ import annotations

import pytest

from pcocc.cli import fastsave
from pcocc.cli.app import cli
from pcocc.cli.save import save as save_command
from tests.fixtures.clickparity import assert_table_matches_click

AGREE = [
    ["save"],
    ["save", "vm3"],
    ["save", "-d", "user:x", "--full", "-s", "vm1"],
    ["save", "--dest=mine", "--no-freeze", "-j", "42"],
    ["save", "--jobid=7", "-J", "name", "vm0"],
    ["--debug", "-v", "-q", "--user-config=/u", "save", "--jobname", "n", "vm2"],
]

STEP_ASIDE = [
    [],
    ["save", "--help"],
    ["save", "vm0", "vm1"],
    ["save", "--user", "bob", "vm0"],
    ["save", "--full=1"],
    ["save", "-d"],
    ["save", "-sd", "x"],  # a short cluster: click's to parse
    ["--help", "save"],
    ["ssh", "vm0"],
]


def click_params(argv: list[str]) -> tuple[dict, dict]:
    i = argv.index("save")
    with cli.make_context("pcocc", list(argv[:i] + ["save"])) as gctx:
        glob = {k: v for k, v in gctx.params.items() if v not in (None, False, 0, ())}
    with save_command.make_context("save", list(argv[i + 1:]), parent=gctx) as ctx:
        return glob, {k: v for k, v in ctx.params.items() if v not in (None, False, ())}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for var in ("PCOCC_SYSTEM_CONF_DIR", "PCOCC_USER_CONF_DIR"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("argv", AGREE, ids=" ".join)
def test_same_options_as_click(argv):
    parsed = fastsave.parse(argv)
    assert parsed is not None
    glob, opts = parsed
    click_glob, click_opts = click_params(argv)
    assert glob.pop("system_config", "/etc/pcocc") == click_glob.pop("system_config")
    assert glob == click_glob
    assert opts == click_opts


def test_every_known_option_is_one_of_click():
    assert_table_matches_click(save_command, fastsave.SAVE)


@pytest.mark.parametrize("argv", STEP_ASIDE, ids=lambda a: " ".join(a) or "(none)")
def test_steps_aside(argv):
    assert fastsave.parse(argv) is None


def test_fast_save_hands_the_request_to_the_library(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_find(selection, etcd):
        seen["selection"] = selection
        return "view"

    def fake_save(view, vm, repos, **kw):
        seen.update(view=view, vm=vm, **kw)
        return type("Meta", (), {"ref": "user:img@3"})

    monkeypatch.setenv("PCOCC_SYSTEM_CONF_DIR", str(tmp_path / "s"))
    monkeypatch.setenv("PCOCC_USER_CONF_DIR", str(tmp_path / "u"))
    monkeypatch.setattr("pcocc.cluster.access.find_cluster", fake_find)
    monkeypatch.setattr("pcocc.cluster.save.save_vm", fake_save)
    monkeypatch.setattr("pcocc.cli.session.Session.config",
                        property(lambda s: type("C", (), {"repos": []})()))
    assert fastsave.fast_save(["-q", "save", "-j", "9", "-d", "mine", "-s", "vm1"]) == 0
    assert (seen["selection"].job_id, seen["view"], seen["vm"]) == ("9", "view", "vm1")
    assert (seen["dest"], seen["full"], seen["skip_freeze"]) == ("mine", False, True)
    assert capsys.readouterr().out == "user:img@3\n"
