"""The click-free parser of ``pcocc image import`` agrees with click, or steps aside; the
command it runs imports a raw image without importing click."""

from __future__ import annotations

import atexit
import gc
import os
import sys

import pytest

from pcocc.cli import fastimport, fastrun
from pcocc.cli.app import cli
from pcocc.cli.image import import_ as import_command
from tests.fixtures.clickparity import assert_table_matches_click

AGREE = [
    ["image", "import", "raw:/d/disk.raw", "disk"],
    ["image", "import", "-t", "raw", "/d/disk.img", "user:disk"],
    ["image", "import", "--type=qcow2", "--description", "a VM", "a.qcow2", "a"],
    ["image", "import", "--description=", "-t", "raw", "-", "x"],
    ["--debug", "-v", "-v", "--user-config=/u", "image", "import", "docker-archive:a.tar", "a"],
    ["-q", "--system-config", "/s", "image", "import", "a.raw", "a"],
]

STEP_ASIDE = [
    [],
    ["image", "import"],
    ["image", "import", "a.raw"],
    ["image", "import", "a.raw", "a", "b"],
    ["image", "import", "--help"],
    ["image", "import", "-t", "raw", "--help", "a", "b"],
    ["image", "import", "--insecure-options", "tls", "docker://h/a", "a"],
    ["image", "import", "--allow-backing-in-repo", "a.qcow2", "a"],
    ["image", "import", "a.raw", "-t", "raw", "a"],
    ["image", "import", "a.raw", "--description"],
    ["image", "import", "-t"],
    ["image", "import", "--", "a.raw", "a"],
    ["--insecure-options", "image", "image", "import", "a.raw", "a"],
    ["--help", "image", "import", "a.raw", "a"],
    ["image", "export", "a", "raw:a.raw"],
    ["run", "import"],
]


def click_params(argv: list[str]) -> tuple[dict, dict]:
    i = argv.index("image")
    with cli.make_context("pcocc", list(argv[:i] + ["image"])) as gctx:
        glob = {k: v for k, v in gctx.params.items() if v not in (None, False, 0, ())}
    with import_command.make_context("import", list(argv[i + 2:]), parent=gctx) as ctx:
        return glob, {k: v for k, v in ctx.params.items() if v not in (None, False, ())}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for var in ("PCOCC_SYSTEM_CONF_DIR", "PCOCC_USER_CONF_DIR", *fastimport._ENV):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("argv", AGREE, ids=" ".join)
def test_same_options_as_click(argv):
    parsed = fastimport.parse(argv)
    assert parsed is not None
    glob, opts = parsed
    click_glob, click_opts = click_params(argv)
    assert glob.pop("system_config", "/etc/pcocc") == click_glob.pop("system_config")
    assert glob == click_glob
    click_opts.setdefault("description", "")  # click's default; ours when absent
    opts.setdefault("description", "")
    assert opts == click_opts


def test_every_known_option_is_one_of_click():
    assert_table_matches_click(import_command, fastimport.IMPORT)


@pytest.mark.parametrize("argv", STEP_ASIDE, ids=lambda a: " ".join(a) or "(none)")
def test_steps_aside(argv):
    assert fastimport.parse(argv) is None


def test_a_global_option_from_the_environment_goes_through_click(monkeypatch):
    monkeypatch.setenv("PCOCC_INSECURE_OPTIONS", "image")
    assert fastimport.parse(["image", "import", "a.raw", "a"]) is None


def test_raw_import_runs_without_click(tmp_path, monkeypatch, capsys):
    """The whole command, from the command line to the commit, with click unreachable."""
    from pcocc.cli.main import run_cli
    from pcocc.repo import qemu_img

    def info(path, fmt=None, *, pass_fds=(), where=None):  # qemu-img probes raw data
        fd = int(str(path).rsplit("/", 1)[1])
        return qemu_img.ImageInfo(str(path), "raw", os.fstat(fd).st_size, None, None, None,
                                  None)

    monkeypatch.setattr(qemu_img, "info", info)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "repos.yaml").write_text(
        f"repos:\n- name: mine\n  path: {tmp_path / 'repo'}\n")
    src = tmp_path / "disk.raw"
    src.write_bytes(os.urandom(1 << 20))
    for name in [m for m in sys.modules if m == "click" or m.startswith("click.")]:
        monkeypatch.setitem(sys.modules, name, None)  # importing it raises ImportError
    exit_hooks = []
    monkeypatch.setattr(fastrun, "_exit_hook", [])
    monkeypatch.setattr(atexit, "register", exit_hooks.append)
    status = run_cli(["--user-config", str(tmp_path / "conf"), "--system-config",
                      str(tmp_path / "none"), "image", "import", "-t", "raw", str(src), "d"])
    assert status == 0
    assert capsys.readouterr().err.startswith("imported mine:d@0 (")
    assert list((tmp_path / "repo" / "data").rglob("*"))
    # committed and cleaned up: the interpreter's teardown is skipped (pcocc.cli.main.finish)
    assert fastrun.exit_collection_skipped() and exit_hooks == [gc.freeze]
