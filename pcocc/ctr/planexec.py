"""Run one pod from a checked plan (:mod:`pcocc.ctr.runplan`), as
:func:`pcocc.ctr.launch.run_pod` would, importing only :mod:`fcntl` and :mod:`select`.

What changes from run to run is done here: the cache entry's lease is taken (and the entry
checked again under it), a new pod directory with the app's bundle and root layer is made,
the spec written, the runtime spawned (stdin from /dev/null, stdout and stderr through pipes,
in a session of its own, SIGPIPE and SIGXFSZ back to default, as :func:`pcocc.proc.spawn`),
the record saved as running, the output copied to ours and to the app's log, the status
collected and the record saved as exited. A SIGINT or SIGTERM stops the container through
its runtime backend (imported then) and is reported as :func:`pcocc.ctr.launch.start_pod`
reports it.
"""

from __future__ import annotations

# _signal, not signal: the C module is loaded at start-up, signal's enums cost ~9 ms
import _signal
import os
import time

from pcocc.ctr.runplan import S, U, remove_tree, stats_hold, value_marker
from pcocc.randid import new_uuid

#: the template markers of a record, with how each value is written
RECORD_VALUES = ("state", "pid", "pid_start", "created", "started", "exited", "app_pid",
                 "app_pid_start", "exit_status")


class _Stopped(Exception):
    """SIGTERM arrived while the app ran."""


def _on_term(signum: int, frame: object) -> None:
    raise _Stopped(signum)


def render(template: str, uuid: str, values: dict[str, str]) -> str:
    """``template`` with the UUID, its short form and the value markers filled in;
    ValueError if a marker is left (a plan that does not fit this code)."""
    text = template.replace(U, uuid).replace(S, uuid[:8])
    for name, value in values.items():
        text = text.replace(value_marker(name), value)
    if "\0" in text:
        raise ValueError("a marker of the plan was not filled in")
    return text


def start_ticks(pid: int) -> str:
    """As :func:`pcocc.ctr.pods.process_start_ticks`, as a JSON value."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[19].decode()
    except (OSError, IndexError):
        return "null"


def write_record(path: str, text: str, *, durable: bool = True) -> None:
    """As :func:`pcocc.ctr.pods.write_record`: a synced temporary file (named as
    :func:`pcocc.fsutil.tmp_name`) renamed over it; not synced without ``durable`` (as
    :func:`pcocc.fsutil.write_atomic`)."""
    head, name = os.path.split(path)
    tmp = os.path.join(head, f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o600)
    try:
        data = memoryview(text.encode())
        while data:
            data = data[os.write(fd, data):]
        if durable:
            os.fsync(fd)
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def take_lease(path: str) -> int | None:
    """The shared lock of a cache entry in use (as ``ContainerCache.lease``)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except PermissionError:
        if not os.path.exists(path):
            return None  # a cache this user cannot write: entries are never removed
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def prepare(plan: dict[str, list[str]], uuid: str) -> tuple[str, str, list[str]]:
    """Make the pod directory, the app's bundle and root layer, and write its spec;
    (pod directory, app directory, runtime argv)."""
    pods, app = plan["pods"][0], plan["app"][0]
    pod_dir = os.path.join(pods, uuid)
    app_dir = os.path.join(pod_dir, "apps", app)
    spec = render(plan["spec"][0], uuid, {})
    argv = [render(arg, uuid, {}) for arg in plan["cmd"]]
    os.mkdir(pod_dir, 0o700)
    os.makedirs(app_dir)
    lower = plan["lower"][0]
    if lower:  # the app's writable layer (pcocc.ctr.rootlayer.RootLayer.create)
        layer = os.path.join(app_dir, "layer")
        os.mkdir(layer, 0o700)
        os.mkdir(os.path.join(layer, "upper"))
        os.mkdir(os.path.join(layer, "work"), 0o700)
        os.mkdir(os.path.join(app_dir, "rootfs"), 0o700)
        os.chmod(os.path.join(layer, "upper"), os.stat(lower).st_mode & 0o7777 & ~0o7022)
    with open(os.path.join(app_dir, "config.json"), "w") as f:
        f.write(spec)
    return pod_dir, app_dir, argv


def spawn(argv: list[str]) -> tuple[int, int, int]:
    """Start the runtime as :func:`pcocc.proc.spawn` does; (pid, stdout fd, stderr fd)."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, err_w, 2),
        ], setsid=True, setsigdef=(_signal.SIGPIPE, _signal.SIGXFSZ))
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    return pid, out_r, err_r


def pump(fds: dict[int, int], log_fd: int) -> None:
    """Copy each pipe of ``fds`` (pipe -> our fd) to ours and to the log until they close."""
    import select

    poll = select.poll()
    for fd in fds:
        poll.register(fd, select.POLLIN)
    left = set(fds)
    while left:
        for fd, _ in poll.poll():
            data = os.read(fd, 65536)
            if not data:
                poll.unregister(fd)
                os.close(fd)
                left.discard(fd)
                continue
            os.write(log_fd, data)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fds[fd], view):]
            except BrokenPipeError:
                pass


def exit_status(wait_status: int) -> int:
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def execute(plan: dict[str, list[str]]) -> int | None:
    """Run the pod of ``plan``; its exit status, or None when the cache entry is gone (the
    caller then runs the command as usual)."""
    from pcocc import timing

    timing.mark("run: plan checked")
    lease = take_lease(plan["lease"][0])
    try:
        if not stats_hold(plan):  # again, now that eviction waits for us
            return None
        uuid = new_uuid()
        created = repr(time.time())
        pod_dir = os.path.join(plan["pods"][0], uuid)
        try:
            _, app_dir, argv = prepare(plan, uuid)
            timing.mark("run: pod directory and spec written")
            register(plan, uuid)
        except Exception as err:  # noqa: BLE001 - the usual way (fast_run) says what is wrong
            if os.environ.get("PCOCC_DEBUG") == "1":
                os.write(2, f"pcocc: DEBUG: run plan not used: {err!r}\n".encode())
            unregister(plan, uuid)
            remove_tree(pod_dir)
            return None
        record = os.path.join(pod_dir, "pod.json")
        timing.mark("run: pod prepared (metadata service registration)")
        try:
            os.utime(plan["touch"][0])  # the entry's last use (ContainerCache._touch)
        except OSError:
            pass
        return _run(plan, uuid, created, record, app_dir, argv)
    finally:
        if lease is not None:
            os.close(lease)


def _run(plan: dict[str, list[str]], uuid: str, created: str, record: str, app_dir: str,
         argv: list[str]) -> int:
    from pcocc import timing

    values = {"state": '"running"', "pid": str(os.getpid()), "pid_start": start_ticks(
        os.getpid()), "created": created, "started": repr(time.time()), "exited": "null",
        "app_pid": "null", "app_pid_start": "null",
        "exit_status": "null"}
    template = plan["record"][0]
    log_fd = os.open(os.path.join(app_dir, "log"),
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    old_term = _signal.signal(_signal.SIGTERM, _on_term)
    pid = status = None
    try:
        pid, out_r, err_r = spawn(argv)
        values["app_pid"], values["app_pid_start"] = str(pid), start_ticks(pid)
        write_record(record, render(template, uuid, values))
        timing.mark("run: apps spawned, record saved")
        pump({out_r: 1, err_r: 2}, log_fd)
        status = exit_status(os.waitpid(pid, 0)[1])
        timing.mark("run: apps exited")
    except (KeyboardInterrupt, _Stopped) as err:
        signum = err.args[0] if isinstance(err, _Stopped) else _signal.SIGINT
        status = None if pid is None else _stop(plan, uuid, pid)
        from pcocc.signals import Interrupted

        raise Interrupted(signum, f"pod {uuid[:8]} stopped by") from None
    finally:
        _signal.signal(_signal.SIGTERM, old_term)
        os.close(log_fd)
        values["exit_status"] = "null" if status is None else str(status)
        values["state"], values["exited"] = '"exited"', repr(time.time())
        write_record(record, render(template, uuid, values))
        unregister(plan, uuid)
        timing.mark("run: record saved, pod done")
    assert status is not None
    return status


def register(plan: dict[str, list[str]], uuid: str) -> None:
    """Register the pod with the metadata service, if its plan says so
    (:mod:`pcocc.ctr.planmds`): the app's socket, handed to the service, then the record."""
    root, _, template = plan["mds"][0].partition("\0")
    if not root:
        return
    from pcocc.ctr import planmds

    sock = planmds.bind_app(root, uuid, plan["app"][0])
    try:
        if not planmds.hand_over(root, uuid, plan["app"][0], sock):
            from pathlib import Path

            from pcocc.ctr.mds import start_service

            start_service(Path(root), {(uuid, plan["app"][0]): sock})  # type: ignore[dict-item]
        pid = os.getpid()
        write_record(os.path.join(root, "records", f"{uuid}.json"), render(template, uuid, {
            "key": f'"{os.urandom(32).hex()}"', "pid": str(pid), "pid_start": start_ticks(pid)}),
            durable=False)  # as register_pod: it does not outlive a boot
    finally:
        sock.close()


def unregister(plan: dict[str, list[str]], uuid: str) -> None:
    root = plan["mds"][0].partition("\0")[0]
    if root:
        from pcocc.ctr import planmds

        planmds.unregister(root, uuid)


def _stop(plan: dict[str, list[str]], uuid: str, pid: int) -> int:
    """Stop the app through its runtime backend (as ``start_pod`` does on a signal)."""
    from pcocc.ctr.runtimes.base import runtime_class
    from pcocc.signals import deferred_signals

    name, _, mode = plan["runtime"][0].partition("\0")
    runtime = runtime_class(name)(dict(m.split("=", 1) for m in mode.split(",") if m))
    container_id = f"pcocc-{uuid}-{plan['app'][0]}"

    class _Spawned:  # what Runtime.kill needs of a Popen
        def __init__(self, pid: int):
            self.pid = pid

        def send_signal(self, sig: int) -> None:
            os.kill(self.pid, sig)

    with deferred_signals():
        runtime.kill(container_id, _Spawned(pid))  # type: ignore[arg-type]
        status = exit_status(os.waitpid(pid, 0)[1])
        runtime.cleanup(container_id)
    return status
