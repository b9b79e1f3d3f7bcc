"""Host side of the ``vm`` container runtime: run an OCI bundle's app in a small QEMU VM.

``python -I -m pcocc.ctr.vmrun BUNDLE [VM-NAME]`` (what
:class:`pcocc.ctr.runtimes.vm.VmRuntime` starts) packs the bundle's rootfs and read-only
bind mounts as squashfs images, shares writable bind-mounted directories over virtio-fs
(a virtiofsd each, see :mod:`pcocc.vm.virtiofs`,
in our process group and stopped with the VM), writes the initramfs
of :mod:`pcocc.vm.stage1`, boots the host's cloud kernel under QEMU (accelerator chosen by
:mod:`pcocc.vm.accel`), and exits with the app's exit status. QEMU writes the app's stdout
and stderr into pipes of ours (file chardevs on /dev/fd/N of the pipes it inherits), which
we copy to our stdout and stderr: whatever those are (files of another owner, sockets),
QEMU never has to reopen them. Every file lives in a temporary directory
of the bundle, removed at the end; QEMU stays in our process group, so killing the group
(as the pod supervisor does) stops the VM too.

Exit status 125 means the VM could not run the app (the reason is printed on stderr).
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pcocc import proc
from pcocc.errors import PcoccError, UsageError
from pcocc.signals import Interrupted, raising_on_signals
from pcocc.vm import initramfs, stage1, virtiofs
from pcocc.vm.accel import resolve_accel
from pcocc.vm.qemu import VmSpec, build_argv

log = logging.getLogger(__name__)

#: exit status when the VM could not run the app at all
FAILED = 125
MEMORY_MIB = 256
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
#: mounts of the OCI spec that the guest provides itself
GUEST_MOUNTS = ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/tmp")


def find_static_busybox() -> Path:
    """A statically linked busybox of the host (it runs in the guest and in the container).

    :raise PcoccError: none found
    """
    for cand in BUSYBOX_CANDIDATES:
        try:
            with open(cand, "rb") as f:
                head = f.read(8192)
        except OSError:
            continue
        if head.startswith(b"\x7fELF") and b"ld-linux" not in head:
            return Path(cand)
    raise PcoccError(
        "the vm runtime needs a statically linked busybox",
        hint="install the Debian package 'busybox-static'",
    )


def bind_volumes(spec: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(host source, container target, read-only) of the spec's bind mounts.

    Read-only ones become snapshots; writable directories are shared over virtio-fs.

    :raise UsageError: a writable bind of a file (only directories can be shared)
    """
    out = []
    for m in spec.get("mounts") or ():
        dest = m.get("destination", "")
        if m.get("type") != "bind" or dest in GUEST_MOUNTS:
            continue
        readonly = "ro" in (m.get("options") or ())
        if not readonly and not Path(str(m.get("source"))).is_dir():
            raise UsageError(
                f"the vm runtime cannot mount {m.get('source')} read-write at {dest}: "
                "only directories can be shared read-write with the VM",
                hint="mount it read-only (readOnly=true): the VM gets a snapshot of it",
            )
        out.append((str(m["source"]), str(dest), readonly))
    return out


def squashfs_argv(source: Path, dest: Path) -> list[str]:
    """mksquashfs without compression: the image is read once, packing speed matters."""
    return ["mksquashfs", str(source), str(dest), "-noappend", "-quiet", "-no-progress",
            "-no-xattrs", "-noI", "-noD", "-noF", "-noX"]


def pack(source: Path, dest: Path) -> None:
    proc.run(squashfs_argv(source, dest), what=f"pack {source} for the VM")


def qemu_extra_args(tmp: Path, disks: Sequence[tuple[str, Path]], out_fd: int = 1,
                    err_fd: int = 2) -> list[str]:
    """Devices of the run: serial ports for stdout/stderr/status, one virtio disk per image.

    :param out_fd: QEMU's descriptor that receives the app's stdout (``err_fd``: stderr)
    """

    def esc(path: os.PathLike | str) -> str:
        return os.fspath(path).replace(",", ",,")

    args = ["-no-reboot", "-device", "virtio-serial-pci,id=pcoccser"]
    ports = [("out", f"/dev/fd/{out_fd}", stage1.PORT_STDOUT, True),
             ("err", f"/dev/fd/{err_fd}", stage1.PORT_STDERR, True),
             ("status", tmp / "status", stage1.PORT_STATUS, False)]
    for cid, path, name, append in ports:
        args += ["-chardev", f"file,id={cid},path={esc(path)}" + (",append=on" if append else ""),
                 "-device", f"virtserialport,bus=pcoccser.0,chardev={cid},name={name}"]
    for i, (serial, image) in enumerate(disks):
        args += ["-drive", f"file={esc(image)},format=raw,if=none,id=pd{i},readonly=on",
                 "-device", f"virtio-blk-pci,drive=pd{i},serial={serial}"]
    return args


def parse_status(text: str) -> int:
    """The app's exit status from the status port's ``exit N``.

    :raise PcoccError: ``fail MESSAGE`` or nothing (the VM died before reporting)
    """
    line = text.strip().splitlines()[-1] if text.strip() else ""
    word, _, rest = line.partition(" ")
    if word == "exit" and rest.strip().isdigit():
        return int(rest)
    if word == "fail":
        raise PcoccError(f"vm runtime: {rest.strip()}")
    raise PcoccError("vm runtime: the VM stopped without reporting the app's exit status")


def run_bundle(bundle: Path, name: str | None = None) -> int:
    """Run the app of ``bundle`` in a VM (named ``name``); returns its exit status."""
    spec = json.loads((bundle / "config.json").read_text())
    rootfs = Path(spec["root"]["path"])
    if not rootfs.is_absolute():
        rootfs = bundle / rootfs
    if not rootfs.is_dir():
        raise PcoccError(f"vm runtime: rootfs {rootfs} is not a directory")
    binds = bind_volumes(spec)
    volumes = []
    for i, (source, target, readonly) in enumerate(binds):
        is_file = not Path(source).is_dir()
        volumes.append(stage1.GuestVolume(f"pcocc-vol{i}", target,
                                          Path(source).name if is_file else None,
                                          shared=not readonly))
    shares = [virtiofs.Share(vol.serial, source)
              for vol, (source, _, _) in zip(volumes, binds) if vol.shared]
    virtiofsd = virtiofs.find_virtiofsd() if shares else ""
    app = stage1.guest_app(spec.get("process") or {},
                           readonly_rootfs=bool(spec["root"].get("readonly")), volumes=volumes,
                           hostname=str(spec.get("hostname") or "pcocc"))
    kernel, version = initramfs.find_kernel()
    moddir = Path("/lib/modules") / version
    busybox = find_static_busybox()
    accel = resolve_accel(None, warn=lambda msg: print(f"pcocc: warning: {msg}", file=sys.stderr))
    with tempfile.TemporaryDirectory(prefix=".vm-", dir=bundle) as tmpdir:
        tmp = Path(tmpdir)
        disks = [(stage1.ROOT_SERIAL, tmp / "rootfs.sqfs")]
        pack(rootfs, disks[0][1])
        for vol, (source, _, _) in zip(volumes, binds):
            if not vol.shared:
                disks.append((vol.serial, tmp / f"{vol.serial}.sqfs"))
                pack(Path(source), disks[-1][1])
        applets = proc.run([str(busybox), "--list"], what="list busybox applets").stdout.split()
        modules = stage1.module_files(moddir, initramfs.module_order(moddir, list(stage1.MODULES)))
        cpio = stage1.initramfs_contents(app, busybox=busybox.read_bytes(), applets=applets,
                                         modules=modules)
        cpio.write(tmp / "initrd.img")
        (tmp / "status").touch()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        vm = VmSpec(name=name or f"pcocc-ctr-{bundle.name}", accel=accel, memory_mib=MEMORY_MIB,
                    kernel=kernel, initrd=tmp / "initrd.img", append=stage1.kernel_cmdline(),
                    console_log=tmp / "console.log", network=False,
                    fs_shares=tuple((s.tag, Path(virtiofs.socket_name(i)))
                                    for i, s in enumerate(shares)),
                    custom_args=tuple(qemu_extra_args(tmp, disks, out_w, err_w)))
        servers = []
        try:
            servers = _start_shares(virtiofsd, shares, tmp)
            returncode = _run_qemu(build_argv(vm), {out_r: 1, err_r: 2}, (out_w, err_w),
                                   cwd=tmp)
        finally:
            for server in servers:
                proc.stop(server)
        try:
            return parse_status((tmp / "status").read_text(errors="replace"))
        except PcoccError as err:
            tail = _tail(tmp / "console.log")
            raise PcoccError(
                f"{err} (QEMU exit status {returncode})" + (f"; console: {tail}" if tail else "")
            ) from None


def _start_shares(binary: str, shares: Sequence[virtiofs.Share],
                  tmp: Path) -> list[proc.Popen]:
    """A virtiofsd per share, on ``fsN.sock`` of ``tmp``, in our process group."""
    servers: list[proc.Popen] = []
    dir_fd = os.open(tmp, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for index, share in enumerate(shares):
            name = virtiofs.socket_name(index)
            # sockaddr_un holds 108 bytes: go through our descriptor of the directory
            path = f"/proc/self/fd/{dir_fd}/{name}"
            servers.append(virtiofs.start_virtiofsd(
                binary, share, path, tmp / virtiofs.log_name(index), new_session=False))
    except BaseException:
        for server in servers:
            proc.stop(server)
        raise
    finally:
        os.close(dir_fd)
    return servers


def _run_qemu(argv: list[str], copies: dict[int, int], child_fds: Sequence[int],
              cwd: Path | None = None) -> int:
    """Run QEMU in our process group, copying its output pipes to our descriptors.

    :param copies: read end of a pipe -> where to copy it (closed here)
    :param child_fds: the write ends QEMU inherits (closed here once it has them)
    """
    setpriv = shutil.which("setpriv")
    if setpriv:  # QEMU dies with us even if we are killed alone (SIGKILL, OOM killer)
        argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
    try:
        qemu = proc.spawn(argv, stdin=proc.DEVNULL, stdout=None, stderr=None,
                          new_session=False, pass_fds=child_fds, cwd=cwd)
    finally:
        for fd in child_fds:
            os.close(fd)
    try:
        _copy_until_eof(copies)
        return qemu.wait()
    except BaseException:
        qemu.kill()
        qemu.wait()
        raise
    finally:
        for fd in copies:
            os.close(fd)


def _copy_until_eof(copies: dict[int, int]) -> None:
    """Copy each source descriptor to its destination until every source is at EOF."""
    sel = selectors.DefaultSelector()
    for src, dest in copies.items():
        sel.register(src, selectors.EVENT_READ, dest)
    broken: set[int] = set()
    try:
        while sel.get_map():
            for key, _ in sel.select():
                data = os.read(key.fd, 65536)
                if not data:
                    sel.unregister(key.fd)
                elif key.data not in broken:
                    try:
                        _write_all(key.data, data)
                    except OSError:  # the reader went away: keep draining, drop the data
                        broken.add(key.data)
    finally:
        sel.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (1, 2):
        print("usage: python -m pcocc.ctr.vmrun BUNDLE [VM-NAME]", file=sys.stderr)
        return 2

    try:
        with raising_on_signals():
            return run_bundle(Path(args[0]).resolve(), args[1] if len(args) > 1 else None)
    except Interrupted as term:
        return term.exit_status
    except PcoccError as err:
        print(f"pcocc: error: {err}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
