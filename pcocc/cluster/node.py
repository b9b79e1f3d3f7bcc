"""``pcocc internal run``: the node process of one VM.

It takes the cluster definition from the launcher (see :mod:`pcocc.cluster.noderun`; else
from etcd), builds and starts the VM of its rank in a private run dir, publishes the VM's state under a lease kept alive while QEMU runs (so a dead node
process makes its VM disappear from etcd), publishes ``address:port`` of each listening
forward, ssh and public ones (``rnat/<rank>/<guest port>``, on the node's address that the
other nodes reach, see :func:`pcocc.cluster.noderun.node_address`; private forwards have no
listener, see :mod:`pcocc.net.user`), and stops QEMU and cleans up when QEMU exits, when
the launcher's definition key vanishes, on SIGTERM (srun or scancel stopping the step), or
when its lease is lost because etcd did not answer for longer than the lease TTL.

Meanwhile it answers the checkpoint requests of ``pcocc ckpt`` (see
:mod:`pcocc.cluster.checkpoint`): it saves its VM, and stops or resumes it as decided. With
``restore``, the VM starts from its state in that checkpoint, with its saved ssh host key.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pcocc import proc, timing
from pcocc.cluster import ckptrestore, keptlogs, rundir
from pcocc.cluster.definition import ClusterDefinition, VmEntry
from pcocc.cluster.lease import DEFAULT_LEASE_TTL_S
from pcocc.cluster.ports import Kv, Lease, VmHandle
from pcocc.cluster.stored import check_settings
from pcocc.cluster.record import ClusterRecord
from pcocc.signals import (
    Interrupted,
    deferred_signals,
    raising_on_signals,
    signals_set,
)
from pcocc.cluster.vmstate import (
    BOOTING,
    FAILED,
    KEPT_LOG_NOTE,
    RUNNING,
    SIGNAL_NOTE,
    STOPPED,
    VmRecord,
)
from pcocc.errors import NotFound, PcoccError
from pcocc.kv import keys

log = logging.getLogger(__name__)

#: How long a failed node keeps its 'failed' record visible before it exits.
FAILED_LINGER_S = 5.0
#: How long a signalled node keeps its 'stopped' record visible (the batch system sends
#: SIGKILL after its KillWait, 30 s by default)
SIGNAL_LINGER_S = 2.0
#: How long a VM stopped after a checkpoint waits for the launcher to end the cluster
CKPT_LINGER_S = 30.0
SSH_PORT = 22

#: Builds the VM of one rank: (definition, entry, node dir, host key file) -> handle. The
#: node dir is private to this VM; the VM may use a subdirectory of it as its run dir.
MakeVm = Callable[[ClusterDefinition, VmEntry, Path, Path], VmHandle]


@dataclass
class NodeSettings:
    user: str
    batchid: str
    rank: int
    host: str = field(default_factory=socket.gethostname)
    #: address the VM's forwards listen on and that is published; None: the host name
    address: str | None = None
    #: the batch system's node name (Slurm's ``SLURMD_NODENAME``), shown to users
    node: str | None = field(default_factory=lambda: os.environ.get("SLURMD_NODENAME") or None)
    tick_s: float = 0.5
    linger_s: float = FAILED_LINGER_S
    lease_ttl_s: int = DEFAULT_LEASE_TTL_S
    #: a checkpoint directory to restore the VM from
    restore: Path | None = None
    #: how long to wait for the launcher to publish the definition (a node process started
    #: before it: see pcocc.cluster.earlynodes); 0: it must be there
    definition_wait_s: float = 0.0
    #: the cluster's definition, when the node process got it from the launcher (then QEMU
    #: starts before etcd is used: see run()); None: read from etcd first
    definition: ClusterDefinition | None = None


def generate_host_key(vm_dir: Path, name: str) -> Path:
    """A fresh ed25519 host key for the VM (private file 0600, public next to it)."""
    path = vm_dir / "ssh_host_ed25519_key"
    for p in (path, path.with_suffix(".pub")):
        p.unlink(missing_ok=True)
    proc.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", path],
        what="generate the VM's ssh host key",
    )
    path.chmod(0o600)
    return path


def console_tail(path: str | None, max_lines: int = 5) -> str:
    """The last non-empty lines of a console log, joined with ' | '."""
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return " | ".join(lines[-max_lines:])


class NodeProcess:
    def __init__(self, kv: Kv, settings: NodeSettings, make_vm: MakeVm):
        self.kv = kv
        self.s = settings
        self.make_vm = make_vm
        self.record = VmRecord(
            rank=settings.rank,
            host=settings.host,
            status=BOOTING,
            node_pid=os.getpid(),
            address=settings.address,
            node=settings.node,
        )
        self._lease: Lease | None = None
        #: what run() holds until it ends (the lease, once taken)
        self._held: contextlib.ExitStack | None = None
        self._def_key = keys.cluster_definition(settings.user, settings.batchid)
        #: the id of the last checkpoint request this node answered
        self._ckpt_done: str | None = None
        #: set by whoever runs this node in a thread (signals reach only the main thread)
        self.stop_requested = threading.Event()

    def run(self) -> int:
        """Run the VM until it stops or we are told to; 0 when stopped on request.

        With the definition given (``settings.definition``), QEMU starts before etcd is
        first used (unless the VM registers entries there first: private networks): the
        etcd client's import and login overlap the guest's boot. The node checks then that
        the launcher published that very definition, and publishes its record."""
        given = self.s.definition
        definition = given or self._read_definition()
        timing.mark("node: definition read")
        entry = definition.vm(self.s.rank)
        vm_dir = rundir.vm_dir(self.s.batchid, self.s.rank)
        vm: VmHandle | None = None
        try:
            with raising_on_signals(), contextlib.ExitStack() as held:
                self._held = held
                try:
                    host_key = None
                    if self.s.restore is not None:
                        host_key = ckptrestore.restore_host_key(self.s.restore, self.s.rank,
                                                                vm_dir)
                    host_key = host_key or generate_host_key(vm_dir, entry.name)
                    self.record.host_key = host_key.with_suffix(".pub").read_text().strip()
                    timing.mark("node: host key generated")
                    vm = self.make_vm(definition, entry, vm_dir, host_key)
                    timing.mark("node: VM settings built (image, accelerator probe)")
                    self.record.console_log = vm.console_log
                    # e.g. the VM's ports on private networks, registered before QEMU sends
                    kv_entries = getattr(vm, "kv_entries", {})
                    start = getattr(vm, "start", None)
                    if given is not None and not kv_entries and start is not None:
                        start()
                    if given is not None:
                        self._check_published(given)
                    self._publish()
                    for key, value in kv_entries.items():
                        self.kv.put(key, value, self._lease)
                    info = vm.launch()
                    from pcocc.net.jobsetup import vm_forwards

                    # ethernet reverse NAT: ports that root's setup took for this VM
                    eth_forwards = vm_forwards(entry.networks, self.s.batchid, self.s.rank,
                                               os.environ)
                    self.record.pid = info.pid
                    self.record.ssh_port = info.ssh_port
                    if info.ssh_port is None:
                        self.record.ssh_port = eth_forwards.get(SSH_PORT)
                    self.record.qmp_socket = info.qmp_socket
                    self.record.console_socket = info.console_socket
                    self.record.console_log = info.console_log
                    self.record.extra = dict(info.extra)
                    self.record.status = RUNNING
                    self._publish()
                    timing.mark("node: RUNNING published")
                    forwards = dict(info.forwards)
                    if not forwards and info.ssh_port is not None:
                        forwards[SSH_PORT] = info.ssh_port
                    for guest, port in eth_forwards.items():
                        forwards.setdefault(guest, port)
                    published = self.s.address or self.s.host
                    for guest, host_port in sorted(forwards.items()):
                        self.kv.put(
                            keys.rnat(self.s.user, self.s.batchid, self.s.rank, guest),
                            f"{published}:{host_port}",
                            self._lease,
                        )
                    return self._supervise(vm)
                except Interrupted as err:
                    self._report_signal(err.signum)
                    return 0
                except PcoccError as err:
                    if self._etcd_lost():
                        # the launcher lost etcd too and reports it: one line here is enough
                        log.warning("vm%d: stopping the VM: %s", self.s.rank, err.message)
                        return 1
                    self._report_failure(FAILED, err.message)
                    raise
                except Exception as err:
                    self._report_failure(FAILED, f"{type(err).__name__}: {err}")
                    raise
                finally:
                    with deferred_signals():
                        if vm is not None:
                            try:
                                vm.shutdown()
                            except Exception as err:
                                log.warning("vm%d: shutdown failed: %s", self.s.rank, err)
        except Interrupted:
            return 0
        finally:
            rundir.remove_tree(vm_dir)
            rundir.remove_empty_parents(vm_dir)

    def _read_definition(self, check: bool = True) -> ClusterDefinition:
        deadline = time.monotonic() + self.s.definition_wait_s
        text = self.kv.get(self._def_key)
        while text is None and time.monotonic() < deadline:
            time.sleep(0.005)
            text = self.kv.get(self._def_key)
        if text is None:
            raise NotFound(
                f"cluster {self.s.batchid} has no definition in etcd",
                hint="'pcocc internal run' is started by 'pcocc internal launcher'",
            )
        definition = ClusterRecord.from_json(text, self._def_key, self.s.batchid).definition
        if check:
            check_settings(definition)  # the validation of the user's configuration files
        return definition

    def _supervise(self, vm: VmHandle) -> int:
        """Wait for QEMU to exit or the launcher's definition to vanish; answer the
        checkpoint requests meanwhile."""
        from pcocc.cluster import checkpoint  # once QEMU runs (issue 18)

        user, batchid = self.s.user, self.s.batchid

        def check(snapshot: dict[str, str]) -> tuple[str, object] | None:
            if self._lease is not None:
                self._lease.check()  # etcd gone for longer than the TTL: stop the VM
            status = vm.wait(0)
            if status is not None:
                return ("exited", status)
            if self._def_key not in snapshot or self.stop_requested.is_set():
                return ("released", None)
            request = checkpoint.pending_request(snapshot, user, batchid, self._ckpt_done)
            if request is not None:
                return ("checkpoint", request)
            return None

        while True:
            with signals_set(self.stop_requested) as received:
                what, status = self.kv.wait_for(
                    keys.cluster_prefix(user, batchid), check, None, self.s.tick_s
                )
            if received:
                raise Interrupted(received[0])
            if what != "checkpoint":
                break
            if self._checkpoint(vm, status):
                return 0
        if what == "released":
            log.info("vm%d: the cluster is being torn down; stopping", self.s.rank)
            return 0
        self._report_failure(STOPPED, f"QEMU {proc.ended(status)}")
        return 1

    def _checkpoint(self, vm: VmHandle, request: Any) -> bool:
        """Save the VM for ``request`` (a checkpoint.Request), then stop it (True) or resume
        it, as decided."""
        from dataclasses import replace

        from pcocc.cluster import checkpoint

        self._ckpt_done = request.id
        key = keys.ckpt_report(self.s.user, self.s.batchid, self.s.rank)
        host = self.s.host
        log.info("vm%d: saving it for a checkpoint", self.s.rank)
        saved = checkpoint.save_vm(vm, request, self.s.rank, host)
        self.kv.put(key, replace(saved, id=request.id, host=host).to_json(), self._lease)
        decision = (checkpoint.ABORT if saved.status == checkpoint.FAILED else
                    checkpoint.wait_decision(self.kv, self.s.user, self.s.batchid, request))
        if decision == checkpoint.STOP:
            self.record.status = STOPPED
            self.record.error = f"checkpointed to {request.dest}"
            self.record.extra[checkpoint.CKPT_NOTE] = request.dest
            self._publish()
            self.kv.put(key, checkpoint.Report(request.id, checkpoint.STOPPED, host).to_json(),
                        self._lease)
            self._linger(CKPT_LINGER_S)  # until the launcher ends the cluster
            return True
        try:
            vm.resume_after_checkpoint()
        except PcoccError as err:
            log.warning("vm%d: could not resume after the checkpoint: %s", self.s.rank,
                        err.message)
        if saved.status != checkpoint.FAILED:
            self.kv.put(key, checkpoint.Report(request.id, checkpoint.RESUMED, host).to_json(),
                        self._lease)
        return False

    def _etcd_lost(self) -> bool:
        try:
            if self._lease is not None:
                self._lease.check()
        except PcoccError:
            return True
        return False

    def _report_signal(self, signum: int) -> None:
        """Tell the launcher that a signal, not a failure, stops this VM: the batch system
        signals every node process when the job is cancelled or reaches its time limit,
        and the launcher then says so instead of reporting a lost node. Nothing to say when
        the launcher itself released the cluster."""
        try:
            if self.kv.get(self._def_key) is None:
                return
            self.record.status = STOPPED
            self.record.error = f"its node process received {signal.Signals(signum).name}"
            self.record.extra[SIGNAL_NOTE] = signum
            self._publish()
        except Exception as err:  # the launcher then reports the VM as gone
            log.debug("vm%d: could not publish the signal: %s", self.s.rank, err)
            return
        self._linger(min(self.s.linger_s, SIGNAL_LINGER_S))

    def _report_failure(self, status: str, error: str) -> None:
        self.record.status = status
        self.record.error = error
        tail = console_tail(self.record.console_log)
        if tail:
            # the run dir goes away with the cluster: keep the last words of the guest
            self.record.extra["console_tail"] = tail
        kept = keptlogs.keep(self.s.batchid, self.s.rank, self.record.console_log)
        if kept is not None:
            self.record.extra[KEPT_LOG_NOTE] = str(kept)
        try:
            self._publish()
        except Exception as err:
            log.warning("vm%d: could not publish its failure: %s", self.s.rank, err)
            return
        self._linger(self.s.linger_s)

    def _linger(self, seconds: float) -> None:
        """Keep the record visible a moment (the launcher watches for it) until the
        launcher releases the cluster; a signal ends it."""
        deadline = time.monotonic() + seconds
        try:
            while (
                time.monotonic() < deadline
                and not self.stop_requested.is_set()
                and self.kv.get(self._def_key) is not None
            ):
                time.sleep(min(self.s.tick_s, 0.2))
        except Interrupted:
            pass

    def _publish(self) -> None:
        """Put this VM's record, under the node's lease (taken on the first publish)."""
        if self._lease is None:
            assert self._held is not None, "publish only while run() holds the VM"
            self._lease = self._held.enter_context(self.kv.lease(self.s.lease_ttl_s))
        self.kv.put(
            keys.vm_state(self.s.user, self.s.batchid, self.s.rank),
            self.record.to_json(),
            self._lease,
        )

    def _check_published(self, definition: ClusterDefinition) -> None:
        """The launcher published ``definition`` (this node's, from its environment): the
        cluster lives, and the node builds the VM the others see.

        :raise PcoccError: etcd holds another definition for this cluster
        """
        if self._read_definition(check=False).to_json() != definition.to_json():
            raise PcoccError(
                f"cluster {self.s.batchid}: the definition in etcd differs from the one"
                " this node process was started with",
                hint="is another launcher using this cluster id?",
            )
