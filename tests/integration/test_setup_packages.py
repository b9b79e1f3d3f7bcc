"""helpers/setup must install every external program pcocc calls."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pcocc.proc import PACKAGE_OF
from pcocc.vm.virtiofs import VIRTIOFSD_PACKAGE, find_virtiofsd

SETUP = Path(__file__).resolve().parents[2] / "helpers" / "setup"


def apt_packages() -> set[str]:
    text = SETUP.read_text()
    block = re.search(r"APT_PACKAGES=\((.*?)\n\)", text, re.S)
    assert block, "helpers/setup has no APT_PACKAGES=( ... ) list"
    words = []
    for line in block.group(1).splitlines():
        words += line.split("#", 1)[0].split()
    return set(words)


def test_every_tool_hint_names_a_package_that_setup_installs():
    missing = {tool: pkg for tool, pkg in PACKAGE_OF.items() if pkg not in apt_packages()}
    assert not missing, f"add these packages to APT_PACKAGES in helpers/setup: {missing}"


def test_virtiofsd_package_is_installed_by_setup():
    assert VIRTIOFSD_PACKAGE in apt_packages()


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="not a Debian system: no dpkg")
def test_virtiofsd_comes_from_the_package_named():
    path = find_virtiofsd()  # outside PATH on Debian 12, so not in PACKAGE_OF
    out = subprocess.run(["dpkg", "-S", str(Path(path).resolve())], capture_output=True,
                         text=True, check=True).stdout
    assert out.split(":")[0] in (VIRTIOFSD_PACKAGE, "virtiofsd")


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="not a Debian system: no dpkg")
def test_installed_tools_come_from_the_packages_named():
    paths = {}
    for tool in PACKAGE_OF:
        path = shutil.which(tool)
        assert path, f"{tool} is not installed: run helpers/setup"
        real = str(Path(path).resolve())
        paths[tool] = {path, real, re.sub(r"^/usr/(s?bin)/", r"/\1/", real)}
    # One dpkg call for all candidate paths (unknown ones are reported on stderr only).
    everything = sorted({p for ps in paths.values() for p in ps})
    out = subprocess.run(["dpkg", "-S", *everything], capture_output=True, text=True).stdout
    owners: dict[str, set[str]] = {}
    for line in out.splitlines():
        pkgs, _, path = line.partition(": ")
        for pkg in pkgs.split(","):
            owners.setdefault(path.strip(), set()).add(pkg.strip().split(":")[0])
    wrong = {}
    for tool, pkg in PACKAGE_OF.items():
        found = set().union(*(owners.get(p, set()) for p in paths[tool]))
        if found and pkg not in found:
            wrong[tool] = f"installed by {sorted(found)}, PACKAGE_OF says {pkg}"
    assert not wrong, wrong
