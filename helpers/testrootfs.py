#!/usr/bin/env python3
"""Build a tiny container image directory for tests: DEST/rootfs (static busybox) + config.json.

    helpers/testrootfs.py DEST

The rootfs has /bin/busybox with applet symlinks, /etc/passwd, /etc/group, /etc/os-release,
and the usual empty mount points. config.json is an OCI image config with Env, Cmd and
WorkingDir. Needs Debian's busybox-static.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
APPLETS = (
    "sh",
    "true",
    "false",
    "echo",
    "cat",
    "hostname",
    "sleep",
    "ls",
    "id",
    "env",
    "ip",
    "touch",
    "mkdir",
    "rm",
    "test",
    "printf",
    "wc",
    "grep",
    "ps",
    "pwd",
    "head",
    "uname",
    "stat",
    "mount",
    "readlink",
)
DIRS = ("bin", "etc", "proc", "sys", "dev", "tmp", "root", "home", "mnt", "data", "work")

DEFAULT_CONFIG = {
    "Env": ["PATH=/bin:/usr/bin", "IMAGE_VAR=from-image", "OVERRIDE_ME=image"],
    "Cmd": ["/bin/sh", "-c", "echo default-cmd"],
    "WorkingDir": "/",
}


def find_busybox() -> str:
    for cand in BUSYBOX_CANDIDATES:
        if Path(cand).is_file():
            data = Path(cand).read_bytes()[:4096]
            if b"ld-linux" not in data:  # rough check for a static binary
                return cand
    raise FileNotFoundError("a static busybox is needed (Debian package busybox-static)")


def build_rootfs(dest: str | Path, config: dict | None = None) -> Path:
    """Create DEST/rootfs and DEST/config.json; returns DEST."""
    dest = Path(dest)
    root = dest / "rootfs"
    for d in DIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(find_busybox(), root / "bin" / "busybox")
    for applet in APPLETS:
        link = root / "bin" / applet
        if not link.is_symlink():
            link.symlink_to("busybox")
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (root / "etc" / "os-release").write_text('NAME="pcocc test rootfs"\nID=pcocctest\n')
    (root / "tmp").chmod(0o1777)
    (dest / "config.json").write_text(json.dumps({"config": config or DEFAULT_CONFIG}))
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: helpers/testrootfs.py DEST")
    print(build_rootfs(sys.argv[1]))
