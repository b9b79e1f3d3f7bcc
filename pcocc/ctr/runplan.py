"""A warm ``pcocc run`` replayed from its saved plan, with almost nothing imported.

The first ``pcocc run`` of a command line that qualifies (one app from a repository image
in a ``dir`` cache, crun or runc, no network, volume, mount, env file, inherited
environment or terminal: :func:`pcocc.ctr.planwrite.eligible`) saves
what it resolved: the OCI spec and the runtime's argv of its app, its pod record, with the
pod's UUID and hostname as markers, and the *key* of all of it. The next identical command
line reads the plan here, checks the key, and does only what changes from run to run: a new
pod directory and root layer, the spec and the record written, the pod registered with the
metadata service (:mod:`pcocc.ctr.planmds`), the runtime spawned, its output copied to ours
and to the app's log, the record closed, the pod unregistered. No click, config,
repository, JSON or :mod:`socket` module is imported: only :mod:`os`, :mod:`fcntl`,
:mod:`select` (and ``_socket`` for the metadata service).

The key, checked on every use (a plan that misses is ignored, and the run that follows
writes a new one): the exact command line and the pcocc installation that runs it, uid, gid and groups, a digest of the whole
environment (configuration placeholders may read any variable), node and boot, and the
``lstat`` of every file the plan was derived from (configuration files and drop-in
directories of both levels, present or absent; the image's directory and revision file in
every repository; the cache entry; the runtime's programs; the probe's cache; pcocc's own
modules that shape a spec), compared on device, inode, size, mode, owner, mtime and ctime
(which no user can set back). A bare image name that is also a file of the current
directory (an image file ``pcocc run`` would import) misses too.

Plans live in ``~/.cache/pcocc/run-plans/`` (private, :func:`plan_dir`); a plan is used only
when it is a regular file of ours, not writable by others. Format (one per file)::

    pcocc-run-plan 1\\n
    TAG LENGTH\\n PAYLOAD \\n    ... (tags below; LENGTH bytes of UTF-8, then a newline)

Markers inside the templates are NUL-delimited words, which neither a JSON text nor an
argument can hold otherwise.
"""

from __future__ import annotations

import os

HEADER = b"pcocc-run-plan 1\n"
DIR_NAME = "run-plans"
#: tags of a plan file, each once, except those of :data:`REPEATED`
TAGS = ("argv", "ids", "env", "host", "image", "stat", "lease", "touch", "lower", "pods",
        "app", "runtime", "spec", "cmd", "record", "mds")
#: environment variables that do not change what a run does (diagnostics only)
#: the stat keys, and the runtime's argv (one argument each)
REPEATED = ("stat", "cmd")
IGNORED_ENV = ("PCOCC_TIMING", "PCOCC_DEBUG")
#: a large prime: the environment digest is its bytes as a number, modulo this
_PRIME = (1 << 255) - 19
U = "\0U\0"  # the pod's UUID, inside a string or an argument
S = "\0S\0"  # its first 8 characters, in the pod's own hostname (pcocc-<S>)


def value_marker(name: str) -> str:
    """The marker of a whole JSON value of a template (a number, a state, a hostname)."""
    return f"\0{name}\0"


def plan_dir() -> str | None:
    """``${XDG_CACHE_HOME:-~/.cache}/pcocc/run-plans`` (as :func:`pcocc.paths.cache_dir`)."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        home = os.environ.get("HOME")
        if not home:
            return None
        base = os.path.join(home, ".cache")
    return os.path.join(base, "pcocc", DIR_NAME)


def digest(data: bytes) -> str:
    """A 64-hex-digit digest of ``data`` (not cryptographic: it names files and compares
    environments of the user's own; a collision makes a plan miss or be replaced)."""
    return "%064x" % (int.from_bytes(b"\1" + data, "little") % _PRIME)


def env_digest(env: dict[str, str] | os._Environ[str]) -> str:
    items = sorted(f"{k}={v}" for k, v in env.items() if k not in IGNORED_ENV)
    return digest("\0".join(items).encode("utf-8", "surrogateescape"))


#: the pcocc package that runs: each installation keeps plans of its own
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def line_key(argv: list[str]) -> str:
    """What the ``argv`` field of a plan holds: this pcocc and the command line."""
    return "\0".join([PACKAGE_DIR, *argv])


def plan_path(argv: list[str]) -> str | None:
    d = plan_dir()
    if d is None:
        return None
    return os.path.join(d, digest(line_key(argv).encode("utf-8", "surrogateescape")))


def stat_sig(path: str, *, dir_only: bool = False) -> str:
    """What a stat key compares: ``-`` for a missing file, else device, inode, size, mode,
    owner, mtime and ctime (nanoseconds) of the file itself (a symbolic link is not
    followed). With ``dir_only`` (a directory whose entries change at each run, such as
    the pods'), ``d:`` and only device, inode, mode and owner."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "-"
    if dir_only:
        return f"d:{st.st_dev}:{st.st_ino}:{st.st_mode}:{st.st_uid}"
    return (f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mode}:{st.st_uid}:"
            f"{st.st_mtime_ns}:{st.st_ctime_ns}")


def stats_hold(plan: dict[str, list[str]]) -> bool:
    """Whether every stat key of ``plan`` (``PATH NUL SIGNATURE``) holds now."""
    return changed(plan) is None


def changed(plan: dict[str, list[str]]) -> str | None:
    """The first path of ``plan``'s stat keys that changed, or None."""
    for entry in plan.get("stat", ()):
        path, _, sig = entry.rpartition("\0")
        if not path or stat_sig(path, dir_only=sig.startswith("d:")) != sig:
            return path or "?"
    return None


def boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def ids() -> str:
    return f"{os.getuid()}:{os.getgid()}:{','.join(map(str, sorted(os.getgroups())))}"


def host() -> str:
    return f"{os.uname().nodename}\0{boot_id()}"


# -- the file -----------------------------------------------------------------------------
def dump(fields: list[tuple[str, str]]) -> bytes:
    """The text of a plan of ``(tag, payload)`` fields."""
    out = [HEADER]
    for tag, payload in fields:
        if tag not in TAGS:
            raise ValueError(f"unknown plan tag {tag}")
        data = payload.encode("utf-8", "surrogateescape")
        out.append(b"%s %d\n%s\n" % (tag.encode(), len(data), data))
    return b"".join(out)


def parse(data: bytes) -> dict[str, list[str]] | None:
    """The fields of a plan's text, or None for anything but a well-formed plan."""
    if not data.startswith(HEADER):
        return None
    fields: dict[str, list[str]] = {}
    pos, end = len(HEADER), len(data)
    while pos < end:
        nl = data.find(b"\n", pos)
        if nl < 0:
            return None
        tag, _, size = data[pos:nl].decode("ascii", "replace").partition(" ")
        if tag not in TAGS or not size.isdigit() or (tag not in REPEATED and tag in fields):
            return None
        start = nl + 1
        stop = start + int(size)
        if stop >= end or data[stop:stop + 1] != b"\n":
            return None
        fields.setdefault(tag, []).append(data[start:stop].decode("utf-8", "surrogateescape"))
        pos = stop + 1
    if any(tag not in fields for tag in TAGS if tag != "stat"):  # an argv is never empty
        return None
    return fields


def load(argv: list[str]) -> dict[str, list[str]] | None:
    """The plan of ``argv`` if there is one, ours, well formed and with a key that matches
    now; else None."""
    path = plan_path(argv)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (st.st_uid != os.geteuid() or st.st_mode & 0o022 or (st.st_mode & 0o170000)
                != 0o100000 or st.st_size > 1 << 20):
            return None
        data = os.read(fd, st.st_size + 1)
    finally:
        os.close(fd)
    plan = parse(data)
    why = "the file is not a plan" if plan is None else miss(plan, argv)
    if why is not None:
        if os.environ.get("PCOCC_DEBUG") == "1":
            os.write(2, f"pcocc: DEBUG: run plan {path} not used: {why}\n".encode())
        return None
    return plan


def miss(plan: dict[str, list[str]], argv: list[str]) -> str | None:
    """Why the key of ``plan`` does not hold now for ``argv`` (see the module docstring),
    or None when it holds."""
    if plan["argv"][0] != line_key(argv):
        return "another command line"
    if plan["ids"][0] != ids():
        return "another user or groups"
    if plan["env"][0] != env_digest(os.environ):
        return "another environment"
    try:
        if plan["host"][0] != host():
            return "another node or boot"
    except OSError:
        return "no boot id"
    if os.path.lexists(plan["image"][0]):
        return "a file of the image's name in the current directory"
    path = changed(plan)
    return None if path is None else f"{path} changed"


def remove_tree(path: str) -> None:
    """Remove ``path`` and what it holds, as far as possible (best effort, links not
    followed)."""
    for top, dirs, files in os.walk(path, topdown=False):
        for name in files:
            _quietly(os.unlink, os.path.join(top, name))
        for name in dirs:
            full = os.path.join(top, name)
            _quietly(os.unlink if os.path.islink(full) else os.rmdir, full)
    _quietly(os.rmdir, path)


def _quietly(op, path: str) -> None:
    try:
        op(path)
    except OSError:
        pass
