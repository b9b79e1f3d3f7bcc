"""Safe layer extraction: malicious archives are refused, whiteouts are applied."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from pcocc.errors import Corrupt
from pcocc.repo.unpack import UnsafeLayer, apply_layer
from tests.nonroot import readable_pcocc



def make_layer(path: Path, entries: list[tuple], *, compress: str = "") -> Path:
    """Write a tar layer. entries: (type, name[, data_or_linkname[, mode]])."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            kind, name = entry[0], entry[1]
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            data = b""
            if kind == "file":
                data = entry[2] if len(entry) > 2 else b""
                info.size = len(data)
                info.mode = entry[3] if len(entry) > 3 else 0o644
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = entry[2] if len(entry) > 2 else 0o755
            elif kind == "sym":
                info.type = tarfile.SYMTYPE
                info.linkname = entry[2]
            elif kind == "hard":
                info.type = tarfile.LNKTYPE
                info.linkname = entry[2]
            elif kind == "chr":
                info.type = tarfile.CHRTYPE
                info.devmajor, info.devminor = 1, 3
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tar.addfile(info, io.BytesIO(data) if kind == "file" else None)
    raw = buf.getvalue()
    if compress == "gzip":
        raw = gzip.compress(raw)
    elif compress == "zstd":
        raw = subprocess.run(
            ["zstd", "-c", "-q"], input=raw, stdout=subprocess.PIPE, check=True
        ).stdout
    path.write_bytes(raw)
    return path


@pytest.fixture
def box(tmp_path):
    """A rootfs inside a parent that also holds a 'victim' directory outside the rootfs."""
    parent = tmp_path / "parent"
    rootfs = parent / "rootfs"
    victim = parent / "victim"
    rootfs.mkdir(parents=True)
    victim.mkdir()
    (victim / "secret").write_text("keep me")
    return rootfs, victim, tmp_path


def outside_untouched(victim: Path, tmp_path: Path) -> None:
    assert sorted(p.name for p in victim.iterdir()) == ["secret"]
    assert (victim / "secret").read_text() == "keep me"
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("compress", ["", "gzip", "zstd"])
def test_regular_layer_is_extracted(box, compress):
    rootfs, _victim, tmp = box
    if compress == "zstd" and not shutil.which("zstd"):
        pytest.skip("zstd not installed")
    layer = make_layer(
        tmp / "l.tar",
        [
            ("dir", "etc"),
            ("file", "etc/hostname", b"box\n", 0o600),
            ("sym", "etc/alias", "hostname"),
            ("hard", "etc/hard", "etc/hostname"),
            ("fifo", "run.fifo"),
            ("file", "./usr/bin/tool", b"#!/bin/sh\n", 0o755),
        ],
        compress=compress,
    )
    apply_layer(layer, rootfs)
    assert (rootfs / "etc/hostname").read_bytes() == b"box\n"
    assert (rootfs / "etc/hostname").stat().st_mode & 0o777 == 0o600
    assert os.readlink(rootfs / "etc/alias") == "hostname"
    assert (rootfs / "etc/hard").stat().st_ino == (rootfs / "etc/hostname").stat().st_ino
    assert (rootfs / "usr/bin/tool").stat().st_mode & 0o777 == 0o755
    assert (rootfs / "run.fifo").is_fifo()


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/evil", "/tmp/evil"])
def test_path_escapes_are_refused(box, name):
    rootfs, victim, tmp = box
    layer = make_layer(tmp / "l.tar", [("file", name, b"x")])
    with pytest.raises(UnsafeLayer, match=r"l\.tar: member .*(absolute|\.\.)"):
        apply_layer(layer, rootfs)
    outside_untouched(victim, tmp)


def test_symlink_then_write_in_same_layer_is_refused(box):
    rootfs, victim, tmp = box
    for target in ("../victim", str(victim), "."):
        layer = make_layer(tmp / "l.tar", [("sym", "esc", target), ("file", "esc/secret", b"pwn")])
        with pytest.raises(UnsafeLayer, match="symbolic link 'esc' created by the same layer"):
            apply_layer(layer, rootfs, name="layer 3")
        outside_untouched(victim, tmp)
        (rootfs / "esc").unlink()


def test_symlink_replaced_in_layer_is_not_followed(box):
    """A path resolved through a lower-layer link must be re-checked once the link changes."""
    rootfs, victim, tmp = box
    apply_layer(make_layer(tmp / "1.tar", [("dir", "x/b"), ("sym", "a", "x")]), rootfs)
    layer = make_layer(
        tmp / "2.tar",
        [
            ("file", "a/b/f1", b"1"),
            ("sym", "a", "../victim"),
            ("file", "a/b/f2", b"2"),
        ],
    )
    with pytest.raises(UnsafeLayer, match="symbolic link 'a' created by the same layer"):
        apply_layer(layer, rootfs)
    assert (rootfs / "x/b/f1").read_bytes() == b"1"
    assert not (rootfs / "x/b/f2").exists()
    outside_untouched(victim, tmp)


def test_symlink_from_lower_layer_stays_inside_root(box):
    rootfs, victim, tmp = box
    apply_layer(
        make_layer(
            tmp / "1.tar",
            [
                ("sym", "abs", str(victim)),
                ("sym", "rel", "../../../victim"),
                ("dir", "usr/lib"),
                ("sym", "lib", "usr/lib"),
            ],
        ),
        rootfs,
    )
    apply_layer(
        make_layer(
            tmp / "2.tar",
            [
                ("file", "abs/secret", b"in root 1"),
                ("file", "rel/secret", b"in root 2"),
                ("file", "lib/libc.so", b"elf"),
            ],
        ),
        rootfs,
    )
    outside_untouched(victim, tmp)
    # Absolute and climbing links resolve as if the rootfs were '/'.
    assert (rootfs / str(victim).lstrip("/") / "secret").read_bytes() == b"in root 1"
    assert (rootfs / "victim/secret").read_bytes() == b"in root 2"
    assert (rootfs / "usr/lib/libc.so").read_bytes() == b"elf"


def test_file_replacing_a_symlink_does_not_write_through_it(box):
    rootfs, victim, tmp = box
    apply_layer(make_layer(tmp / "1.tar", [("sym", "secret", "../victim/secret")]), rootfs)
    apply_layer(make_layer(tmp / "2.tar", [("file", "secret", b"new")]), rootfs)
    outside_untouched(victim, tmp)
    assert not (rootfs / "secret").is_symlink()
    assert (rootfs / "secret").read_bytes() == b"new"


@pytest.mark.parametrize("linkname", ["../victim/secret", "/etc/passwd", "a/../../victim/secret"])
def test_hardlink_escapes_are_refused(box, linkname):
    rootfs, victim, tmp = box
    layer = make_layer(tmp / "l.tar", [("hard", "stolen", linkname)])
    with pytest.raises(UnsafeLayer, match="hard link target of 'stolen'"):
        apply_layer(layer, rootfs)
    assert not (rootfs / "stolen").exists()
    outside_untouched(victim, tmp)


def test_hardlink_through_lower_symlink_stays_inside(box):
    rootfs, victim, tmp = box
    apply_layer(make_layer(tmp / "1.tar", [("sym", "esc", "../victim")]), rootfs)
    with pytest.raises(UnsafeLayer, match="does not exist"):
        apply_layer(make_layer(tmp / "2.tar", [("hard", "stolen", "esc/secret")]), rootfs)
    outside_untouched(victim, tmp)


def test_hardlink_to_missing_target_is_refused(box):
    rootfs, _victim, tmp = box
    with pytest.raises(UnsafeLayer, match="'nope', which does not exist"):
        apply_layer(make_layer(tmp / "l.tar", [("hard", "x", "nope")]), rootfs)


def test_device_nodes_are_skipped_with_a_warning(box, caplog):
    rootfs, _victim, tmp = box
    layer = make_layer(tmp / "l.tar", [("dir", "dev"), ("chr", "dev/null"), ("file", "ok", b"1")])
    skipped = apply_layer(layer, rootfs, name="layer 0")
    assert skipped == ["layer 0: dev/null"]
    assert not (rootfs / "dev/null").exists()
    assert (rootfs / "ok").read_bytes() == b"1"
    assert "skipping device node 'dev/null'" in caplog.text


NONROOT_SCRIPT = """
import sys
from pathlib import Path
from pcocc.errors import PcoccError
from pcocc.repo.unpack import apply_layer
try:
    print(apply_layer(Path(sys.argv[1]), Path(sys.argv[2]), name="layer 7"))
except PcoccError as err:
    print("ERROR", err)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to a throwaway user")
def test_non_root_user(tmp_path_factory):
    """As an unprivileged user: devices skipped, escapes refused, read-only dirs handled."""
    tmp_path = Path(tempfile.mkdtemp(prefix="pcocc-nonroot-"))  # pytest's tmp is root-only
    try:
        _check_non_root(tmp_path)
    finally:
        shutil.rmtree(tmp_path)


def _check_non_root(tmp_path: Path) -> None:
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) not installed")
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 that an unprivileged user can run")
    tmp_path.chmod(0o755)
    pysrc = readable_pcocc(tmp_path)
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    os.chown(rootfs, 65534, 65534)
    good = make_layer(
        tmp_path / "good.tar",
        [
            ("dir", "ro", 0o555),
            ("file", "ro/f", b"1"),
            ("chr", "ro/null"),
        ],
    )
    bad = make_layer(tmp_path / "bad.tar", [("sym", "e", "/"), ("file", "e/x", b"1")])
    for layer in (good, bad):
        layer.chmod(0o644)

    def run(layer: Path) -> str:
        out = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                python,
                "-c",
                NONROOT_SCRIPT,
                str(layer),
                str(rootfs),
            ],
            capture_output=True,
            text=True,
            check=False,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(pysrc)},
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert run(good) == "['layer 7: ro/null']"
    assert (rootfs / "ro/f").read_bytes() == b"1"
    assert (rootfs / "ro/f").stat().st_uid == 65534
    assert "created by the same layer" in run(bad)
    assert not (rootfs / "x").exists()


def test_whiteouts_across_layers(box):
    rootfs, victim, tmp = box
    apply_layer(
        make_layer(
            tmp / "1.tar",
            [
                ("file", "a", b"a"),
                ("file", "keep", b"k"),
                ("dir", "d"),
                ("file", "d/x", b"x"),
                ("dir", "opq"),
                ("file", "opq/old1", b"1"),
                ("dir", "opq/sub"),
                ("file", "opq/sub/y", b""),
                ("sym", "link", "d"),
            ],
        ),
        rootfs,
    )
    apply_layer(
        make_layer(
            tmp / "2.tar",
            [
                ("file", ".wh.a"),
                ("file", ".wh.d"),
                ("file", ".wh.link"),
                ("file", "opq/new", b"n"),
                ("file", "opq/.wh..wh..opq"),
                ("file", "opq/.wh.sub"),
                ("file", ".wh.nothing-there"),
            ],
        ),
        rootfs,
    )
    assert sorted(p.name for p in rootfs.iterdir()) == ["keep", "opq"]
    assert sorted(p.name for p in (rootfs / "opq").iterdir()) == ["new"]
    # A later layer may re-create a deleted path.
    apply_layer(make_layer(tmp / "3.tar", [("file", "a", b"again")]), rootfs)
    assert (rootfs / "a").read_bytes() == b"again"
    outside_untouched(victim, tmp)


def test_whiteout_does_not_delete_same_layer_entry(box):
    rootfs, _victim, tmp = box
    apply_layer(make_layer(tmp / "1.tar", [("dir", "d"), ("file", "d/lower", b"")]), rootfs)
    apply_layer(
        make_layer(
            tmp / "2.tar",
            [
                ("dir", "d"),
                ("file", "d/upper", b"u"),
                ("file", "d/.wh..wh..opq"),
            ],
        ),
        rootfs,
    )
    assert sorted(p.name for p in (rootfs / "d").iterdir()) == ["upper"]


def test_whiteout_cannot_escape(box):
    rootfs, victim, tmp = box
    with pytest.raises(UnsafeLayer):
        apply_layer(make_layer(tmp / "l.tar", [("file", "../victim/.wh.secret")]), rootfs)
    apply_layer(make_layer(tmp / "1.tar", [("sym", "v", "../victim")]), rootfs)
    apply_layer(make_layer(tmp / "2.tar", [("file", "v/.wh.secret")]), rootfs)
    outside_untouched(victim, tmp)


def test_type_changes_between_layers(box):
    rootfs, _victim, tmp = box
    apply_layer(make_layer(tmp / "1.tar", [("dir", "x"), ("file", "x/f"), ("file", "y")]), rootfs)
    apply_layer(make_layer(tmp / "2.tar", [("file", "x", b"now a file"), ("dir", "y")]), rootfs)
    assert (rootfs / "x").read_bytes() == b"now a file"
    assert (rootfs / "y").is_dir()


def test_garbage_is_a_clear_error(box):
    rootfs, _victim, tmp = box
    bad = tmp / "garbage"
    bad.write_bytes(b"\x1f\x8b" + os.urandom(2000))
    with pytest.raises(Corrupt, match="garbage"):
        apply_layer(bad, rootfs)


@pytest.mark.parametrize(
    "mode, is_dir, expected",
    [
        (0o4755, False, 0o755),  # setuid
        (0o2755, False, 0o755),  # setgid
        (0o6777, False, 0o755),  # both, and group/other write
        (0o1644, False, 0o644),  # sticky file
        (0o777, False, 0o755),
        (0o2775, True, 0o775 & ~0o020),  # setgid dir
        (0o1777, True, 0o1755),  # sticky dir keeps its sticky bit
        (0o000, True, 0o700),  # the unpacker must be able to fill it
        (0o640, False, 0o640),
        (0o100755, False, 0o755),  # file type bits dropped
    ],
)
def test_safe_mode_as_non_root(mode, is_dir, expected):
    from pcocc.repo.unpack import safe_mode

    assert safe_mode(mode, is_dir=is_dir, is_root=False) == expected


def test_safe_mode_as_root_keeps_the_layers_mode():
    from pcocc.repo.unpack import safe_mode

    assert safe_mode(0o4755, is_dir=False, is_root=True) == 0o4755
    assert safe_mode(0o2777, is_dir=True, is_root=True) == 0o2777
