"""``pcocc help`` through the real ``man``, and the man pages the package build installs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pcocc.cli import manpages
from tests.fixtures.cli import run_pcocc

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def man_env(pcocc_env):
    if shutil.which("man") is None:
        pytest.fail("man is not installed: run helpers/setup (Debian package man-db)")
    return {**os.environ, "MANPAGER": "cat", "PAGER": "cat", "MANWIDTH": "100"}


def test_help_alloc_shows_the_man_page(pcocc_bin, man_env):
    res = run_pcocc(pcocc_bin, "help", "alloc", check=0, env=man_env)
    assert "PCOCC-ALLOC(1)" in res.stdout           # formatted by man, not click
    assert "--cores" in res.stdout and "SYNOPSIS" in res.stdout
    assert res.stderr == ""


def test_help_image_import_and_pcocc_itself(pcocc_bin, man_env):
    res = run_pcocc(pcocc_bin, "help", "image", "import", check=0, env=man_env)
    assert "PCOCC-IMAGE-IMPORT(1)" in res.stdout and "--description" in res.stdout
    res = run_pcocc(pcocc_bin, "help", check=0, env=man_env)
    assert "PCOCC(1)" in res.stdout and "pcocc-alloc(1)" in res.stdout


def test_help_without_man_prints_the_text(pcocc_bin, man_env, tmp_path):
    env = {**man_env, "PATH": str(tmp_path)}  # the console script names its interpreter
    res = run_pcocc(pcocc_bin, "help", "alloc", check=0, env=env)
    assert res.stdout.startswith("Usage: pcocc alloc") and "--cores" in res.stdout


def test_pages_are_valid_roff(tmp_path):
    """man formats every page without a warning."""
    for page in manpages.write_pages(tmp_path):
        res = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True,
                             text=True, env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "80"},
                             check=True)
        assert res.stderr == "", (page.name, res.stderr)


@pytest.mark.slow
def test_build_installs_the_pages_of_the_code(tmp_path):
    """``setup.py build`` + install_data: one page per command in share/man/man1, equal to
    what the code renders (the step a wheel build or pip install runs)."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", "build", "*.egg-info", "tests", "benchmarks"))
    subprocess.run([sys.executable, "setup.py", "-q", "build", "--build-base",
                    str(tmp_path / "build"), "install_data", "--install-dir",
                    str(tmp_path / "prefix")], cwd=src, check=True, capture_output=True)
    man1 = tmp_path / "prefix" / "share" / "man" / "man1"
    pages = {p.name: p.read_text() for p in man1.iterdir()}
    expected = {f"{p.name}.1": manpages.render(p) for p in manpages.all_pages()}
    assert pages.keys() == expected.keys()
    assert pages == expected


#: what the build environment of pyproject.toml lacks: only setuptools, wheel and click
#: are there when the build step writes the man pages
_BUILD_ONLY = """
import sys, tempfile
from pathlib import Path
BLOCKED = {"yaml", "jsonschema", "etcd3", "grpc", "qemu", "paramiko", "rich", "google"}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"not in the build environment: {name}")
        return None
sys.meta_path.insert(0, Block())
from pcocc.cli.manpages import write_pages
print(len(write_pages(Path(tempfile.mkdtemp()))))
"""


def test_pages_are_written_with_only_the_build_requirements():
    """The man pages are built in pip's isolated build environment (click only): a command
    module importing a runtime dependency at import time breaks every install."""
    res = subprocess.run([sys.executable, "-c", _BUILD_ONLY], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert int(res.stdout) == len(list(manpages.all_pages()))
