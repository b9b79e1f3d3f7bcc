"""Stage 2 of the ``unshare`` runtime: set up a container from its OCI config.json and exec.

Runs with only the standard library (``python -I -S nsinit.py CONFIG``) inside the new user,
mount, UTS, IPC and PID namespaces that ``unshare`` made, as root of the user namespace.
It applies the subset of the spec that needs no privilege on the host: hostname, mounts
(proc, tmpfs, devpts, mqueue, sysfs, binds, read-only binds), a few device nodes bound from the
host, masked and read-only paths, a read-only root, pivot_root, the application's uid/gid
(through a nested user namespace), no new privileges, cwd, env and args. Seccomp and
capability bounding are not applied by this fallback.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 1 << 21, 1 << 24
MNT_DETACH = 2
CLONE_NEWUSER = 0x10000000
PR_SET_NO_NEW_PRIVS = 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203}
#: statvfs f_flag bits -> mount flags that a bind remount in a user namespace must keep.
_LOCKED = (
    (1, MS_RDONLY),
    (2, MS_NOSUID),
    (4, MS_NODEV),
    (8, MS_NOEXEC),
    (1024, MS_NOATIME),
    (2048, MS_NODIRATIME),
    (4096, MS_RELATIME),
)
_FLAG_OPTS = {
    "ro": MS_RDONLY,
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "strictatime": MS_STRICTATIME,
    "relatime": MS_RELATIME,
    "noatime": MS_NOATIME,
}
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    pass


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)}")


def mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None):
    enc = lambda s: s.encode() if s is not None else None
    _check(
        libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)),
        f"mount {src or fstype} on {dst}",
    )


def remount_ro(path: str, extra: int = 0) -> None:
    flags = os.statvfs(path).f_flag
    keep = 0
    for st, ms in _LOCKED:
        if flags & st:
            keep |= ms
    mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | keep | extra)


def _ensure(path: str, is_dir: bool) -> None:
    if os.path.lexists(path):
        return
    if is_dir:
        os.makedirs(path, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "a").close()


def _split(options: list[str]) -> tuple[int, list[str], bool]:
    flags, data, rec = 0, [], False
    for o in options:
        if o in _FLAG_OPTS:
            flags |= _FLAG_OPTS[o]
        elif o in ("rbind", "bind", "rw"):
            rec = rec or o == "rbind"
        else:
            data.append(o)
    return flags, data, rec


def do_mount(root: str, m: dict) -> None:
    dest = root + m["destination"]
    kind = m.get("type", "bind")
    flags, data, rec = _split(m.get("options", []))
    if kind == "bind":
        src = m["source"]
        _ensure(dest, os.path.isdir(src))
        mount(src, dest, None, MS_BIND | (MS_REC if rec else 0))
        if flags & MS_RDONLY:
            remount_ro(dest, flags & (MS_NOSUID | MS_NODEV | MS_NOEXEC))
        return
    _ensure(dest, True)
    try:
        mount(m.get("source", kind), dest, kind, flags & ~MS_RDONLY, ",".join(data) or None)
        if flags & MS_RDONLY:
            mount(None, dest, None, MS_REMOUNT | flags)
    except SetupError:
        if kind == "sysfs":  # only the owner of the network namespace may mount sysfs
            mount("/sys", dest, None, MS_BIND | MS_REC)
            remount_ro(dest)
        elif kind in ("devpts", "mqueue"):
            pass  # optional in an unprivileged user namespace
        else:
            raise
    if kind == "tmpfs" and m["destination"] == "/dev":
        for name in DEVICES:
            if os.path.exists(f"/dev/{name}"):
                _ensure(f"{dest}/{name}", False)
                mount(f"/dev/{name}", f"{dest}/{name}", None, MS_BIND)
        for link, target in (
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("ptmx", "pts/ptmx"),
        ):
            os.symlink(target, f"{dest}/{link}")


def mask(root: str, masked: list[str], readonly: list[str]) -> None:
    for p in masked:
        path = root + p
        try:
            if os.path.isdir(path):
                mount("tmpfs", path, "tmpfs", MS_RDONLY)
            elif os.path.exists(path):
                mount("/dev/null", path, None, MS_BIND)
        except SetupError:
            pass
    for p in readonly:
        path = root + p
        try:
            if os.path.exists(path):
                mount(path, path, None, MS_BIND | MS_REC)
                remount_ro(path)
        except SetupError:
            pass


def loopback_up() -> None:
    """Bring ``lo`` up in a new network namespace (SIOCGIFFLAGS/SIOCSIFFLAGS, IFF_UP)."""
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), 0x8913, req))[1]
        fcntl.ioctl(s.fileno(), 0x8914, struct.pack("16sH14x", b"lo", flags | 1))


def wait_at_gate(path: str, pid: int = 0) -> None:
    """Tell the pod supervisor at the gate socket ``path`` where our network namespace is
    (``pid``, or 0: the connecting process), and wait until it says the network is up."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(f"{pid}\n".encode())
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(16)
            if not chunk:
                break
            reply += chunk
    if reply.strip() != b"go":
        raise SetupError("the pod supervisor could not set up the network")


def net_hook(path: str) -> int:
    """OCI createRuntime hook: the container's state (with its pid) comes on stdin."""
    try:
        pid = int(json.load(sys.stdin)["pid"])
        wait_at_gate(path, pid)
    except (SetupError, OSError, ValueError, KeyError) as err:
        print(f"pcocc: network gate: {err}", file=sys.stderr)
        return 1
    return 0


def pivot(root: str) -> None:
    nr = SYS_PIVOT_ROOT.get(os.uname().machine)
    os.chdir(root)
    if nr is None:
        os.chroot(".")
    else:
        _check(libc.syscall(nr, b".", b"."), "pivot_root")
        _check(libc.umount2(b".", MNT_DETACH), "detach the old root")
    os.chdir("/")


def become(uid: int, gid: int) -> None:
    """Appear as uid/gid: a nested user namespace mapping them to our root."""
    if uid == 0 and gid == 0:
        return
    _check(libc.unshare(CLONE_NEWUSER), "unshare the user namespace")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} 0 1"), ("gid_map", f"{gid} 0 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def find(prog: str, env: dict[str, str]) -> str:
    if "/" in prog:
        return prog
    for d in env.get("PATH", "/usr/bin:/bin").split(":"):
        cand = os.path.join(d or ".", prog)
        if os.access(cand, os.X_OK) and not os.path.isdir(cand):
            return cand
    raise FileNotFoundError(prog)


def main(config_path: str) -> int:
    with open(config_path) as f:
        cfg = json.load(f)
    root = os.path.realpath(cfg["root"]["path"])
    proc = cfg["process"]
    linux = cfg.get("linux", {})
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    if any(n.get("type") == "network" for n in linux.get("namespaces", [])):
        loopback_up()
        gate = cfg.get("annotations", {}).get("org.pcocc.net-gate")
        if gate:
            wait_at_gate(gate)
    mount(root, root, None, MS_BIND | MS_REC)
    if cfg.get("hostname"):
        name = cfg["hostname"].encode()
        _check(libc.sethostname(name, len(name)), "set the hostname")
    for m in cfg.get("mounts", []):
        do_mount(root, m)
    mask(root, linux.get("maskedPaths", []), linux.get("readonlyPaths", []))
    if cfg["root"].get("readonly"):
        remount_ro(root)
    pivot(root)
    become(proc["user"]["uid"], proc["user"]["gid"])
    if proc.get("noNewPrivileges"):
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")
    env = dict(e.split("=", 1) for e in proc.get("env", []) if "=" in e)
    os.chdir(proc.get("cwd", "/"))
    args = proc["args"]
    try:
        exe = find(args[0], env)
        os.execve(exe, args, env)
    except OSError as err:
        print(
            f"pcocc: cannot execute '{args[0]}' in the container: {err.strerror or err}",
            file=sys.stderr,
        )
        return 127 if isinstance(err, FileNotFoundError) else 126
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "--net-hook":
        sys.exit(net_hook(sys.argv[2]))
    try:
        sys.exit(main(sys.argv[1]))
    except (SetupError, OSError) as err:
        print(f"pcocc: container setup failed: {err}", file=sys.stderr)
        sys.exit(125)
