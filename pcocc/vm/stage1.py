"""The guest side of the ``vm`` container runtime: a tiny initramfs that runs one app.

Like rkt's KVM stage 1, the container runs in its own VM booted from the host's Debian cloud
kernel. The host packs the container rootfs (and each read-only volume) as squashfs images
attached as virtio disks, known in the guest by their serial number. The initramfs /init:

1. loads the virtio, squashfs and overlay modules (the cloud kernel has them as modules);
2. mounts the rootfs image under a tmpfs overlay (writes stay in the VM's memory), with
   /proc, /sys, /dev, /dev/pts, /dev/shm, a private /tmp and the volumes; makes the overlay
   read-only when the OCI spec asks for a read-only root;
3. chroots into it and runs stage 2 (busybox sh from a hidden directory of /tmp, which it
   deletes first): change to the app's cwd, set exactly the app's environment, exec the app
   with stdin from /dev/null and stdout/stderr on the virtio-serial ports ``pcocc.stdout``
   and ``pcocc.stderr``;
4. writes ``exit N`` (or ``fail MESSAGE``) on the ``pcocc.status`` port and reboots, which
   ends QEMU (``-no-reboot``).

Read-only volumes are snapshots taken at start (squashfs disks); writable directory volumes
are shared with the host over virtio-fs (one virtiofsd each, tag = the volume's serial). The
kernel has no 9p. The app runs as root of the VM: the VM is the isolation boundary.

Everything here is pure (text and cpio contents); :mod:`pcocc.ctr.vmrun` does the I/O.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pcocc.errors import UsageError
from pcocc.vm.initramfs import Cpio

#: Kernel modules the guest loads (with their dependencies, which module_order adds).
MODULES = ("virtio_pci", "virtio_blk", "virtio_console", "squashfs", "overlay", "fuse",
           "virtiofs")

#: virtio-serial port names
PORT_STDOUT = "pcocc.stdout"
PORT_STDERR = "pcocc.stderr"
PORT_STATUS = "pcocc.status"

#: serial number of the rootfs disk; volumes are ``pcocc-vol<N>``
ROOT_SERIAL = "pcocc-root"

#: where stage 2 and its busybox sit inside the container until stage 2 deletes them
STAGE2_DIR = "/tmp/.pcocc-stage2"

#: ``acpi=off`` roughly halves the boot under TCG; the guest stops with ``reboot -f``, which
#: QEMU's ``-no-reboot`` turns into an exit.
BASE_CMDLINE = ("console=ttyS0", "quiet", "panic=-1", "acpi=off", "rdinit=/init")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class GuestVolume:
    """A host path packed as a squashfs disk, mounted read-only at ``target``; or, when
    ``shared``, a host directory mounted read-write over virtio-fs (``serial`` is its tag)."""

    serial: str
    target: str
    #: for a file: its name inside the image (the image holds just that file); None: a dir
    file_name: str | None = None
    shared: bool = False


@dataclass(frozen=True)
class GuestApp:
    """What stage 2 runs: the OCI ``process`` of the bundle and its mounts."""

    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    cwd: str = "/"
    readonly_rootfs: bool = True
    volumes: tuple[GuestVolume, ...] = ()
    hostname: str = "pcocc"


def kernel_cmdline(extra: Sequence[str] = ()) -> str:
    """The guest kernel command line; ``extra`` words are checked and appended."""
    for word in extra:
        if not word or any(c.isspace() for c in word):
            raise UsageError(f"kernel command line word {word!r} must be non-empty, no blanks")
    return " ".join([*BASE_CMDLINE, *extra])


def guest_app(process: Mapping, *, readonly_rootfs: bool = True,
              volumes: Sequence[GuestVolume] = (), hostname: str = "pcocc") -> GuestApp:
    """A :class:`GuestApp` from the ``process`` object of an OCI config.json.

    :raise UsageError: no args, a relative cwd, or an environment entry without a valid name
    """
    args = tuple(str(a) for a in process.get("args") or ())
    if not args:
        raise UsageError("the container's process has no args")
    env = []
    for entry in process.get("env") or ():
        name, sep, value = str(entry).partition("=")
        if not sep or not _ENV_NAME.match(name):
            raise UsageError(f"environment entry {entry!r} is not NAME=VALUE",
                             hint="names are letters, digits and underscores")
        env.append((name, value))
    cwd = str(process.get("cwd") or "/")
    if not cwd.startswith("/"):
        raise UsageError(f"the container's cwd {cwd!r} is not an absolute path")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$", hostname):
        raise UsageError(f"hostname {hostname!r} is not a valid host name")
    return GuestApp(args, tuple(env), cwd, readonly_rootfs, tuple(volumes), hostname)


def stage2_script(app: GuestApp) -> str:
    """The sh script that runs inside the container's root (see the module docstring)."""
    q = shlex.quote
    lines = [
        "# pcocc vm runtime, stage 2: runs in the container's root",
        f"{STAGE2_DIR}/busybox rm -rf {STAGE2_DIR}",
        f"cd {q(app.cwd)} || exit 126",
        "unset PWD OLDPWD SHLVL",
    ]
    lines += [f"export {q(f'{k}={v}')}" for k, v in app.env]
    arg0 = q(app.args[0])
    lines.append(f"command -v {arg0} >/dev/null || "
                 f"{{ echo {q(f'pcocc: {app.args[0]}: command not found in the container')} >&2; "
                 "exit 127; }")
    lines.append("exec " + " ".join(q(a) for a in app.args))
    return "\n".join(lines) + "\n"


def volumes_table(volumes: Sequence[GuestVolume]) -> str:
    """``serial<TAB>target<TAB>file-name-or-dash<TAB>squashfs|virtiofs`` lines that /init
    reads."""
    out = []
    for v in volumes:
        for text in (v.serial, v.target, v.file_name or "-"):
            if any(c in text for c in "\t\n\0") or not text:
                raise UsageError(f"volume path {text!r} contains a tab or a newline")
        if not v.target.startswith("/"):
            raise UsageError(f"volume target {v.target!r} is not an absolute path")
        if v.shared and v.file_name:
            raise UsageError(f"volume {v.target!r}: only directories can be shared")
        kind = "virtiofs" if v.shared else "squashfs"
        out.append(f"{v.serial}\t{v.target}\t{v.file_name or '-'}\t{kind}\n")
    return "".join(out)


INIT_SCRIPT = r"""#!/bin/sh
# pcocc vm runtime, stage 1 (/init of the initramfs). See pcocc/vm/stage1.py.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
status_port=""
say() { echo "pcocc-stage1: $*"; }
finish() {
    [ -n "$status_port" ] && echo "$1" > "$status_port"
    say "$1"
    sync
    reboot -f
    sleep 10
}
fail() { finish "fail $*"; }
while read -r mod; do
    insmod "/lib/modules/$mod.ko" || say "insmod $mod failed"
done < /etc/pcocc/modules

port_of() {
    for p in /sys/class/virtio-ports/*; do
        [ "$(cat "$p/name" 2>/dev/null)" = "$1" ] && [ -c "/dev/${p##*/}" ] \
            && { echo "/dev/${p##*/}"; return; }
    done
}
disk_of() {
    for d in /sys/block/vd*; do
        [ "$(cat "$d/serial" 2>/dev/null)" = "$1" ] && [ -b "/dev/${d##*/}" ] \
            && { echo "/dev/${d##*/}"; return; }
    done
}
for try in $(seq 100); do
    status_port=$(port_of @PORT_STATUS@)
    out_port=$(port_of @PORT_STDOUT@)
    err_port=$(port_of @PORT_STDERR@)
    root_dev=$(disk_of @ROOT_SERIAL@)
    [ -n "$status_port" ] && [ -n "$out_port" ] && [ -n "$err_port" ] && [ -n "$root_dev" ] && break
    sleep 0.05
done
[ -n "$status_port" ] || fail "no virtio-serial port @PORT_STATUS@"
[ -n "$out_port" ] && [ -n "$err_port" ] || fail "no virtio-serial ports for stdout/stderr"
[ -n "$root_dev" ] || fail "no rootfs disk (serial @ROOT_SERIAL@)"

hostname "$(cat /etc/pcocc/hostname)"
mkdir -p /lower /upper /newroot /vols
mount -t squashfs -o ro "$root_dev" /lower || fail "cannot mount the rootfs image"
mount -t tmpfs -o mode=755 tmpfs /upper && mkdir -p /upper/data /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay /newroot \
    || fail "cannot mount the rootfs overlay"
R=/newroot
mkdir -p $R/proc $R/sys $R/dev $R/tmp
mount -t proc -o nosuid,noexec,nodev proc $R/proc
mount -t sysfs -o ro,nosuid,noexec,nodev sysfs $R/sys
mount -t devtmpfs -o nosuid devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o nosuid,noexec,newinstance,ptmxmode=0666,mode=0620 devpts $R/dev/pts
mount -t tmpfs -o nosuid,nodev,mode=1777 shm $R/dev/shm
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs $R/tmp

tab=$(printf '\t')
while IFS="$tab" read -r serial target file kind; do
    if [ "$kind" = virtiofs ]; then
        mkdir -p "$R$target" && mount -t virtiofs "$serial" "$R$target" \
            || fail "cannot mount the shared volume $target"
        continue
    fi
    dev=$(disk_of "$serial")
    [ -n "$dev" ] || fail "no disk for volume $target"
    mkdir -p "/vols/$serial"
    mount -t squashfs -o ro "$dev" "/vols/$serial" || fail "cannot mount volume $target"
    if [ "$file" = - ]; then
        mkdir -p "$R$target" && mount --bind "/vols/$serial" "$R$target"
    else
        mkdir -p "$(dirname "$R$target")" && touch "$R$target" \
            && mount --bind "/vols/$serial/$file" "$R$target"
    fi || fail "cannot mount volume $target"
done < /etc/pcocc/volumes

mkdir -p $R@STAGE2_DIR@
cp /bin/busybox /etc/pcocc/stage2 $R@STAGE2_DIR@/
if [ -f /etc/pcocc/readonly ]; then
    mount -o remount,ro $R || fail "cannot make the rootfs read-only"
fi
env -i chroot $R @STAGE2_DIR@/busybox sh @STAGE2_DIR@/stage2 \
    < /dev/null > "$out_port" 2> "$err_port"
finish "exit $?"
"""


def init_script() -> str:
    """The /init of the initramfs, with this module's names filled in."""
    text = INIT_SCRIPT
    for key, value in (("PORT_STATUS", PORT_STATUS), ("PORT_STDOUT", PORT_STDOUT),
                       ("PORT_STDERR", PORT_STDERR), ("ROOT_SERIAL", ROOT_SERIAL),
                       ("STAGE2_DIR", STAGE2_DIR)):
        text = text.replace(f"@{key}@", value)
    return text


def initramfs_contents(app: GuestApp, *, busybox: bytes, applets: Sequence[str],
                       modules: Mapping[str, bytes]) -> Cpio:
    """The initramfs of one run of ``app``.

    :param busybox: a static busybox binary
    :param applets: its applet names (links in /bin)
    :param modules: module file name (without .ko) -> content, in load order
    """
    cpio = Cpio()
    for d in ("dev", "proc", "sys", "tmp", "etc/pcocc", "lib/modules"):
        cpio.add_dir(d)
    cpio.add_file("bin/busybox", busybox, 0o755)
    for applet in applets:
        if applet != "busybox":
            cpio.add_symlink(f"bin/{applet}", "busybox")
    cpio.add_symlink("sbin", "bin")
    for name, data in modules.items():
        cpio.add_file(f"lib/modules/{name}.ko", data)
    cpio.add_file("etc/pcocc/modules", "".join(f"{n}\n" for n in modules).encode())
    cpio.add_file("etc/pcocc/volumes", volumes_table(app.volumes).encode())
    cpio.add_file("etc/pcocc/stage2", stage2_script(app).encode(), 0o755)
    if app.readonly_rootfs:
        cpio.add_file("etc/pcocc/readonly", b"")
    cpio.add_file("etc/pcocc/hostname", f"{app.hostname}\n".encode())
    cpio.add_file("init", init_script().encode(), 0o755)
    return cpio


def module_files(moddir: Path, ordered: Sequence[str]) -> dict[str, bytes]:
    """Module contents keyed by file name, from :func:`pcocc.vm.initramfs.module_order`."""
    return {Path(rel).name: (moddir / f"{rel}.ko").read_bytes() for rel in ordered}
