"""Pieces to build direct-boot initramfs images from the host's Debian cloud kernel.

Used by the test VM builder (helpers/build_testvm.py) and by the ``vm`` container runtime
(:mod:`pcocc.vm.stage1`): find the kernel, order its modules, and write ``newc`` cpio archives.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from pcocc.errors import PcoccError

KERNEL_GLOB = "/boot/vmlinuz-*-cloud-amd64"


def find_kernel(pattern: str = KERNEL_GLOB) -> tuple[Path, str]:
    """The newest kernel matching ``pattern`` (default: /boot/vmlinuz-*-cloud-amd64) and its
    version.

    :raise PcoccError: no such kernel (with the package to install)
    """
    found = sorted(glob.glob(pattern), key=_version_key)
    if not found:
        package = "linux-image-cloud-amd64" if "cloud" in pattern else "linux-image-amd64"
        raise PcoccError(
            f"no Debian kernel in /boot ({Path(pattern).name})",
            hint=f"install the Debian package '{package}'",
        )
    kernel = Path(found[-1])
    return kernel, kernel.name.removeprefix("vmlinuz-")


def _version_key(path: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.-]", path)]


def module_order(moddir: Path, wanted: list[str]) -> list[str]:
    """Relative module paths (without .ko) of ``wanted`` and their dependencies, deps first.

    Modules built into the kernel are skipped.

    :raise PcoccError: a module is missing or compressed
    """
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        deps[target] = rest.split()
    by_name = {Path(t).name.removesuffix(".ko").replace("-", "_"): t for t in deps}
    order: list[str] = []

    def visit(rel: str) -> None:
        if rel in order:
            return
        # modules.dep lists every (transitive) dependency; the last ones are the deepest.
        for dep in reversed(deps[rel]):
            visit(dep)
        order.append(rel)

    for name in wanted:
        rel = by_name.get(name)
        if rel is None:
            if _is_builtin(moddir, name):
                continue
            raise PcoccError(f"kernel module '{name}' not found in {moddir}")
        visit(rel)
    for rel in order:
        if not rel.endswith(".ko"):
            raise PcoccError(f"compressed module {rel} is not supported by the initramfs builder")
    return [rel.removesuffix(".ko") for rel in order]


def _is_builtin(moddir: Path, name: str) -> bool:
    builtin = moddir / "modules.builtin"
    return builtin.exists() and any(
        Path(ln).name.removesuffix(".ko").replace("-", "_") == name
        for ln in builtin.read_text().splitlines()
    )


class Cpio:
    """A minimal writer of uncompressed 'newc' cpio archives with fixed timestamps."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[int, bytes]] = {}  # path -> (mode, data)

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            self.entries.setdefault("/".join(parts[:i]), (0o040000 | mode, b""))

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._add_parent(path)
        self.entries[path.strip("/")] = (0o100000 | mode, data)

    def add_symlink(self, path: str, target: str) -> None:
        self._add_parent(path)
        self.entries[path.strip("/")] = (0o120777, target.encode())

    def _add_parent(self, path: str) -> None:
        parent = os.path.dirname(path.strip("/"))
        if parent:
            self.add_dir(parent)

    def write(self, path: Path) -> None:
        with open(path, "wb") as out:
            for ino, name in enumerate(sorted(self.entries), start=1):
                mode, data = self.entries[name]
                self._entry(out, ino, name, mode, data)
            self._entry(out, 0, "TRAILER!!!", 0, b"")

    @staticmethod
    def _entry(out, ino: int, name: str, mode: int, data: bytes) -> None:
        nlink = 2 if mode & 0o040000 else 1
        fields = [ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        out.write(header + name.encode() + b"\0")
        out.write(b"\0" * (-(len(header) + len(name) + 1) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))
