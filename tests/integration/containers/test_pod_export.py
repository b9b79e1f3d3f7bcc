"""``pcocc pod export`` with real runtimes: an app writes a file and deletes one of its image;
the exported image has both changes (and a directory deleted and made again is opaque in the
next export), the cache entry the pod ran on never changed, and a running pod is refused
with nothing written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.integration.containers.ctrlib import pcocc, pods

pytestmark = pytest.mark.slow


def tree_digest(root: Path) -> str:
    """Names, types, modes, owners, times, contents and link targets of a whole tree."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            st = p.lstat()
            h.update(f"{p.relative_to(root)}|{st.st_mode}|{st.st_uid}|{st.st_mtime_ns}".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(p).encode())
            elif stat.S_ISREG(st.st_mode):
                h.update(p.read_bytes())
    return h.hexdigest()


def cache_rootfs(env) -> Path:
    [entry] = sorted((Path(env["home"]) / ".cache" / "pcocc" / "entries").iterdir())
    return entry / "rootfs"


@pytest.fixture
def busy(env, pcocc_bin, busybox_image):
    pcocc(pcocc_bin, "image", "import", busybox_image.ref, "user:busy", check=0)
    return "busy"


def image_names(pcocc_bin) -> list[str]:
    return [i["name"] for i in json.loads(pcocc(pcocc_bin, "image", "list", "--json",
                                                check=0).stdout)]


@pytest.mark.parametrize("runtime", ["crun", "runc", "unshare"])
def test_export_keeps_writes_and_deletions_and_spares_the_cache(env, pcocc_bin, busy, runtime):
    if not shutil.which(runtime):
        pytest.skip(f"{runtime} is not installed")
    pcocc(pcocc_bin, "run", "--runtime", runtime, busy, "--", "true", check=0)  # fills the cache
    rootfs = cache_rootfs(env)
    before = tree_digest(rootfs)
    script = "echo made > /etc/made && rm /etc/hello && mkdir /opt && echo deep > /opt/f"
    pcocc(pcocc_bin, "run", "--runtime", runtime, busy, "--", "sh", "-c", script, check=0)
    assert tree_digest(rootfs) == before  # the pod wrote to its own layer only
    uuid = pods(pcocc_bin)[-1]["uuid"]

    out = pcocc(pcocc_bin, "pod", "export", uuid[:8], "user:saved", check=0)
    assert out.stdout.startswith("user:saved@0 sha256-")
    res = pcocc(pcocc_bin, "run", "--runtime", runtime, "saved", "--", "sh", "-c",
                "cat /etc/made /opt/f; ls /etc/hello || echo hello-gone", check=0)
    assert res.stdout == "made\ndeep\nhello-gone\n"
    [shown] = json.loads(pcocc(pcocc_bin, "image", "show", "--json", "saved", check=0).stdout)
    assert len(shown["layers"]) == 2 and shown["parent"] == "user:busy@0"
    # the base image is unchanged, and so is its cache entry
    again = pcocc(pcocc_bin, "run", "--runtime", runtime, busy, "--", "cat", "/etc/hello", check=0)
    assert again.stdout == "hello from pcocc\n"
    assert tree_digest(rootfs) == before

    # a directory deleted and made again hides all it had (an opaque directory)
    pcocc(pcocc_bin, "run", "--runtime", runtime, "saved", "--", "sh", "-c",
          "rm -r /opt && mkdir /opt && echo new > /opt/g", check=0)
    pcocc(pcocc_bin, "pod", "export", pods(pcocc_bin)[-1]["uuid"], "user:saved2", check=0)
    res = pcocc(pcocc_bin, "run", "--runtime", runtime, "saved2", "--", "ls", "/opt", check=0)
    assert res.stdout.split() == ["g"]


def test_export_refuses_running_pods_and_existing_names(env, pcocc_bin, busy):
    # an app that ends on SIGTERM: a graceful stop leaves no runtime state behind
    started = pcocc(pcocc_bin, "run", "--detach", "--runtime", "crun", busy, "--", "sh", "-c",
                    "trap 'exit 0' TERM; while true; do sleep 1; done", check=0)
    uuid = started.stdout.split()[-1]
    try:
        res = pcocc(pcocc_bin, "pod", "export", uuid, "user:early")
        assert res.returncode == 1 and "is running" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr and "early" not in image_names(pcocc_bin)
    finally:
        pcocc(pcocc_bin, "pod", "stop", uuid, check=0)
    taken = pcocc(pcocc_bin, "pod", "export", uuid, "user:busy")
    assert taken.returncode != 0 and "already exists" in taken.stderr
    missing = pcocc(pcocc_bin, "pod", "export", "ffffffff-none", "user:x")
    assert missing.returncode == 1 and "no pod with UUID" in missing.stderr
    assert sorted(image_names(pcocc_bin)) == ["busy"]
