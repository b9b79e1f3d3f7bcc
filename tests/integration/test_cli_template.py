"""pcocc template list/show, through click's runner and through the real console script."""

import json
import subprocess

import pytest
from click.testing import CliRunner

from pcocc.cli.app import cli
from pcocc.cli.main import run_cli

SYSTEM = """\
templates:
  base:
    description: plain Debian
    image: global:debian@2
    resource-set: small
  compute:
    inherits: base
    accel: tcg
"""
USER = """\
templates:
  mine:
    inherits: compute
    image: user:mine
"""


@pytest.fixture
def templates(pcocc_env):
    (pcocc_env["system"] / "templates.yaml").write_text(SYSTEM)
    (pcocc_env["system"] / "resources.yaml").write_text("resource-sets:\n  small: {cores: 2}\n")
    (pcocc_env["user"] / "templates.yaml").write_text(USER)
    return pcocc_env


def _invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_list_table(templates):
    res = _invoke("template", "list")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["NAME", "DESCRIPTION", "IMAGE", "RESOURCES", "INHERITS"]
    rows = [line.split("  ") for line in lines[1:]]
    rows = [[c.strip() for c in r if c.strip()] for r in rows]
    assert rows == [
        ["base", "plain Debian", "global:debian@2", "small", "-"],
        ["compute", "plain Debian", "global:debian@2", "small", "base"],
        ["mine", "plain Debian", "user:mine", "small", "compute"],
    ]


def test_list_json(templates):
    res = _invoke("template", "list", "--json")
    data = json.loads(res.output)
    assert [(t["name"], t["level"], t["inherits"]) for t in data] == [
        ("base", "system", None),
        ("compute", "system", "base"),
        ("mine", "user", "compute"),
    ]


def test_show_names_the_origin_of_every_setting(templates):
    res = _invoke("template", "show", "mine")
    assert res.exit_code == 0, res.output
    sysf, userf = templates["system"] / "templates.yaml", templates["user"] / "templates.yaml"
    assert f"defined:   {userf}:2" in res.output
    assert "inherits:  compute -> base" in res.output
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in res.output.splitlines()[4:]}
    assert rows["image"] == ["user:mine", f"mine ({userf}:4)"]
    assert rows["accel"] == ["tcg", f"compute ({sysf}:8)"]
    assert rows["resource-set"] == ["small", f"base ({sysf}:5)"]
    assert rows["full-node"] == ["false", "default"]
    assert rows["(cores)"] == ["2", "resource set small"]


def test_show_json(templates):
    data = json.loads(_invoke("template", "show", "compute", "--json").output)
    assert data["chain"] == ["compute", "base"]
    assert data["settings"]["accel"]["template"] == "compute"
    assert data["resources"]["cores"] == 2


def test_show_unknown_template_exits_1_with_suggestion(templates, capsys):
    assert run_cli(["template", "show", "mien"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "pcocc: error: template 'mien' not found, did you mean 'mine'?\n"
        "hint: run 'pcocc template list' to see the templates\n"
    )


def test_bad_config_exits_2_without_traceback(templates, capsys):
    f = templates["user"] / "templates.yaml"
    f.write_text("templates:\n  mine:\n    imgae: x\n")
    assert run_cli(["template", "list"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (
        f"pcocc: error: {f}:3:5: templates.mine.imgae: unknown key 'imgae', did you mean 'image'?"
    )
    assert "Traceback" not in err


def test_real_process_list_and_show(templates, pcocc_bin):
    out = subprocess.run(
        [pcocc_bin, "template", "list"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert [line.split()[0] for line in out.stdout.splitlines()] == [
        "NAME",
        "base",
        "compute",
        "mine",
    ]
    out = subprocess.run(
        [pcocc_bin, "template", "show", "compute", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert json.loads(out.stdout)["settings"]["image"]["value"] == "global:debian@2"


def test_real_process_cycle_exits_2(templates, pcocc_bin):
    f = templates["user"] / "templates.yaml"
    f.write_text("templates:\n  a: {inherits: b}\n  b: {inherits: a}\n")
    out = subprocess.run(
        [pcocc_bin, "template", "list"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 2
    assert out.stderr.splitlines()[0] == (
        f"pcocc: error: {f}:3:7: templates.b.inherits: inheritance cycle a -> b -> a"
    )
    assert "Traceback" not in out.stderr


def test_list_without_templates_says_where_to_define_them(pcocc_env):
    res = CliRunner().invoke(cli, ["template", "list"])
    assert res.exit_code == 0
    assert res.stdout.splitlines() == ["NAME  DESCRIPTION  IMAGE  RESOURCES  INHERITS"]
    assert "no templates" in res.stderr
