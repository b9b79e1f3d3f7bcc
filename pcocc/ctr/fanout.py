"""A cold ``pcocc run -N``: one node reads the repository, the others get the image node to node.

When the container cache is node-local (``repos.yaml: cache.shared: false``, the default),
the nodes of a run's job step form a binary tree in ``SLURM_NODEID`` order: node 0 reads
the image's layer blobs from the repository (once) and keeps them in its cache entry; node
``i > 0`` receives them from node ``(i - 1) // 2`` and then serves nodes ``2i + 1`` and
``2i + 2``. The last node is ``floor(log2(N))`` hops from node 0, and no node sends more
than twice, so a cold start on N nodes costs about one repository read plus that many
copies between nodes instead of N concurrent reads of the repository.

Transport: node ``i``'s task starts the sender with ``srun --jobid=JOB --overlap
--nodelist=PARENT pcocc internal cache-send ...`` (Slurm's authenticated channel: only the
job's owner starts steps in it) and hands it, on the step's standard input, the address,
port and one-time token of a TCP port it listens on; the sender connects back and writes
the layers (:mod:`pcocc.ctr.fanoutnet`). The receiver trusts none of the bytes: each blob
must have the size and sha256 that the manifest of its own repository gives
(:mod:`pcocc.repo.cachelayers`). When the parent cannot send (its entry holds no
layers, a failure, a blob that does not verify), the node reads the repository itself,
with a warning: slower, never wrong.

An entry already in a node's cache moves nothing: the run uses it as it is.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pcocc import proc
from pcocc.errors import NotFound, PcoccError, TimedOut
from pcocc.repo.cachelayers import (
    LAYERS_DIR, image_layers, layer_file, receive_layers, send_layers,
)  # fmt: skip
from pcocc.repo.model import OciImage

log = logging.getLogger(__name__)

#: how long a sender waits for its own node's entry (it may be receiving it still)
SEND_WAIT_S = 600.0
_POLL_S = 0.05


def parent_index(i: int) -> int | None:
    """The node that sends to node ``i`` (None: node 0 reads the repository)."""
    return None if i == 0 else (i - 1) // 2


def children(i: int, n: int) -> list[int]:
    """The nodes that node ``i`` of ``n`` sends to (at most two)."""
    return [c for c in (2 * i + 1, 2 * i + 2) if c < n]


def plan(n: int) -> dict[int, list[int]]:
    """Who sends to whom for ``n`` nodes: {sender: [receivers]}."""
    return {i: children(i, n) for i in range(n)}


def hops(i: int) -> int:
    """Copies between node 0 and node ``i`` (its depth in the tree)."""
    depth = 0
    while i:
        i = (i - 1) // 2
        depth += 1
    return depth


@dataclass
class Fanout:
    """This task's place in the tree of its job step."""

    job_id: str
    index: int  #: SLURM_NODEID
    count: int  #: nodes of the step
    nodelist: str  #: SLURM_STEP_NODELIST (a Slurm host list)
    _nodes: list[str] = field(default_factory=list, repr=False)
    name: str = "node"  #: this node's (SLURMD_NODENAME)

    def node(self, i: int) -> str:
        """The name of the step's node ``i`` (the host list is expanded on first use)."""
        if not self._nodes:
            from pcocc.batch.slurm import hostnames_argv

            res = proc.run(hostnames_argv(self.nodelist), what="expand the step's node list",
                           timeout_s=60)
            self._nodes = res.stdout.split()
        return self._nodes[i]


def from_env(env: Mapping[str, str] | None = None, *, shared: bool = False) -> Fanout | None:
    """The tree of a task of ``pcocc run -N`` under Slurm; None when there is nothing to
    copy (a shared cache, one node, not a Slurm step)."""
    env = os.environ if env is None else env
    job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    index, count = env.get("SLURM_NODEID", ""), env.get("SLURM_STEP_NUM_NODES", "")
    nodelist = env.get("SLURM_STEP_NODELIST", "")
    if shared or not job or not index.isdigit() or not count.isdigit() or not nodelist:
        return None
    if int(count) < 2:
        return None
    name = env.get("SLURMD_NODENAME") or socket.gethostname()
    return Fanout(job, int(index), int(count), nodelist, name=name)


def send_argv(fan: Fanout, node: str, mode: str, image: OciImage, digests: list[str]) -> list[str]:
    from pcocc.batch.slurm import srun_one_argv
    from pcocc.selfcmd import pcocc_argv

    cmd = [*pcocc_argv(), "internal", "cache-send", mode, image.manifest_digest, *digests]
    return srun_one_argv(fan.job_id, node, cmd)


def fetcher(fan: Fanout, image: OciImage, mode: str) -> Callable[[Path], bool]:
    """The ``fetch`` of :meth:`ContainerCache.prepare` for this node (see the module)."""

    def fetch(dest: Path) -> bool:
        parent = parent_index(fan.index)
        if parent is None:
            return False  # node 0: the repository
        from pcocc.repo.cachelayers import unique_layer_digests

        node = fan.node(parent)
        argv = send_argv(fan, node, mode, image, unique_layer_digests(image))
        t0 = time.monotonic()
        try:
            first = _pull(argv, image, dest, f"layers of {image.manifest_digest} from node {node}")
        except PcoccError as err:
            log.warning("%s; reading the repository instead", err.message)
            return False
        end = time.monotonic()
        # benchmarks/fanout.py reads this line: the wait for the sender, then the copy
        log.info("received %s from %s: %d bytes in %.3f s after a wait of %.3f s",
                 image.manifest_digest, node, sum(s for _, s in image_layers(image)),
                 end - first, first - t0)
        return True

    return fetch


def _pull(argv: list[str], image: OciImage, dest: Path, label: str) -> float:
    """Start the sender, receive the layers on its connection; returns when the data began."""
    from pcocc.ctr.fanoutnet import Listener

    listener = Listener(receiver_address())
    try:
        with tempfile.TemporaryFile() as errors:
            p = proc.spawn(argv, stdin=proc.PIPE, stdout=proc.DEVNULL, stderr=errors)
            assert p.stdin is not None
            try:
                p.stdin.write(listener.offer())
                p.stdin.close()
                with listener.accept(p.poll, SEND_WAIT_S + 60) as conn, conn.makefile("rb") as stream:
                    first = time.monotonic()
                    receive_layers(stream, image, dest, label)
            except BaseException:
                p.kill()
                p.wait()
                errors.seek(0)
                log.debug("sender's messages: %s", errors.read().decode(errors="replace"))
                raise
            if p.wait() != 0:
                errors.seek(0)
                tail = errors.read().decode(errors="replace").strip().splitlines()[-1:]
                raise PcoccError(f"{label}: the sender failed ({'; '.join(tail) or p.returncode})")
    except OSError as err:
        raise PcoccError(f"{label}: {err}") from err
    finally:
        listener.close()
    return first


def receiver_address() -> str:
    """The address of this node that the job's other nodes reach (as for the job's etcd:
    the one that routes to the Slurm controller, or ``$PCOCC_NODE_ADDRESS``)."""
    from pcocc.batch.slurm import parse_controller_hosts, show_config_argv
    from pcocc.netaddr import ADDRESS_VAR, reachable_address

    override = os.environ.get(ADDRESS_VAR)
    hosts: list[str] = []
    if not override:
        res = proc.run(show_config_argv(), check=False, timeout_s=60)
        hosts = parse_controller_hosts(res.stdout) if res.returncode == 0 else []
    return reachable_address(hosts, override)


def serve(cache, mode: str, manifest_digest: str, digests: list[str],
          offer: str | None = None, wait_s: float = SEND_WAIT_S) -> int:
    """``pcocc internal cache-send``: wait until this node's entry is complete, then send
    its kept layers ``digests`` to the receiver of ``offer`` (its line on our standard
    input, see :mod:`pcocc.ctr.fanoutnet`); returns the bytes sent.

    :raise NotFound: the entry keeps no layers (prepared by a single-node run)
    :raise TimedOut: the entry did not appear within ``wait_s``
    """
    from pcocc.ctr.fanoutnet import connect, parse_offer
    from pcocc.repo.cache import _key
    from pcocc.repo.digest import is_digest

    key = _key(manifest_digest, mode)
    bad = [d for d in digests if not is_digest(d)]
    if bad:
        raise NotFound(f"'{bad[0]}' is not a layer digest")
    address, port, token = parse_offer(offer if offer is not None else sys.stdin.readline(200))
    entry = cache.entries_dir / key
    # the layers are published before the entry is unpacked, then kept in it
    dirs = [cache.staged_layers(key), entry / LAYERS_DIR]
    deadline = time.monotonic() + wait_s
    while not dirs[0].is_dir() and not (entry / "meta.json").is_file():
        if time.monotonic() >= deadline:
            raise TimedOut(f"cache entry {key} did not appear within {wait_s:g} s")
        time.sleep(_POLL_S)
    with cache.lease(key):
        missing = [d for d in digests if not any(layer_file(x, d).is_file() for x in dirs)]
        if missing:
            raise NotFound(f"cache entry {key} keeps no layer blobs to send")
        with connect(address, port, token) as sock:
            return send_layers(dirs, digests, sock)


__all__ = ["Fanout", "children", "fetcher", "from_env", "hops", "parent_index", "plan", "serve"]
