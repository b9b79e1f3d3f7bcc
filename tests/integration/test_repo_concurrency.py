"""Several real pcocc processes writing one repository at the same time."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from repo_testlib import assert_one_line_error, make_raw, ok, repo_files, write_repos

from pcocc.config import RepoConfig
from pcocc.repo.reposet import RepoSet

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img missing")


def _start_all(pcocc_bin: str, argvs: list[list[str]]) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen([pcocc_bin, *map(str, a)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for a in argvs]
    out = []
    for p, a in zip(procs, argvs):
        stdout, stderr = p.communicate(timeout=180)
        out.append(subprocess.CompletedProcess(a, p.returncode, stdout, stderr))
    return out


def test_eight_concurrent_imports(pcocc_env, pcocc_bin, tmp_path):
    repo = tmp_path / "repo"
    write_repos(pcocc_env["user"], {"user": repo})
    raw = make_raw(tmp_path / "shared.raw", size=16 << 20)
    same = [["image", "import", "-t", "raw", raw, "same"] for _ in range(4)]
    distinct = [["image", "import", "-t", "raw", raw, f"own{i}"] for i in range(4)]
    results = _start_all(pcocc_bin, [x for pair in zip(same, distinct) for x in pair])
    same_res = [r for r in results if r.args[-1] == "same"]
    own_res = [r for r in results if r.args[-1] != "same"]
    assert all(r.returncode == 0 for r in own_res), [r.stderr for r in own_res]
    winners = [r for r in same_res if r.returncode == 0]
    assert len(winners) == 1, [r.stderr for r in same_res]
    for r in same_res:
        if r.returncode:
            assert_one_line_error(r, 1, "image 'user:same' already exists")
    repos = RepoSet([RepoConfig("user", repo)])
    assert sorted(m.name for m in repos.images()) == ["own0", "own1", "own2", "own3", "same"]
    assert all(m.revision == 0 for m in repos.images())
    files = repo_files(repo)
    assert len(files["blobs"]) == 1  # identical layers were stored once
    assert files["tmp"] == []
    assert "0 problems" in ok(pcocc_bin, "image", "repo", "fsck").stdout


def test_concurrent_writers_get_distinct_revisions(pcocc_env, pcocc_bin, tmp_path):
    repo = tmp_path / "repo"
    write_repos(pcocc_env["user"], {"user": repo})
    ok(pcocc_bin, "image", "import", "-t", "raw", make_raw(tmp_path / "b.raw"), "img")
    sizes = [f"{9 + i}M" for i in range(4)]
    results = _start_all(pcocc_bin, [["image", "resize", "img@0", s] for s in sizes])
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    repos = RepoSet([RepoConfig("user", repo)])
    revs = repos.get("user").images(all_revisions=True)
    assert sorted(m.revision for m in revs) == [0, 1, 2, 3, 4]
    assert sorted(m.vm["virtual_size"] for m in revs if m.revision) == [
        (9 + i) << 20 for i in range(4)]
    assert "0 problems" in ok(pcocc_bin, "image", "repo", "fsck").stdout
