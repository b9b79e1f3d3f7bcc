#!/usr/bin/env python3
"""Build the small x86_64 test VM of pcocc from Debian packages installed on this host.

Usage: build_testvm.py OUTDIR   (prints the manifest as JSON)

OUTDIR receives:
  vmlinuz      Debian's cloud kernel, for direct boot (-kernel)
  initrd.img   a busybox initramfs (uncompressed newc cpio) whose /init loads the virtio
               modules, configures eth0, mounts the seed, sets the hostname, installs
               authorized_keys and the host key, starts dropbear on port 22 and qemu-ga on
               the org.qemu.guest_agent.0 port, mounts the virtio-fs shares listed in the
               seed's pcocc/mounts, and runs user-data when it is a script
  disk.qcow2   a tiny ext2 disk holding /etc/os-release, to import into a repository
  manifest.json what was built, from which inputs, and the kernel command line to use

The seed the initramfs reads (see pcocc/vm/seed.py) is a NoCloud-style iso9660 image with
volume id 'cidata' attached as a virtio disk (mounting it needs only cdrom + isofs, which is
faster than an emulated CD drive): meta-data (local-hostname), user-data, and pcocc/
authorized_keys and pcocc/ssh_host_ed25519_key (OpenSSH format).

Builds are cached by content: the digest of every input (kernel, modules, binaries, their
libraries, the init script and this file) is kept in the manifest; a build with the same
inputs returns at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pcocc import proc
from pcocc.errors import PcoccError
from pcocc.vm import initramfs
from pcocc.vm.initramfs import Cpio, find_kernel, module_order

HERE = Path(__file__).resolve().parent
INIT_SCRIPT = HERE / "testvm_init.sh"

#: Modules we need, loaded with their dependencies first (order from modules.dep).
#: The order virtio_ring, virtio, virtio_pci_modern_dev, virtio_pci_legacy_dev, virtio_pci,
#: failover, net_failover, virtio_net is what the kernel needs; modules.dep yields it.
#: fuse then virtiofs mount the host directories that ``pcocc alloc --mount`` shares.
WANTED_MODULES = ["virtio_pci", "virtio_net", "virtio_console", "virtio_blk", "isofs",
                  "fuse", "virtiofs"]

#: Kernels the test VM boots: Debian's cloud kernel (the default), or the generic one with
#: its 9p modules (the cloud kernel has no CONFIG_NET_9P) for the virtio-9p tests, whose
#: guests mount by hand: mount -t 9p -o trans=virtio,version=9p2000.L TAG DIR.
#: flavour -> (kernel glob, modules wanted besides WANTED_MODULES)
FLAVOURS = {
    "cloud": (initramfs.KERNEL_GLOB, []),
    "generic": ("/boot/vmlinuz-*[0-9]-amd64", ["9pnet_virtio", "9p"]),
}

#: Programs copied into the initramfs with the libraries ldd lists.
BINARIES = {
    "dropbear": "/usr/sbin/dropbear",
    "dropbearkey": "/usr/bin/dropbearkey",
    "dropbearconvert": "/usr/bin/dropbearconvert",
}
OPTIONAL_BINARIES = {"qemu-ga": "/usr/sbin/qemu-ga"}
BUSYBOX = "/bin/busybox"

#: Kernel command line for the test VM (console on the first serial port).
APPEND = "console=ttyS0 quiet panic=-1 rdinit=/init"

OS_RELEASE = """\
PRETTY_NAME="pcocc test VM"
NAME="pcocc-testvm"
ID=pcocc-testvm
VERSION_ID=1
"""

INITTAB = """\
::respawn:-/bin/sh
::ctrlaltdel:/bin/reboot
::shutdown:/bin/umount -a -r
"""

UDHCPC_SCRIPT = """\
#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via ${router%% *}
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done ;;
esac
"""


def shared_libraries(binary: str) -> list[str]:
    """Paths of the shared libraries ``binary`` loads (including the dynamic loader)."""
    out = proc.run(["ldd", binary], what=f"list the libraries of {binary}").stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)", line)
        if m:
            libs.append(m.group(1))
    return libs


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def collect_inputs(kernel: Path, moddir: Path, modules: list[str]) -> dict[str, str]:
    """Every input file -> its digest; the cache key is computed from this."""
    files = [str(kernel), BUSYBOX, str(INIT_SCRIPT), __file__, initramfs.__file__]
    files += [str(moddir / f"{m}.ko") for m in modules]
    for binary in [*BINARIES.values(), *_present(OPTIONAL_BINARIES).values()]:
        files.append(binary)
        files += shared_libraries(binary)
    return {f: file_digest(f) for f in sorted(set(files))}


def _present(binaries: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in binaries.items() if os.path.exists(v)}


def build_initramfs(dest: Path, moddir: Path, modules: list[str]) -> None:
    cpio = Cpio()
    for d in ("bin", "dev", "proc", "sys", "tmp", "run", "seed", "disk", "root", "var/log",
              "etc/dropbear", "etc/testvm", "lib/modules"):
        cpio.add_dir(d)
    cpio.add_symlink("sbin", "bin")
    cpio.add_symlink("usr/bin", "../bin")
    cpio.add_symlink("usr/sbin", "../bin")
    cpio.add_symlink("var/run", "../run")
    cpio.add_file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
    applets = proc.run([BUSYBOX, "--list"]).stdout.split()
    for applet in applets:
        if applet != "busybox":
            cpio.add_symlink(f"bin/{applet}", "busybox")
    libs: set[str] = set()
    for name, path in [*BINARIES.items(), *_present(OPTIONAL_BINARIES).items()]:
        cpio.add_file(f"bin/{name}", Path(path).read_bytes(), 0o755)
        libs.update(shared_libraries(path))
    for lib in sorted(libs):
        cpio.add_file(lib, Path(lib).read_bytes(), 0o755)
    for mod in modules:
        name = Path(mod).name
        cpio.add_file(f"lib/modules/{name}.ko", (moddir / f"{mod}.ko").read_bytes())
    cpio.add_file(
        "etc/testvm/modules", "".join(f"{Path(m).name}\n" for m in modules).encode()
    )
    cpio.add_file("etc/testvm/udhcpc.script", UDHCPC_SCRIPT.encode(), 0o755)
    cpio.add_file("init", INIT_SCRIPT.read_bytes(), 0o755)
    cpio.add_file("etc/inittab", INITTAB.encode())
    cpio.add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    cpio.add_file("etc/group", b"root:x:0:\n")
    cpio.add_file("etc/shells", b"/bin/sh\n/bin/ash\n")
    cpio.add_file("etc/os-release", OS_RELEASE.encode())
    cpio.add_file("etc/profile", b"export PATH=/bin\n")
    cpio.write(dest)


def build_disk(dest: Path, workdir: Path) -> None:
    """A 4 MiB ext2 file system with /etc/os-release, as qcow2; reproducible bytes."""
    root = workdir / "diskroot"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text(OS_RELEASE)
    raw = workdir / "disk.raw"
    env = dict(os.environ, E2FSPROGS_FAKE_TIME="1700000000")
    proc.run(
        ["mke2fs", "-q", "-F", "-t", "ext2", "-L", "pcocc-testvm", "-d", root,
         "-U", "6b1d5c9e-0000-4000-8000-00000000cafe",
         "-E", "hash_seed=6b1d5c9e-0000-4000-8000-00000000beef", "-m", "0", raw, "4M"],
        env=env, what="create the test disk file system",
    )
    proc.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, dest],
             what="convert the test disk to qcow2")


def build(outdir: Path, flavour: str = "cloud") -> dict:
    """Build the test VM into ``outdir`` unless the same inputs were already built there.

    :param flavour: the kernel, see :data:`FLAVOURS`
    """
    pattern, extra_modules = FLAVOURS[flavour]
    kernel, version = find_kernel(pattern)
    moddir = Path("/lib/modules") / version
    modules = module_order(moddir, WANTED_MODULES + extra_modules)
    inputs = collect_inputs(kernel, moddir, modules)
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    manifest_path = outdir / "manifest.json"
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except ValueError:
            old = {}
        if old.get("key") == key and all((outdir / old[k]).exists()
                                          for k in ("kernel", "initrd", "disk")):
            return _absolute(old, outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=outdir) as tmp:
        work = Path(tmp)
        shutil.copyfile(kernel, work / "vmlinuz")
        build_initramfs(work / "initrd.img", moddir, modules)
        build_disk(work / "disk.qcow2", work)
        manifest = {
            "key": key,
            "kernel_version": version,
            "kernel": "vmlinuz",
            "initrd": "initrd.img",
            "disk": "disk.qcow2",
            "append": APPEND,
            "modules": [Path(m).name for m in modules],
            "has_guest_agent": bool(_present(OPTIONAL_BINARIES)),
            "inputs": inputs,
        }
        for name in ("vmlinuz", "initrd.img", "disk.qcow2"):
            os.replace(work / name, outdir / name)
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(work / "manifest.json", manifest_path)  # last: marks the build complete
    return _absolute(manifest, outdir)


def _absolute(manifest: dict, outdir: Path) -> dict:
    out = dict(manifest)
    for k in ("kernel", "initrd", "disk"):
        out[k] = str((outdir / manifest[k]).resolve())
    return out


def main(argv: list[str]) -> int:
    flavour = "cloud"
    if argv[:1] == ["--generic-kernel"]:
        flavour, argv = "generic", argv[1:]
    if len(argv) != 1:
        print("usage: build_testvm.py [--generic-kernel] OUTDIR", file=sys.stderr)
        return 2
    try:
        manifest = build(Path(argv[0]), flavour)
    except PcoccError as err:
        print(f"build_testvm: error: {err}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return 1
    manifest.pop("inputs")
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
