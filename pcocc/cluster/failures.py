"""How a virtual cluster ends badly: the errors the launcher raises, and the one line its
state record keeps about why.
"""

from __future__ import annotations

import signal

from pcocc.cluster.vmstate import SIGNAL_NOTE, VmRecord
from pcocc.errors import PcoccError
from pcocc.signals import Interrupted


class ClusterFailed(PcoccError):
    """The virtual cluster could not start or stopped working."""


class ClusterStopped(ClusterFailed):
    """The batch system signalled the node processes: the job was cancelled (scancel, a
    Ctrl-C that reached srun) or reached its time limit. An ending, not a failure: the exit
    status is 128 + the signal, as for a command killed by it."""

    def __init__(self, batchid: str, signum: int, where: str):
        name = signal.Signals(signum).name
        super().__init__(
            f"cluster {batchid} stopped: the batch system sent {name} to its node processes"
            f" (on {where})",
            hint="the job was cancelled (scancel, Ctrl-C) or reached its time limit",
        )
        self.signum = signum
        self.exit_status = 128 + signum


class ClusterCheckpointed(ClusterFailed):
    """The VMs were stopped after a checkpoint (``pcocc ckpt``): the cluster ends, and the
    launcher's exit status is 0."""

    exit_status = 0

    def __init__(self, batchid: str, where: str):
        super().__init__(f"cluster {batchid} stopped after its checkpoint in {where}",
                         hint=f"restore it with 'pcocc alloc -r {where} ...'")
        self.where = where


def signal_of(rec: VmRecord) -> int:
    """The signal a VM's node process says it got (SIGTERM when it names none valid)."""
    value = rec.extra.get(SIGNAL_NOTE)
    valid = {int(s) for s in signal.Signals}
    return value if isinstance(value, int) and value in valid else signal.SIGTERM


def describe(err: BaseException) -> str:
    """One line on why the cluster failed, for its state record."""
    if isinstance(err, Interrupted):
        return str(err)
    if isinstance(err, PcoccError):
        return err.message
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    return f"{type(err).__name__}: {err}"
