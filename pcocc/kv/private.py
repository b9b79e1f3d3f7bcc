"""A private etcd for one job, when no shared etcd is configured (local mode).

The server lives in the job's run directory and on free loopback ports; it is stopped, with
all its processes, when the ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from pcocc.kv.client import ENDPOINTS_VAR
from pcocc.kv.server import EtcdServer


@contextlib.contextmanager
def private_etcd(run_dir: str | os.PathLike) -> Iterator[dict[str, str]]:
    """Run etcd in ``run_dir/etcd`` for the block; yield the environment that points at it.

    :raise ToolMissing: etcd is not installed
    :raise ServiceUnavailable: it did not start (the message names its log file)
    """
    with EtcdServer(Path(run_dir) / "etcd") as server:
        yield {ENDPOINTS_VAR: ",".join(server.endpoints)}
