"""A cold ``pcocc run -N 4`` on the dev cluster with one cache directory per node: the
repository's layer blob is opened once (counted by the kernel, through inotify), every node
ends with a cache entry whose kept layers and unpacked tree verify, and a second run reads
nothing and changes no entry (pcocc/ctr/fanout.py)."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import select
import struct
import threading
from pathlib import Path

import pytest

from helpers import testimages
from pcocc.config import load_config
from pcocc.repo.reposet import RepoSet
from tests.integration.containers.ctrlib import pcocc

NODES = ["n1", "n2", "n3", "n4"]
IN_OPEN, IN_CLOSE_NOWRITE = 0x20, 0x10


class OpenCounter:
    """Counts the opens of some files by any process (inotify). A thread drains the events
    as they come, and each open is followed by a close, so that the kernel never merges two
    opens into one event (it merges only identical events left unread back to back)."""

    def __init__(self, files: list[Path]):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        self.opens = {}
        self.wds = {}
        for f in files:
            wd = libc.inotify_add_watch(self.fd, str(f).encode(), IN_OPEN | IN_CLOSE_NOWRITE)
            assert wd >= 0, os.strerror(ctypes.get_errno())
            self.wds[wd] = f
            self.opens[f] = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while True:
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                data = os.read(self.fd, 65536)
                for off in range(0, len(data), 16):  # no name: watches are on files
                    wd, mask, _cookie, _len = struct.unpack_from("iIII", data, off)
                    if mask & IN_OPEN:
                        self.opens[self.wds[wd]] += 1
            elif self.stop.is_set():
                return

    def close(self) -> dict[Path, int]:
        self.stop.set()
        self.thread.join()
        os.close(self.fd)
        return self.opens


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_cold_run_reads_the_repository_once_then_moves_nothing(
    slurm, pcocc_bin, busybox_image, tmp_path, monkeypatch
):
    caches = tmp_path / "caches"
    (slurm["system"] / "repos.yaml").write_text(
        f"cache: {{path: '{caches}/%{{env:SLURMD_NODENAME}}'}}\n"
    )
    monkeypatch.setenv("SLURMD_NODENAME", "login")  # the launcher's own (unused) cache
    repo, meta = RepoSet(load_config(slurm["system"], slurm["user"]).repos).resolve("busy")
    image = meta.oci_image()
    layers = [layer["digest"] for layer in image.manifest["layers"]]
    blobs = [repo.blob_path(d) for d in layers]

    counter = OpenCounter(blobs)
    res = pcocc(pcocc_bin, "-v", "run", "-N", "4", "busy", "--", "hostname",
                check=0, timeout=300)  # fmt: skip
    opens = counter.close()
    assert sorted(res.stdout.split()) == NODES
    assert list(opens.values()) == [1] * len(blobs), (opens, res.stderr)
    assert res.stderr.count("received ") == 3, res.stderr  # n2..n4 from another node

    key = f"dir-{image.manifest_digest.split(':')[1]}"
    before = {}
    for node in NODES:
        entry = caches / node / "entries" / key
        assert json.loads((entry / "meta.json").read_text())["digest"] == image.manifest_digest
        for d in layers:  # the kept blobs are the repository's, bit for bit
            assert _sha256(entry / "layers" / d.split(":")[1]) == d
        assert testimages.check_tree(entry / "rootfs", busybox_image) == []
        assert not list((caches / node / "tmp").iterdir())
        before[node] = (entry / "meta.json").stat().st_ino, (entry / "meta.json").stat().st_mtime
    assert not (caches / "login").exists()

    counter = OpenCounter(blobs)
    again = pcocc(pcocc_bin, "-v", "run", "-N", "4", "busy", "--", "true", check=0, timeout=300)
    assert list(counter.close().values()) == [0] * len(blobs)
    assert "received " not in again.stderr and "preparing" not in again.stderr, again.stderr
    for node in NODES:
        meta_json = caches / node / "entries" / key / "meta.json"
        assert (meta_json.stat().st_ino, meta_json.stat().st_mtime) == before[node]
