"""Freeze a guest's file systems through its agent (``guest-fsfreeze-freeze``/``-thaw``)
for an instant, such as the start of a disk copy, and thaw them on every path.

A guest left frozen hangs every writer in it, so the thaw is tried again a few times, also
after an error or Ctrl-C during the frozen instant, and a thaw that never succeeds is an
error that says so.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from pcocc import timing
from pcocc.errors import PcoccError
from pcocc.vm.agent import AgentError

log = logging.getLogger(__name__)

#: freezing syncs the guest's dirty data first: it may take a while under TCG
FREEZE_TIMEOUT_S = 60.0
THAW_TIMEOUT_S = 10.0
THAW_ATTEMPTS = 3


class Agent(Protocol):
    def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                timeout_s: float = 5.0) -> Any: ...


class FreezeError(PcoccError):
    """The guest's file systems could not be frozen, or stay frozen."""


@contextlib.contextmanager
def frozen(agent: Agent, vm: str, *, sleep: Callable[[float], None] = time.sleep
           ) -> Iterator[None]:
    """Keep the guest file systems of ``vm`` frozen inside the block.

    :raise FreezeError: the freeze failed (the guest is thawed again), or the thaw failed
        (the message says the guest may still be frozen)
    """
    try:
        agent.execute("guest-fsfreeze-freeze", timeout_s=FREEZE_TIMEOUT_S)
    except BaseException as err:
        # A refusal changed nothing (and the guest may be frozen by another save, which
        # thaws it itself); a freeze cut short may have frozen some file systems.
        if not isinstance(err, AgentError):
            with contextlib.suppress(FreezeError):
                _thaw(agent, vm, sleep)
        if isinstance(err, PcoccError):
            raise FreezeError(f"cannot freeze the file systems of {vm}: {err}",
                              hint="pass -s to save without freezing them") from err
        raise
    timing.mark("fsfreeze: frozen")
    try:
        yield
    finally:
        _thaw(agent, vm, sleep)
        timing.mark("fsfreeze: thawed")


def _thaw(agent: Agent, vm: str, sleep: Callable[[float], None]) -> None:
    last: PcoccError | None = None
    for attempt in range(THAW_ATTEMPTS):
        try:
            agent.execute("guest-fsfreeze-thaw", timeout_s=THAW_TIMEOUT_S)
            return
        except PcoccError as err:
            last = err
            log.debug("thaw of %s, attempt %d: %s", vm, attempt + 1, err)
            sleep(0.5)
    raise FreezeError(
        f"cannot thaw the file systems of {vm}; they may still be frozen: {last}",
        hint=f"thaw them inside {vm} ('fsfreeze -u MOUNTPOINT' as root), or reset it "
             f"with 'pcocc reset {vm}'")
