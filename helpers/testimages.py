"""Container images for the tests, built only from Debian packages (umoci, busybox-static).

Every builder writes an OCI layout with ``umoci`` and returns its skopeo reference
(``oci:<dir>:<tag>``); :func:`convert` turns that into any other skopeo transport
(docker-archive, oci-archive, dir, a local registry...). Layers are tarballs we write
ourselves, added with ``umoci raw add-layer``, so the tests control their exact content,
whiteouts included.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from pcocc import proc

BUSYBOX = Path("/bin/busybox")
BUSYBOX_APPLETS = ("sh", "ls", "cat", "echo", "true", "sleep", "env", "id", "hostname")
MTIME = 1_700_000_000


@dataclass
class TestImage:
    """An image built for the tests and what unpacking it must give."""

    ref: str  #: skopeo reference, e.g. "oci:/tmp/x/layout:busybox"
    layout: Path
    tag: str
    #: path -> file content (bytes) or "->target" for symlinks, or None for directories
    expected: dict[str, bytes | str | None] = field(default_factory=dict)
    #: paths that must NOT exist after unpacking (deleted by whiteouts)
    absent: list[str] = field(default_factory=list)


def _tar(entries: list[tuple]) -> bytes:
    """A tar archive from (kind, name, payload[, mode]) with kind in file/dir/sym."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, payload, *rest in entries:
            info = tarfile.TarInfo(name)
            info.mtime = MTIME
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = rest[0] if rest else 0o755
                tar.addfile(info)
            elif kind == "sym":
                info.type = tarfile.SYMTYPE
                info.linkname = payload
                tar.addfile(info)
            else:
                data = payload if isinstance(payload, bytes) else Path(payload).read_bytes()
                info.size = len(data)
                info.mode = rest[0] if rest else 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _umoci(*args: str | os.PathLike) -> None:
    proc.run(["umoci", *args], what=f"umoci {args[0]}")


def new_layout(layout: Path, tag: str) -> None:
    if not (layout / "index.json").exists():
        _umoci("init", "--layout", layout)
    _umoci("new", "--image", f"{layout}:{tag}")


def add_layer(layout: Path, tag: str, entries: list[tuple], workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    tar_path = workdir / f"layer-{os.getpid()}-{len(list(workdir.iterdir()))}.tar"
    tar_path.write_bytes(_tar(entries))
    _umoci("raw", "add-layer", "--image", f"{layout}:{tag}", tar_path)
    tar_path.unlink()


def _busybox_entries() -> list[tuple]:
    if not BUSYBOX.exists():
        raise RuntimeError("busybox-static is not installed (apt-get install busybox-static)")
    entries: list[tuple] = [("dir", "bin", None), ("file", "bin/busybox", str(BUSYBOX), 0o755)]
    entries += [("sym", f"bin/{a}", "busybox") for a in BUSYBOX_APPLETS]
    entries += [("dir", "etc", None), ("file", "etc/hello", b"hello from pcocc\n")]
    entries += [("dir", "tmp", None, 0o1777), ("dir", "dev", None), ("dir", "proc", None)]
    return entries


def _busybox_expected() -> dict[str, bytes | str | None]:
    exp: dict[str, bytes | str | None] = {"bin/busybox": BUSYBOX.read_bytes()}
    exp.update({f"bin/{a}": "->busybox" for a in BUSYBOX_APPLETS})
    exp["etc/hello"] = b"hello from pcocc\n"
    return exp


def configure(layout: Path, tag: str, *, cmd: list[str], env: list[str] = ()) -> None:
    args: list[str] = ["config", "--image", f"{layout}:{tag}"]
    for c in cmd:
        args += ["--config.cmd", c]
    for e in env:
        args += ["--config.env", e]
    args += ["--config.workingdir", "/", "--author", "pcocc tests"]
    _umoci(*args)


def build_busybox(workdir: Path, tag: str = "busybox") -> TestImage:
    """A one-layer image with a static busybox and a few applet links."""
    layout = workdir / "layout"
    new_layout(layout, tag)
    add_layer(layout, tag, _busybox_entries(), workdir / "layers")
    configure(layout, tag, cmd=["/bin/sh"], env=["PCOCC_TEST=busybox"])
    return TestImage(f"oci:{layout}:{tag}", layout, tag, _busybox_expected())


def build_multilayer(
    workdir: Path, tag: str = "multi", *, extra_layers: int = 0, layer_size_bytes: int = 0
) -> TestImage:
    """busybox + layers with whiteouts (a deleted file, an opaque directory, a deleted dir).

    ``extra_layers`` layers of ``layer_size_bytes`` random bytes each can be added on top
    (benchmarks).
    """
    layout = workdir / "layout"
    new_layout(layout, tag)
    layers = workdir / "layers"
    base = _busybox_entries() + [
        ("dir", "data", None),
        ("file", "data/old1", b"old 1\n"),
        ("file", "data/old2", b"old 2\n"),
        ("dir", "data/sub", None),
        ("file", "data/sub/deep", b"deep\n"),
        ("file", "etc/gone", b"to be deleted\n"),
        ("dir", "var", None),
        ("dir", "var/cache", None),
        ("file", "var/cache/blob", b"cache\n"),
        ("dir", "ro", None, 0o555),
        ("file", "ro/file", b"in a read-only directory\n", 0o444),
    ]
    add_layer(layout, tag, base, layers)
    add_layer(
        layout,
        tag,
        [
            ("file", "etc/.wh.gone", b""),
            ("dir", "data", None),
            ("file", "data/.wh..wh..opq", b""),
            ("file", "data/new", b"new\n"),
            ("dir", "var", None),
            ("file", "var/.wh.cache", b""),
            ("file", "etc/added", b"added in layer 2\n", 0o600),
        ],
        layers,
    )
    add_layer(
        layout,
        tag,
        [
            ("dir", "data", None),
            ("file", "data/top", b"layer 3\n"),
            ("sym", "etc/hello-link", "hello"),
        ],
        layers,
    )
    for i in range(extra_layers):
        add_layer(
            layout,
            tag,
            [
                ("dir", "bulk", None),
                ("file", f"bulk/{i}.bin", os.urandom(layer_size_bytes)),
            ],
            layers,
        )
    configure(layout, tag, cmd=["/bin/cat", "/etc/hello"], env=["PCOCC_TEST=multi"])
    exp = _busybox_expected()
    exp.update(
        {
            "data/new": b"new\n",
            "data/top": b"layer 3\n",
            "etc/added": b"added in layer 2\n",
            "etc/hello-link": "->hello",
            "ro/file": b"in a read-only directory\n",
        }
    )
    absent = ["etc/gone", "data/old1", "data/old2", "data/sub", "var/cache"]
    return TestImage(f"oci:{layout}:{tag}", layout, tag, exp, absent)


def convert(image: TestImage, fmt: str, dest: str, *, tls_verify: bool = True) -> str:
    """Copy the image to ``fmt:dest`` with skopeo and return that reference."""
    ref = f"docker://{dest}" if fmt == "docker" else f"{fmt}:{dest}"
    argv = ["skopeo", "--insecure-policy", "copy", "--quiet"]
    if fmt == "docker":
        argv.append(f"--dest-tls-verify={'true' if tls_verify else 'false'}")
    proc.run([*argv, image.ref, ref], what=f"skopeo copy to {fmt}")
    return ref


def check_tree(rootfs: Path, image: TestImage) -> list[str]:
    """Differences between an unpacked rootfs and what ``image`` must contain ([] if none)."""
    problems = []
    for rel, want in image.expected.items():
        p = rootfs / rel
        if isinstance(want, str) and want.startswith("->"):
            if not p.is_symlink() or os.readlink(p) != want[2:]:
                problems.append(f"{rel}: expected a link to {want[2:]}")
        elif want is None:
            if not p.is_dir():
                problems.append(f"{rel}: expected a directory")
        elif not p.is_file() or p.is_symlink() or p.read_bytes() != want:
            problems.append(f"{rel}: content differs")
    for rel in image.absent:
        if os.path.lexists(rootfs / rel):
            problems.append(f"{rel}: should have been deleted by a whiteout")
    return problems


def tree_listing(rootfs: Path) -> dict[str, tuple[str, int, bytes | str]]:
    """Every path below rootfs -> (type, mode, content or link target), for comparisons."""
    out: dict[str, tuple[str, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(rootfs))
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("link", 0, os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777, b"")
            else:
                out[rel] = ("file", st.st_mode & 0o7777, p.read_bytes())
    return out


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class BlobDir:
    """A minimal stand-in for the repository store's ``add_blob`` (unit tests).

    Blobs live in ``root/<hex>``; adding checks the digest, dedups and renames. With
    ``hooks`` it also offers the optional ``has_blob``/``blob_path`` the drivers look for.
    """

    def __init__(self, root: Path, *, hooks: bool = True):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.added: list[str] = []  #: digests actually hashed by __call__
        if hooks:
            self.has_blob = self._has_blob
            self.blob_path = self.path

    def path(self, digest: str) -> Path:
        return self.root / digest.split(":", 1)[1]

    def _has_blob(self, digest: str) -> bool:
        return self.path(digest).exists()

    def digests(self) -> set[str]:
        return {f"sha256:{p.name}" for p in self.root.iterdir()}

    def __call__(self, path: Path, expected_digest: str | None = None) -> str:
        import hashlib

        from pcocc.errors import Corrupt

        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        digest = "sha256:" + h.hexdigest()
        if expected_digest is not None and digest != expected_digest:
            raise Corrupt(f"{path}: digest {digest}, expected {expected_digest}")
        self.added.append(digest)
        dst = self.path(digest)
        if dst.exists():
            path.unlink()
        else:
            os.chmod(path, 0o444)
            os.replace(path, dst)
        return digest


def build_sif(
    squashfs: Path,
    out: Path,
    *,
    arch: str = "02",
    with_deffile: bool = True,
    fs_type: int = 1,
    part_type: int = 2,
) -> Path:
    """Write a SIF file around a squashfs image, following the SIF format, no Singularity.

    Global header (128 bytes), a table of 4 descriptors of 585 bytes (an optional
    definition file, the system partition, two free slots), then the data objects.
    """
    import struct
    import time
    import uuid

    n_desc = 4
    desc_off = 128
    desc_size = n_desc * 585
    data_off = (desc_off + desc_size + 4095) // 4096 * 4096
    now = int(time.time())
    objects: list[tuple[int, bytes, bytes, str]] = []  # (type, data, extra, name)
    if with_deffile:
        objects.append((0x4001, b"Bootstrap: scratch\n", b"", "definition"))
    part_extra = struct.pack("<ii3s", fs_type, part_type, arch.encode())
    objects.append((0x4004, squashfs.read_bytes(), part_extra, "rootfs"))

    table = b""
    data = b""
    offset = data_off
    for i, (dtype, payload, extra, name) in enumerate(objects, start=1):
        pad = (-len(payload)) % 4096
        table += struct.pack(
            "<iBIIIqqqqqqq128s384s",
            dtype,
            1,
            i,
            0,
            0,
            offset,
            len(payload),
            len(payload) + pad,
            now,
            now,
            0,
            0,
            name.encode(),
            extra,
        )
        data += payload + b"\0" * pad
        offset += len(payload) + pad
    table += b"\0" * (desc_size - len(table))  # unused descriptors: used = 0
    header = struct.pack(
        "<32s10s3s3s16s8q",
        b"#!/usr/bin/env run-singularity\n",
        b"SIF_MAGIC\0",
        b"01\0",
        arch.encode() + b"\0",
        uuid.uuid4().bytes,
        now,
        now,
        n_desc - len(objects),
        n_desc,
        desc_off,
        desc_size,
        data_off,
        len(data),
    )
    out.write_bytes(header + table + b"\0" * (data_off - desc_off - desc_size) + data)
    return out


def make_squashfs(tree: Path, out: Path) -> Path:
    """mksquashfs a directory (squashfs-tools), reproducibly."""
    proc.run(
        [
            "mksquashfs",
            tree,
            out,
            "-noappend",
            "-no-progress",
            "-quiet",
            "-all-root",
            "-mkfs-time",
            "0",
            "-all-time",
            "0",
        ],
        what="mksquashfs",
    )
    return out
