"""The one exception tree of pcocc.

The library raises these; only ``pcocc.cli.main`` turns them into text and exit statuses.

::

    PcoccError                 exit 1: an operation failed
     +-- UsageError            exit 2: bad argument or option
     +-- ConfigError           exit 2: bad configuration file (file:line: key.path: what)
     +-- NotFound              an image, repository, template, cluster... does not exist
     +-- AlreadyExists         a name that must be new is taken
     +-- PermissionDenied      the user may not touch this object (read-only repository...)
     +-- Busy                  a lock could not be taken in time
     +-- Corrupt               stored data failed a digest or format check
     +-- ToolError             an external program failed (keeps argv, status, stderr tail)
     |    +-- ToolMissing      an external program is not installed
     +-- ServiceUnavailable    etcd, Slurm... cannot be reached
     +-- KvConflict            an etcd transaction lost a race (the keys changed meanwhile)
     +-- TimedOut              a wait for a condition (VMs running, a job...) ran out of time
"""

from __future__ import annotations

from collections.abc import Sequence


class PcoccError(Exception):
    """Root of every error pcocc reports to a user."""

    exit_status = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(PcoccError):
    exit_status = 2


class ConfigError(PcoccError):
    exit_status = 2


class NotFound(PcoccError):
    pass


class AlreadyExists(PcoccError):
    pass


class PermissionDenied(PcoccError):
    pass


class Busy(PcoccError):
    pass


class Corrupt(PcoccError):
    pass


class ServiceUnavailable(PcoccError):
    pass


class KvConflict(PcoccError):
    pass


class TimedOut(PcoccError):
    pass


class ToolError(PcoccError):
    """An external program failed; keeps what is needed to understand why."""

    def __init__(
        self,
        message: str,
        *,
        argv: Sequence[str] = (),
        returncode: int | None = None,
        stderr: str = "",
        tool: str | None = None,
        hint: str | None = None,
    ):
        tail = stderr_tail(stderr)
        if tail:
            message = f"{message}: {tail}"
        super().__init__(message, hint=hint)
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        self.tool = tool or (argv[0] if argv else None)


class ToolMissing(ToolError):
    pass


def stderr_tail(stderr: str, max_lines: int = 3) -> str:
    """The last meaningful lines of a tool's stderr, joined on one line."""
    lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip()]
    return " | ".join(lines[-max_lines:])
