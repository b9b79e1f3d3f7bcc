"""A thin typed wrapper over ``qemu-img``: JSON in, dataclasses out, typed errors.

Every image is opened through ``--image-opts`` with ``file.driver=file``, so that a file
named ``nbd:host:1`` or ``json:{...}`` is read as a file, never as a protocol, and paths are
made absolute. Layer chains are spelled out option by option (:func:`chain_opts`): qemu-img
never follows a backing file name written in an image header.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pcocc import proc
from pcocc.errors import Corrupt, ToolError
from pcocc.repo.model import Progress, no_progress

#: Formats pcocc converts from and to.
VM_FORMATS = ("raw", "qcow2", "qed", "vdi", "vmdk")

#: How long ``qemu-img info`` may take: it reads a header (a guard against a hang).
INFO_TIMEOUT_S = 60.0

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
    #: the file name qemu-img was given (vmdk extents of a single-file image repeat it)
    filename: str | None = None
    #: qcow2 external data file named in the header
    data_file: str | None = None
    #: vmdk extent file names, in order
    extents: tuple[str, ...] = ()

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

        def opt_str(d: dict, key: str) -> str | None:
            v = d.get(key)
            if v is not None and not isinstance(v, str):
                raise Corrupt(f"qemu-img info on {path}: {key!r} is not a string")
            return v

        spec = data.get("format-specific") or {}
        spec_data = spec.get("data") if isinstance(spec, dict) else None
        if spec_data is not None and not isinstance(spec_data, dict):
            raise Corrupt(f"qemu-img info on {path}: 'format-specific' is not an object")
        spec_data = spec_data or {}
        extents = spec_data.get("extents") or []
        if not isinstance(extents, list) or not all(
                isinstance(e, dict) and isinstance(e.get("filename"), str) for e in extents):
            raise Corrupt(f"qemu-img info on {path}: unexpected vmdk 'extents'")
        asize = data.get("actual-size")
        return cls(
            path=path,
            format=fmt,
            virtual_size=vsize,
            actual_size=asize if isinstance(asize, int) else None,
            backing_filename=opt_str(data, "backing-filename"),
            full_backing_filename=opt_str(data, "full-backing-filename"),
            backing_format=opt_str(data, "backing-filename-format"),
            filename=opt_str(data, "filename"),
            data_file=opt_str(spec_data, "data-file"),
            extents=tuple(e["filename"] for e in extents),
        )

    def other_files(self) -> list[str]:
        """What the header names besides the image itself: ``["backing file '/etc/x'",
        ...]``. An image pcocc stores or copies must name none (but see
        :func:`layer_problem` for the chains a repository builds itself)."""
        out = []
        if self.backing_filename or self.full_backing_filename:
            out.append(f"backing file {self.backing_filename or self.full_backing_filename!r}")
        if self.data_file:
            out.append(f"external data file {self.data_file!r}")
        for name in self.extents:
            if name != self.filename:
                out.append(f"vmdk extent {name!r}")
        return out


def layer_problem(info: ImageInfo, parent_relpath: str | None, *,
                  backing_format_optional: bool = False) -> str | None:
    """Why ``info`` is not a layer of a repository chain (None when it is one): a qcow2
    with no data file whose backing file is exactly ``parent_relpath`` (the previous
    layer's blob by relative path, qcow2 named explicitly), or none for a base layer.
    ``backing_format_optional``: a layer may also leave its backing format unnamed (pcocc
    0.7 wrote none); it is then read as qcow2, never probed."""
    if info.format != "qcow2":
        return f"is a {info.format} image, not qcow2"
    if info.data_file:
        return f"names an external data file {info.data_file!r}"
    if info.backing_filename != parent_relpath:
        if parent_relpath is None:
            return f"is a base layer but names the backing file {info.backing_filename!r}"
        return f"has backing file {info.backing_filename!r}, expected {parent_relpath!r}"
    if parent_relpath is not None and info.backing_format != "qcow2" and not (
            backing_format_optional and info.backing_format is None):
        return f"has backing format {info.backing_format!r}, expected 'qcow2'"
    return None


def _esc(value: str) -> str:
    """A value inside ``--image-opts`` (QemuOpts doubles commas)."""
    return value.replace(",", ",,")


def image_opts(path: str | os.PathLike, fmt: str | None = None, *,
               no_backing: bool = False) -> str:
    """``--image-opts`` reading ``path`` as a plain file (probed when ``fmt`` is None);
    ``no_backing`` opens it without any backing file."""
    opts = [f"driver={fmt}"] if fmt else []
    opts += ["file.driver=file", "file.filename=" + _esc(os.path.abspath(path))]
    if no_backing:
        opts.append("backing=")  # qemu 7 accepts "" for null (with a deprecation warning)
    return ",".join(opts)


def chain_opts(paths: Sequence[str | os.PathLike], top_fmt: str = "qcow2") -> str:
    """``--image-opts`` for a qcow2 layer chain given base first: each backing file is
    named here, as a plain file in qcow2, and the base has none, whatever the headers say.
    ``top_fmt`` is the format of the last one (the others are qcow2)."""
    if not paths:
        raise ValueError("empty chain")
    opts = []
    prefix = ""
    for i, path in enumerate(reversed(paths)):
        fmt = top_fmt if i == 0 else "qcow2"
        opts += [f"{prefix}driver={fmt}", f"{prefix}file.driver=file",
                 f"{prefix}file.filename=" + _esc(os.path.abspath(path))]
        prefix += "backing."
    opts.append(f"{prefix[:-1]}=")  # the base: no backing file
    return ",".join(opts)


def info(path: str | os.PathLike, fmt: str | None = None, *, pass_fds: Sequence[int] = (),
         where: str | None = None) -> ImageInfo:
    """Describe an image from its header, without taking its lock (``-U``); ``fmt`` forces
    the format. Backing files are not opened. ``path`` may be ``/dev/fd/N`` of a descriptor
    in ``pass_fds`` (``where`` then names it in messages)."""
    where = where or os.fspath(path)
    res = proc.run(["qemu-img", "info", "--output=json", "-U", "--image-opts",
                    image_opts(path, fmt)], what=f"qemu-img info on {where}",
                   timeout_s=INFO_TIMEOUT_S, pass_fds=pass_fds)
    return ImageInfo.from_json(res.stdout, where)


def is_consistent(path: str | os.PathLike) -> bool:
    """Whether ``qemu-img check`` finds the qcow2 ``path`` (opened without any backing file)
    free of corruptions and leaks: its metadata read, not its data."""
    res = proc.run(["qemu-img", "check", "-U", "--output=json", "--image-opts",
                    image_opts(path, "qcow2", no_backing=True)], check=False,
                   what=f"qemu-img check on {os.fspath(path)}", timeout_s=INFO_TIMEOUT_S)
    return res.returncode == 0


def _run_with_progress(argv: list[str], total_bytes: int, progress: Progress, what: str,
                       pass_fds: Sequence[int] = ()) -> None:
    """Run a qemu-img command given ``-p`` and turn its percentages into byte counts."""
    child = proc.spawn(argv, stdout=proc.PIPE, stderr=proc.PIPE, pass_fds=pass_fds)
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
    src_opts: str,
    dst: str | os.PathLike,
    dst_fmt: str,
    *,
    progress: Progress = no_progress,
    total_bytes: int = 0,
    what: str = "the image",
    pass_fds: Sequence[int] = (),
) -> None:
    """Convert the image ``src_opts`` (from :func:`image_opts` or :func:`chain_opts`) to a
    standalone image ``dst`` (a chain is flattened)."""
    argv = ["qemu-img", "convert", "-U", "-O", dst_fmt]
    tail = ["--image-opts", src_opts, os.path.abspath(dst)]
    what = f"qemu-img convert of {what}"
    if progress is no_progress:
        proc.run([*argv, *tail], what=what, pass_fds=pass_fds)
        return
    _run_with_progress([*argv, "-p", *tail], total_bytes, progress, what, pass_fds)


def create_overlay(path: str | os.PathLike, backing: str, size_bytes: int) -> None:
    """Create a qcow2 whose backing file is ``backing`` in qcow2, written as given (a path
    relative to the final location). The backing file is not opened (``-u``)."""
    proc.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", "qcow2", "-u",
              os.path.abspath(path), str(size_bytes)], what="qemu-img create")


def set_backing(path: str | os.PathLike, backing: str) -> None:
    """Rewrite the backing file name of the qcow2 ``path`` to ``backing`` (in qcow2),
    opening neither the old backing file nor the new one (``rebase -u``)."""
    proc.run(["qemu-img", "rebase", "-q", "-u", "-b", backing, "-F", "qcow2", "--image-opts",
              image_opts(path, "qcow2")], what="qemu-img rebase")


def create_empty(path: str | os.PathLike, size_bytes: int) -> None:
    """Create an empty standalone qcow2 of ``size_bytes``."""
    proc.run(["qemu-img", "create", "-q", "-f", "qcow2", os.path.abspath(path),
              str(size_bytes)], what="qemu-img create")


def resize(opts: str, size_bytes: int, *, shrink: bool = False) -> None:
    """Resize the top of the chain ``opts`` (see :func:`chain_opts`)."""
    argv = ["qemu-img", "resize", "-q", "--image-opts", opts]
    if shrink:
        argv.insert(3, "--shrink")
    proc.run([*argv, str(size_bytes)], what="qemu-img resize")


def allocated_end(opts: str) -> int:
    """Offset just past the last guest byte that holds data, across the chain ``opts``."""
    res = proc.run(["qemu-img", "map", "--output=json", "-U", "--image-opts", opts],
                   what="qemu-img map")
    try:
        extents = json.loads(res.stdout)
        end = 0
        for e in extents:
            if e.get("data") and not e.get("zero"):
                end = max(end, int(e["start"]) + int(e["length"]))
        return end
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise Corrupt(f"qemu-img map: unexpected output ({err})") from err
