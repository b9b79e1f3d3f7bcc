"""A thin typed wrapper over ``qemu-img``: JSON in, dataclasses out, typed errors."""

from __future__ import annotations

import json
import os
import re
import subprocess  # only for the PIPE constant: pcocc.proc starts the programs
from dataclasses import dataclass

from pcocc import proc
from pcocc.errors import Corrupt, ToolError
from pcocc.repo.model import Progress, no_progress

#: Formats pcocc converts from and to.
VM_FORMATS = ("raw", "qcow2", "qed", "vdi", "vmdk")

_PCT_RE = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


@dataclass(frozen=True)
class ImageInfo:
    """The fields of ``qemu-img info --output=json`` that pcocc relies on."""

    path: str
    format: str
    virtual_size: int
    actual_size: int | None
    backing_filename: str | None
    full_backing_filename: str | None
    backing_format: str | None

    @classmethod
    def from_json(cls, text: str, path: str) -> ImageInfo:
        try:
            data = json.loads(text)
        except ValueError as err:
            raise Corrupt(f"qemu-img info on {path}: unreadable JSON output ({err})") from err
        if isinstance(data, list):  # --backing-chain returns a list, the image first
            data = data[0] if data else {}
        if not isinstance(data, dict):
            raise Corrupt(f"qemu-img info on {path}: expected a JSON object")
        fmt = data.get("format")
        vsize = data.get("virtual-size")
        if not isinstance(fmt, str) or not isinstance(vsize, int) or vsize < 0:
            raise Corrupt(f"qemu-img info on {path}: missing 'format' or 'virtual-size'")

        def opt_str(key: str) -> str | None:
            v = data.get(key)
            if v is not None and not isinstance(v, str):
                raise Corrupt(f"qemu-img info on {path}: {key!r} is not a string")
            return v

        asize = data.get("actual-size")
        return cls(
            path=path,
            format=fmt,
            virtual_size=vsize,
            actual_size=asize if isinstance(asize, int) else None,
            backing_filename=opt_str("backing-filename"),
            full_backing_filename=opt_str("full-backing-filename"),
            backing_format=opt_str("backing-filename-format"),
        )


def info(path: str | os.PathLike, fmt: str | None = None) -> ImageInfo:
    """Describe an image without taking its lock (``-U``); ``fmt`` forces the format."""
    argv = ["qemu-img", "info", "--output=json", "-U"]
    if fmt:
        argv += ["-f", fmt]
    res = proc.run([*argv, os.fspath(path)], what=f"qemu-img info on {path}")
    return ImageInfo.from_json(res.stdout, os.fspath(path))


def _run_with_progress(argv: list[str], total_bytes: int, progress: Progress, what: str) -> None:
    """Run a qemu-img command given ``-p`` and turn its percentages into byte counts."""
    child = proc.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stderr is not None
        buf = b""
        while True:
            chunk = child.stdout.read1(4096)  # type: ignore[attr-defined]
            if not chunk:
                break
            buf = (buf + chunk)[-256:]
            found = _PCT_RE.findall(buf)
            if found:
                progress(int(float(found[-1]) / 100 * total_bytes), total_bytes)
        err = child.stderr.read().decode(errors="replace")
        status = child.wait()
    except BaseException:
        proc.stop(child, timeout_s=1)
        raise
    finally:
        for f in (child.stdout, child.stderr):
            if f is not None:
                f.close()
    if status != 0:
        raise ToolError(f"{what} failed (exit status {status})", argv=argv,
                        returncode=status, stderr=err)


def convert(
    src: str | os.PathLike,
    src_fmt: str,
    dst: str | os.PathLike,
    dst_fmt: str,
    *,
    progress: Progress = no_progress,
    total_bytes: int = 0,
) -> None:
    """Convert ``src`` to a standalone image ``dst`` (backing chains are flattened)."""
    argv = ["qemu-img", "convert", "-U", "-f", src_fmt, "-O", dst_fmt]
    what = f"qemu-img convert of {src}"
    if progress is no_progress:
        proc.run([*argv, os.fspath(src), os.fspath(dst)], what=what)
        return
    _run_with_progress([*argv, "-p", os.fspath(src), os.fspath(dst)], total_bytes, progress, what)


def create_overlay(path: str | os.PathLike, backing: str, size_bytes: int) -> None:
    """Create a qcow2 whose backing file is ``backing`` (kept as written, even relative).

    The backing file is not opened (``-u``), so a path relative to the final location works.
    """
    proc.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", "qcow2", "-u",
              os.fspath(path), str(size_bytes)], what="qemu-img create")


def rebase_unsafe(path: str | os.PathLike, backing: str) -> None:
    """Rewrite the backing file name of a qcow2 without touching data (``rebase -u``)."""
    proc.run(["qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-b", backing, "-F", "qcow2",
              os.fspath(path)], what="qemu-img rebase")


def resize(path: str | os.PathLike, size_bytes: int, *, shrink: bool = False) -> None:
    argv = ["qemu-img", "resize", "-q", "-f", "qcow2"]
    if shrink:
        argv.append("--shrink")
    proc.run([*argv, os.fspath(path), str(size_bytes)], what="qemu-img resize")


def allocated_end(path: str | os.PathLike) -> int:
    """Offset just past the last guest byte that holds data, across the backing chain."""
    res = proc.run(["qemu-img", "map", "--output=json", "-U", "-f", "qcow2", os.fspath(path)],
                   what=f"qemu-img map of {path}")
    try:
        extents = json.loads(res.stdout)
        end = 0
        for e in extents:
            if e.get("data") and not e.get("zero"):
                end = max(end, int(e["start"]) + int(e["length"]))
        return end
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise Corrupt(f"qemu-img map of {path}: unexpected output ({err})") from err


def compare(a: str | os.PathLike, b: str | os.PathLike,
            fmt_a: str | None = None, fmt_b: str | None = None) -> bool:
    """True when both images show the same guest content (``qemu-img compare``)."""
    argv = ["qemu-img", "compare", "-U", "-q"]
    if fmt_a:
        argv += ["-f", fmt_a]
    if fmt_b:
        argv += ["-F", fmt_b]
    res = proc.run([*argv, os.fspath(a), os.fspath(b)], check=False, what="qemu-img compare")
    if res.returncode in (0, 1):
        return res.returncode == 0
    raise ToolError("qemu-img compare failed", argv=res.argv, returncode=res.returncode,
                    stderr=res.stderr)


