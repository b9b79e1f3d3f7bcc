"""The life of a virtual cluster as explicit states with allowed transitions.

::

    defined -> allocating -> booting -> running -> tearing-down -> done
        \\            \\          \\          \\            \\
         +------------+----------+----------+-------------+--> failed

A failure while allocating, booting or running goes through ``tearing-down`` (VMs are stopped,
keys removed) and ends in ``failed``; ``done`` and ``failed`` are final.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from pcocc.errors import PcoccError


class ClusterState(enum.Enum):
    DEFINED = "defined"
    ALLOCATING = "allocating"
    BOOTING = "booting"
    RUNNING = "running"
    TEARING_DOWN = "tearing-down"
    DONE = "done"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (ClusterState.DONE, ClusterState.FAILED)


S = ClusterState
ALLOWED: dict[ClusterState, frozenset[ClusterState]] = {
    S.DEFINED: frozenset({S.ALLOCATING, S.BOOTING, S.TEARING_DOWN, S.FAILED}),
    S.ALLOCATING: frozenset({S.BOOTING, S.TEARING_DOWN, S.FAILED}),
    S.BOOTING: frozenset({S.RUNNING, S.TEARING_DOWN}),
    S.RUNNING: frozenset({S.TEARING_DOWN}),
    S.TEARING_DOWN: frozenset({S.DONE, S.FAILED}),
    S.DONE: frozenset(),
    S.FAILED: frozenset(),
}


class StateError(PcoccError):
    """A transition that the cluster's current state does not allow (a bug in pcocc)."""


class ClusterLifecycle:
    """Current state, the error that caused a failure, and a callback on every change."""

    def __init__(self, on_change: Callable[[ClusterState], None] | None = None):
        self.state = S.DEFINED
        self.error: str | None = None
        self._on_change = on_change

    def to(self, new: ClusterState) -> None:
        if new not in ALLOWED[self.state]:
            raise StateError(f"cluster cannot go from '{self.state.value}' to '{new.value}'")
        self.state = new
        if self._on_change is not None:
            self._on_change(new)

    def fail(self, error: str) -> None:
        """Record the first error; the teardown then ends in ``failed``."""
        if self.error is None:
            self.error = error

    def tear_down(self) -> None:
        """Enter ``tearing-down`` unless already there or final (idempotent)."""
        if self.state is S.TEARING_DOWN or self.state.is_final:
            return
        self.to(S.TEARING_DOWN)

    def finish(self) -> ClusterState:
        """Leave ``tearing-down`` for ``done`` or ``failed`` depending on the recorded error."""
        self.tear_down()
        if not self.state.is_final:
            self.to(S.FAILED if self.error else S.DONE)
        return self.state
