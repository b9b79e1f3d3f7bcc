"""Imports killed with SIGKILL at random moments never leave a visible partial image, and
gc reclaims everything they left behind."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from repo_testlib import ok, repo_files, same_content, write_repos

from pcocc.config import RepoConfig
from pcocc.repo.reposet import RepoSet

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img missing")


def _orphans_of(repo: Path) -> list[int]:
    """Processes (qemu-img started by a killed pcocc) still working inside ``repo``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if str(repo).encode() in cmd:
                pids.append(int(entry))
    return pids


def _wait_orphans(repo: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while _orphans_of(repo):
        assert time.monotonic() < deadline, f"processes still writing in {repo}"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_during_imports(pcocc_env, pcocc_bin, tmp_path):
    repo = tmp_path / "repo"
    write_repos(pcocc_env["user"], {"user": repo})
    seed = int(os.environ.get("PCOCC_CRASH_SEED", time.time()))
    rng = random.Random(seed)
    sources = []
    for i in range(20):
        src = tmp_path / f"src{i}.raw"
        src.write_bytes(os.urandom(rng.randrange(1, 6) << 20))
        sources.append(src)
    t0 = time.monotonic()
    ok(pcocc_bin, "image", "import", "-t", "raw", sources[0], "reference")
    full_s = time.monotonic() - t0
    outcomes = {}
    for i, src in enumerate(sources):
        p = subprocess.Popen([pcocc_bin, "image", "import", "-t", "raw", str(src), f"c{i}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)
        try:
            p.wait(timeout=rng.uniform(0.02, 1.1) * full_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        outcomes[f"c{i}"] = p.returncode
        assert p.returncode in (0, -signal.SIGKILL), (seed, p.stderr.read())
        p.stderr.close()
    _wait_orphans(repo)
    killed = sorted(n for n, rc in outcomes.items() if rc != 0)
    repos = RepoSet([RepoConfig("user", repo)])
    listed = {m.name: m for m in repos.images()}
    for name, rc in outcomes.items():
        if rc == 0:
            assert name in listed, (seed, name)
    for name in listed:  # whatever is listed is complete and correct
        src = sources[0] if name == "reference" else sources[int(name[1:])]
        out = tmp_path / f"{name}.out"
        ok(pcocc_bin, "image", "export", "-t", "raw", name, out)
        assert same_content(src, out), (seed, name)
        out.unlink()
    assert "0 problems" in ok(pcocc_bin, "image", "repo", "fsck").stdout, seed

    before = repo_files(repo)
    young = ok(pcocc_bin, "image", "repo", "gc").stdout  # default grace: leftovers are young
    assert "removed 0 blobs and 0 temporary entries" in young
    assert repo_files(repo) == before
    ok(pcocc_bin, "image", "repo", "gc", "--grace-period", "0")
    after = repo_files(repo)
    referenced = {b.digest[7:] for m in repos.get("user").images(all_revisions=True)
                  for b in m.blobs}
    assert {p.name for p in after["blobs"]} == referenced, (seed, killed)
    assert after["tmp"] == []
    assert not list((repo / "meta").rglob(".*.tmp"))
    assert "0 problems" in ok(pcocc_bin, "image", "repo", "fsck").stdout
    print(f"seed={seed} killed={len(killed)} completed={len(listed) - 1} "
          f"leftovers={len(before['blobs']) - len(after['blobs'])} blobs, "
          f"{len(before['tmp'])} tmp entries")
