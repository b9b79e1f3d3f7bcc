"""Helpers for the repository integration tests: configured repos, real pcocc runs,
VM images with known contents."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

from tests.fixtures.cli import run_pcocc as pcocc


def write_repos(conf_dir: Path, repos: dict[str, Path]) -> None:
    """A repos.yaml in ``conf_dir`` listing ``name -> path`` in order."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "repos.yaml").write_text(yaml.safe_dump(
        {"repos": [{"name": n, "path": str(p), "description": f"{n} test repo"}
                   for n, p in repos.items()]}))


def ok(pcocc_bin: str, *args: str) -> subprocess.CompletedProcess:
    res = pcocc(pcocc_bin, *args)
    assert res.returncode == 0, f"pcocc {' '.join(map(str, args))}: {res.stderr}"
    return res


def assert_one_line_error(res: subprocess.CompletedProcess, status: int, *needles: str) -> None:
    """A failed run: the status, 'pcocc: error:' + at most one hint line, no traceback."""
    assert res.returncode == status, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert lines and lines[0].startswith("pcocc: error: "), res.stderr
    assert len(lines) <= 2 and (len(lines) == 1 or lines[1].startswith("hint: ")), res.stderr
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def make_raw(path: Path, size: int = 8 << 20, seed: int = 1) -> Path:
    """A sparse raw disk with a few recognizable data chunks spread over it."""
    with open(path, "wb") as f:
        f.truncate(size)
        for i, off in enumerate((0, size // 3, size - 65536)):
            f.seek(off)
            f.write(bytes([(seed + i) % 256]) * 4096 + os.urandom(4096))
    return path


def convert(src: Path, dst: Path, fmt: str) -> Path:
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, str(src), str(dst)],
                   check=True)
    return dst


def virtual_size(path: Path) -> int:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["virtual-size"]


def same_content(a: Path, b: Path) -> bool:
    """Same virtual size and guest-visible contents (``qemu-img compare``; its strict mode
    would also compare allocation, which conversions legitimately change)."""
    if virtual_size(a) != virtual_size(b):
        return False
    res = subprocess.run(["qemu-img", "compare", "-q", "-U", str(a), str(b)])
    assert res.returncode in (0, 1), f"qemu-img compare failed on {a} {b}"
    return res.returncode == 0


def repo_files(root: Path) -> dict[str, list[Path]]:
    return {
        "blobs": sorted(p for p in (root / "data").rglob("*") if p.is_file()),
        "tmp": sorted((root / "tmp").iterdir()) if (root / "tmp").exists() else [],
        "meta": sorted((root / "meta").rglob("*.json")),
    }
