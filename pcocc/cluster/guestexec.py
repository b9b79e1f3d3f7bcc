"""``pcocc exec``: run a shell command in VMs through their guest agents, output streamed.

QGA's ``guest-exec`` hands captured output over only once the process ended. To stream it,
the host first creates two files in the guest (``guest-file-open``, mode 0600, as the
agent's user), then starts ``/bin/sh -c WRAPPER``. The wrapper appends its stdout and
stderr to those files, removes their names at once (the agent and the shell keep them open,
so nothing is left in the guest whatever happens next) and runs the command, through ``su``
for another user. The host reads both files as they grow (``guest-file-read``; a
``guest-file-seek`` clears the end-of-file mark stdio keeps) while it polls
``guest-exec-status``. Every poll is a short agent session of its own, so that other
clients of the agent (another exec, a save) are not locked out while a command runs.

The command is shell text (the words joined by spaces, as ssh does); the wrapper quotes
everything that comes from the user, so it always parses.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import secrets
import shlex
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from pcocc.ctr.env import parse_assignment
from pcocc.errors import PcoccError, ServiceUnavailable, UsageError
from pcocc.vm.agent import AgentError, AgentSession, GuestAgent

log = logging.getLogger(__name__)

#: the guest directory of the (nameless once started) output files
GUEST_DIR = "/tmp"
GUEST_SHELL = "/bin/sh"
#: seconds an agent may take to answer one session's synchronisation or command
AGENT_TIMEOUT_S = 10.0
#: bytes asked per guest-file-read
READ_CHUNK = 64 * 1024
#: largest standard input passed (it travels in one agent message)
MAX_STDIN_BYTES = 16 * 1024 * 1024
#: polling of a running command: the first delay, doubled up to the last
POLL_FIRST_S, POLL_MAX_S = 0.01, 0.25
#: exit status of a VM whose run was stopped by Ctrl-C
INTERRUPTED = 130

_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$")
#: kills a process and its descendants (collected first, so a dying shell starts nothing)
_KILL_TREE = (
    'tree() { echo "$1"; for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do '
    'tree "$c"; done; }; kill -TERM $(tree "$1") 2>/dev/null; exit 0'
)


@dataclass(frozen=True)
class ExecRequest:
    """What to run in each VM."""

    command: str
    user: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    stdin: bytes | None = None

    @classmethod
    def build(
        cls,
        words: Sequence[str],
        *,
        user: str | None = None,
        env: Sequence[str] = (),
        stdin: bytes | None = None,
    ) -> ExecRequest:
        """Check the user's options.

        :raise UsageError: no command, a bad user name, a bad ``--env`` item, stdin too big
        """
        command = " ".join(words).strip()
        if not command:
            raise UsageError("no command given", hint="e.g. pcocc exec -i 0-3 hostname")
        if "\0" in command:
            raise UsageError("the command contains a NUL character")
        if user is not None and not _USER.match(user):
            raise UsageError(f"-u {user!r} is not a user name")
        pairs = tuple(parse_assignment(item, "--env") for item in env)
        if any("\0" in value for _name, value in pairs):
            raise UsageError("--env: a value contains a NUL character")
        if stdin is not None and len(stdin) > MAX_STDIN_BYTES:
            raise UsageError(
                f"standard input is larger than {MAX_STDIN_BYTES // (1024 * 1024)} MiB",
                hint="copy large data with pcocc scp, or a shared directory",
            )
        return cls(command, user, pairs, stdin)


def script_request(script: bytes, *, user: str | None = None,
                   env: Sequence[str] = ()) -> ExecRequest:
    """Run ``script`` (its ``#!`` line is honoured) in the guest: it travels as standard
    input into a private temporary file, which is removed after the run."""
    runner = (
        't=$(mktemp) || exit 125; cat > "$t" && chmod 700 "$t" && "$t" < /dev/null; '
        's=$?; rm -f "$t"; exit $s'
    )
    return ExecRequest.build([runner], user=user, env=env, stdin=script)


def wrapper_script(request: ExecRequest, out_path: str, err_path: str) -> str:
    """The ``sh -c`` text the agent starts (see the module docstring); pure."""
    q = shlex.quote
    inner = "".join(f"export {name}={q(value)}\n" for name, value in request.env)
    inner += f"eval {q(request.command)}\n"
    lines = [
        f"exec >>{q(out_path)} 2>>{q(err_path)} || exit 125",
        f"rm -f {q(out_path)} {q(err_path)}",
    ]
    if request.user is None:
        lines.append(inner.rstrip("\n"))
    else:
        lines.append(f"exec su -s {GUEST_SHELL} {q(request.user)} -c {q(inner)}")
    return "\n".join(lines) + "\n"


class Output(Protocol):
    """Where the VMs' output goes, as it comes."""

    def write(self, rank: int, stream: str, data: bytes) -> None:
        """``stream`` is ``out`` or ``err``."""

    def end(self, rank: int) -> None:
        """The VM's command ended: flush what is left of its lines."""


class PrefixedOutput:
    """Writes the output of each VM to ``out``/``err``; with ``prefix``, line by line,
    each line prefixed by ``vmN: `` (a partial line waits for its end, or for the VM's)."""

    def __init__(self, out: BinaryIO, err: BinaryIO, *, prefix: bool) -> None:
        self.streams = {"out": out, "err": err}
        self.prefix = prefix
        self.pending: dict[tuple[int, str], bytes] = {}
        self.lock = threading.Lock()

    def write(self, rank: int, stream: str, data: bytes) -> None:
        with self.lock:
            target = self.streams[stream]
            if not self.prefix:
                target.write(data)
                target.flush()
                return
            text = self.pending.pop((rank, stream), b"") + data
            *lines, rest = text.split(b"\n")
            if lines:
                tag = f"vm{rank}: ".encode()
                target.write(b"".join(tag + line + b"\n" for line in lines))
                target.flush()
            if rest:
                self.pending[(rank, stream)] = rest

    def end(self, rank: int) -> None:
        for stream in ("out", "err"):
            with self.lock:
                rest = self.pending.pop((rank, stream), b"")
            if rest:
                self.write(rank, stream, rest + b"\n")


# -- one VM ---------------------------------------------------------------------------
def _field(reply: Any, key: str, kind: type, command: str) -> Any:
    """``reply[key]`` checked to be of ``kind`` (agent replies are parsed strictly)."""
    value = reply.get(key) if isinstance(reply, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise AgentError(f"guest agent {command}: unexpected reply (no valid {key!r})")
    return value


def _b64(reply: dict, key: str, command: str) -> bytes:
    text = reply.get(key, "")
    if not isinstance(text, str):
        raise AgentError(f"guest agent {command}: unexpected reply ({key!r} is not text)")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as err:
        raise AgentError(f"guest agent {command}: {key!r} is not base64") from err


def _read_new(session: AgentSession, handle: int) -> bytes:
    """What was appended to the guest file since the last read."""
    chunks = []
    while True:
        reply = session.execute("guest-file-read", {"handle": handle, "count": READ_CHUNK},
                                timeout_s=AGENT_TIMEOUT_S)
        data = _b64(reply, "buf-b64", "guest-file-read")
        chunks.append(data)
        if reply.get("eof") is True:
            # stdio's end-of-file mark is sticky: a seek clears it for the next read
            session.execute("guest-file-seek", {"handle": handle, "offset": 0, "whence": "cur"},
                            timeout_s=AGENT_TIMEOUT_S)
            break
        if not data:
            break
    return b"".join(chunks)


@dataclass
class _GuestRun:
    pid: int
    handles: dict[str, int]


class VmExec:
    """One command in one VM: start, stream, end (and stop on request)."""

    def __init__(self, agent: GuestAgent, rank: int, output: Output,
                 stop: threading.Event) -> None:
        self.agent, self.rank, self.output, self.stop = agent, rank, output, stop

    @contextlib.contextmanager
    def _session(self) -> Iterator[AgentSession]:
        with self.agent.session(AGENT_TIMEOUT_S) as session:
            yield session

    def run(self, request: ExecRequest) -> int:
        """Run ``request`` and return its exit status (128 + N when killed by signal N,
        :data:`INTERRUPTED` when stopped).

        :raise ServiceUnavailable: the agent does not answer
        :raise AgentError: the agent refused a command
        """
        job = self._start(request)
        answering = True
        try:
            delay = POLL_FIRST_S
            while True:
                if self.stop.is_set():
                    self._kill(job)
                    return INTERRUPTED
                with self._session() as session:
                    status = session.execute("guest-exec-status", {"pid": job.pid},
                                             timeout_s=AGENT_TIMEOUT_S)
                    exited = _field(status, "exited", bool, "guest-exec-status")
                    for stream, handle in job.handles.items():
                        data = _read_new(session, handle)
                        if data:
                            self.output.write(self.rank, stream, data)
                if exited:
                    return self._finish(status)
                self.stop.wait(delay)
                delay = min(delay * 2, POLL_MAX_S)
        except ServiceUnavailable:
            answering = False  # do not wait for it once more to close the files
            raise
        finally:
            if answering:
                self._close(job)
            self.output.end(self.rank)

    def _start(self, request: ExecRequest) -> _GuestRun:
        token = secrets.token_hex(16)
        paths = {s: f"{GUEST_DIR}/.pcocc-exec-{token}.{s}" for s in ("out", "err")}
        handles: dict[str, int] = {}
        with self._session() as session:
            try:
                for stream, path in paths.items():
                    reply = session.execute("guest-file-open", {"path": path, "mode": "w+"},
                                            timeout_s=AGENT_TIMEOUT_S)
                    if not isinstance(reply, int) or isinstance(reply, bool):
                        raise AgentError("guest agent guest-file-open: unexpected reply")
                    handles[stream] = reply
                args: dict[str, Any] = {
                    "path": GUEST_SHELL,
                    "arg": ["-c", wrapper_script(request, paths["out"], paths["err"])],
                    "capture-output": True,
                }
                if request.stdin is not None:
                    args["input-data"] = base64.b64encode(request.stdin).decode()
                reply = session.execute("guest-exec", args, timeout_s=AGENT_TIMEOUT_S)
                return _GuestRun(_field(reply, "pid", int, "guest-exec"), handles)
            except BaseException:
                # the wrapper never ran: the files still have their names
                with contextlib.suppress(PcoccError, OSError):
                    for handle in handles.values():
                        session.execute("guest-file-close", {"handle": handle})
                    _run_quietly(session, "rm", ["-f", *paths.values()])
                raise

    def _finish(self, status: dict) -> int:
        # what the wrapper said before its redirection (e.g. no /tmp in the guest)
        for stream in ("out", "err"):
            data = _b64(status, f"{stream}-data", "guest-exec-status")
            if data:
                self.output.write(self.rank, stream, data)
        if "signal" in status:
            return 128 + _field(status, "signal", int, "guest-exec-status")
        return _field(status, "exitcode", int, "guest-exec-status")

    def _close(self, job: _GuestRun) -> None:
        try:
            with self._session() as session:
                for handle in job.handles.values():
                    session.execute("guest-file-close", {"handle": handle},
                                    timeout_s=AGENT_TIMEOUT_S)
        except PcoccError as err:
            log.debug("vm%d: cannot close the output files: %s", self.rank, err)

    def _kill(self, job: _GuestRun) -> None:
        """Signal the command's processes, then collect its status (the agent keeps it
        until asked)."""
        try:
            with self._session() as session:
                _run_quietly(session, GUEST_SHELL, ["-c", _KILL_TREE, "sh", str(job.pid)])
                for _ in range(10):
                    status = session.execute("guest-exec-status", {"pid": job.pid})
                    if status.get("exited"):
                        break
                    time.sleep(0.1)
        except PcoccError as err:
            log.debug("vm%d: cannot stop the command: %s", self.rank, err)


def _run_quietly(session: AgentSession, path: str, args: list[str]) -> None:
    """Run a helper in the guest and collect its status (within a second or so)."""
    pid = _field(session.execute("guest-exec", {"path": path, "arg": args}), "pid", int,
                 "guest-exec")
    for _ in range(20):
        if session.execute("guest-exec-status", {"pid": pid}).get("exited"):
            return
        time.sleep(0.05)


# -- many VMs -------------------------------------------------------------------------
#: reports that a VM could not run the command: (rank, message, hint)
ErrorReport = Callable[[int, str, "str | None"], None]


def run_in_vms(
    agents: Callable[[int], contextlib.AbstractContextManager[GuestAgent]],
    ranks: Sequence[int],
    request: ExecRequest,
    output: Output,
    on_error: ErrorReport,
) -> int:
    """Run ``request`` in the VMs ``ranks`` at once; return the worst exit status.

    ``agents(rank)`` gives the VM's agent (a context manager, raising PcoccError when it
    has none). A VM whose agent fails is reported through ``on_error`` and counts as
    status 1 (2 for a usage error). Ctrl-C stops waiting, tries to kill the guest
    processes, and gives :data:`INTERRUPTED`.
    """
    stop = threading.Event()
    statuses: dict[int, int] = {}
    done = {rank: threading.Event() for rank in ranks}

    def one(rank: int) -> None:
        try:
            with agents(rank) as agent:
                statuses[rank] = VmExec(agent, rank, output, stop).run(request)
        except ServiceUnavailable as err:
            on_error(rank, f"vm{rank}: {err}", f"is qemu-guest-agent running in vm{rank}?")
            statuses[rank] = err.exit_status
        except PcoccError as err:
            on_error(rank, f"vm{rank}: {err}", err.hint)
            statuses[rank] = err.exit_status
        finally:
            done[rank].set()

    started: list[int] = []
    try:
        # Ctrl-C may come while the threads start (a new thread can run a while before
        # start() returns): starting them is inside the try too
        for rank in ranks:
            threading.Thread(target=one, args=(rank,), name=f"exec-vm{rank}",
                             daemon=True).start()
            started.append(rank)
        for event in done.values():
            while not event.wait(0.1):
                pass
    except KeyboardInterrupt:
        # (an interrupted Thread.join may report a live thread as ended: wait on events)
        stop.set()
        deadline = time.monotonic() + AGENT_TIMEOUT_S
        for rank in started:
            done[rank].wait(max(0.0, deadline - time.monotonic()))
        return INTERRUPTED
    return max((statuses.get(r, 1) for r in ranks), default=0)
