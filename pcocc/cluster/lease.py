"""The time to live of the etcd leases of launchers and node processes.

A launcher or node process that etcd does not hear from for this long is dead to the rest of
the cluster: its keys vanish. It is also how long an etcd outage can last without ending the
cluster. ``$PCOCC_LEASE_TTL`` (whole seconds) overrides it, e.g. for tests; the launcher
passes its environment to the node processes, so they use the same value.
"""

from __future__ import annotations

from collections.abc import Mapping

from pcocc.errors import UsageError

LEASE_TTL_VAR = "PCOCC_LEASE_TTL"
DEFAULT_LEASE_TTL_S = 10
MIN_LEASE_TTL_S = 2


def lease_ttl_s(env: Mapping[str, str]) -> int:
    """``$PCOCC_LEASE_TTL`` or the default; :raise UsageError: not a whole number >= 2."""
    text = env.get(LEASE_TTL_VAR, "").strip()
    if not text:
        return DEFAULT_LEASE_TTL_S
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < MIN_LEASE_TTL_S:
        raise UsageError(
            f"{LEASE_TTL_VAR}={text!r} is not a whole number of seconds >= {MIN_LEASE_TTL_S}"
        )
    return value
