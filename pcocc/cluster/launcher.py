"""``pcocc internal launcher``: runs inside the allocation, owns the cluster's life.

It publishes the definition (leased), starts one node process per VM through the batch
manager, waits (etcd watch) until every VM runs, runs the user's command or shell with
``PCOCC_JOB_ID`` set, and always tears down: stops the node processes and removes every key
of the cluster — after the command, on Ctrl-C, scancel (SIGTERM), a node or QEMU failure, a
boot timeout, or the loss of etcd.

An etcd outage shorter than the lease TTL is survived (the keep-alive thread retries, the VMs
keep running). A longer one ends the cluster with one message naming etcd and its endpoint;
the teardown then skips etcd (the keys went with the leases).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pcocc import proc, timing
from pcocc.cluster import rundir
from pcocc.cluster.definition import ClusterDefinition
from pcocc.cluster.checkpoint import CKPT_NOTE
from pcocc.cluster.failures import (
    ClusterCheckpointed,
    ClusterFailed,
    ClusterStopped,
    describe,
    signal_of,
)
from pcocc.cluster.lease import DEFAULT_LEASE_TTL_S
from pcocc.cluster.ports import Batch, Kv, Lease, TaskGroup
from pcocc.cluster.record import ClusterRecord
from pcocc.cluster.sshkeys import prepare_ssh_files
from pcocc.signals import Interrupted, deferred_signals, raising_on_signals
from pcocc.cluster.state import ClusterLifecycle, ClusterState
from pcocc.cluster.vmstate import (
    ACCEL_NOTE,
    FAILED,
    KEPT_LOG_NOTE,
    RUNNING,
    SIGNAL_NOTE,
    STOPPED,
    VmRecord,
)
from pcocc.errors import Corrupt, PcoccError, ServiceUnavailable, TimedOut
from pcocc.kv import keys

log = logging.getLogger(__name__)


def _vm_state_rank(key: str) -> int | None:
    """Rank of a ``.../vms/<rank>/state`` key, None for any other key."""
    try:
        parsed = keys.parse_cluster_key(key)
    except Corrupt:
        return None
    return parsed.rank if parsed.kind == "vm_state" else None


@dataclass
class LaunchSettings:
    user: str
    batchid: str
    #: argv of one node process (``pcocc internal run``), started once per VM
    node_argv: list[str]
    #: the ``-E`` command (run with ``sh -c``) or None for the interactive shell
    command: str | None = None
    #: a batch job: without a command, keep the cluster until a signal instead of a shell;
    #: with one, state its exit status at the end (the job's output file is all users see)
    hold: bool = False
    shell: str = "/bin/sh"
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    host: str = field(default_factory=socket.gethostname)
    tick_s: float = 0.5
    #: remove the cluster's run dir on this host at the end (off when something else, like a
    #: private etcd, still lives in it and its owner removes it)
    remove_run_dir: bool = True
    lease_ttl_s: int = DEFAULT_LEASE_TTL_S
    #: the job's name, published in the cluster record
    job_name: str = ""
    #: argv of the switch of a private network (``pcocc internal vswitch``), started once per
    #: private network of the cluster before the VMs; None: no private networks
    switch_argv: list[str] | None = None
    #: how long the teardown waits for the node processes to end on their own
    release_timeout_s: float = 20.0
    #: variables for the node processes only (the definition), not for the command
    node_env: dict[str, str] = field(default_factory=dict)


class Launcher:
    def __init__(
        self,
        kv: Kv,
        batch: Batch,
        definition: ClusterDefinition,
        settings: LaunchSettings,
        report: Callable[[str], None] = lambda msg: log.info("%s", msg),
        tasks: TaskGroup | None = None,
    ):
        """``tasks``: the node processes, when already started (pcocc.cluster.earlynodes)."""
        self.kv = kv
        self.batch = batch
        self.definition = definition
        self.s = settings
        self.report = report
        self.lifecycle = ClusterLifecycle(on_change=self._publish)
        self.prefix = keys.cluster_prefix(settings.user, settings.batchid)
        self._lease: Lease | None = None
        self._tasks = tasks
        self._command: proc.Popen | None = None
        self._switches: list[proc.Popen] = []
        self._seen: dict[int, VmRecord] = {}
        #: etcd is known to be gone: the teardown does not wait for it
        self._etcd_lost = False
        #: every VM ran: their node processes watch the definition key
        self._booted = False

    # -- the whole life -------------------------------------------------------------------
    def run(self) -> int:
        """Start the cluster, run the command, tear down; return the command's exit status.

        :raise ClusterFailed: a VM failed, disappeared or did not boot in time
        :raise Interrupted: a signal stopped the cluster (after the teardown)
        """
        try:
            with raising_on_signals():
                with self.kv.lease(self.s.lease_ttl_s) as lease:
                    self._lease = lease
                    try:
                        return self._start_and_run()
                    except ClusterCheckpointed as done:
                        self.report(done.message)
                        return 0
                    except BaseException as err:
                        self.lifecycle.fail(describe(err))
                        if isinstance(err, ServiceUnavailable) or self._lease_lost():
                            self._etcd_lost = True
                        if isinstance(err, Interrupted):
                            raise Interrupted(
                                err.signum, f"cluster {self.s.batchid} stopped by"
                            ) from None
                        raise
                    finally:
                        self._teardown()
        finally:
            if self.s.remove_run_dir:
                rundir.remove_cluster_dir(self.s.batchid)

    def _start_and_run(self) -> int:
        self.lifecycle.to(ClusterState.BOOTING)
        n = self.definition.size
        env = dict(self.s.env)
        env["PCOCC_JOB_ID"] = self.s.batchid
        if self.definition.networks and self.s.switch_argv:
            from pcocc.net.private import start_switches

            nets = list(self.definition.networks)
            argv = self.s.switch_argv
            self._switches = start_switches(self.kv, argv, env, self.s.user, self.s.batchid, nets)
        # full-node: one VM per node (the keyword only then: fakes of tests may lack it)
        placement = {"one_per_node": True} if self.definition.full_node else {}
        if self._tasks is None:
            self._tasks = self.batch.launch_tasks(
                self.s.batchid, n, self.s.node_argv, {**env, **self.s.node_env}, **placement
            )
        timing.mark("launcher: node processes spawned")
        self.report(f"booting {n} VM{'s' if n > 1 else ''}")
        self._wait_running()
        timing.mark("launcher: saw every VM running (etcd watch)")
        self._booted = True
        self.lifecycle.to(ClusterState.RUNNING)
        self._report_notes()
        self.report(f"cluster {self.s.batchid} is running: " + ", ".join(
            f"{rec.name}@{rec.place}" for _, rec in sorted(self._seen.items())))
        prepare_ssh_files(rundir.cluster_dir(self.s.batchid), self.s.batchid, self._seen)
        return self._run_command(env)

    # -- boot -----------------------------------------------------------------------------
    def _wait_running(self) -> None:
        timeout_s = self.definition.boot_timeout_s
        try:
            self.kv.wait_for(
                keys.vms_prefix(self.s.user, self.s.batchid),
                lambda snap: True if self._check(snap, booting=True) else None,
                timeout_s,
                self.s.tick_s,
            )
        except TimedOut:
            missing = [
                f"vm{r}"
                for r in range(self.definition.size)
                if r not in self._seen or self._seen[r].status != RUNNING
            ]
            logs = [
                f"{rec.name}: {rec.place}:{rec.console_log}"
                for r, rec in sorted(self._seen.items())
                if rec.console_log and rec.status != RUNNING
            ]
            accel = {vm.settings.get("accel", "auto") for vm in self.definition.vms}
            raise ClusterFailed(
                f"{', '.join(missing)} not running after {timeout_s:g} s"
                f" (accelerator: {', '.join(sorted(accel))})",
                hint=("console logs: " + "; ".join(logs))
                if logs
                else "no node process reported; check the batch job's output",
            ) from None

    def _check(self, snapshot: Mapping[str, str], *, booting: bool) -> bool:
        """Raise ClusterFailed on any failed or vanished VM; True when all are running.

        :raise ServiceUnavailable: the lease was lost with etcd
        """
        if self._lease is not None:
            self._lease.check()
        records: dict[int, VmRecord] = {}
        for key, value in snapshot.items():
            rank = _vm_state_rank(key)
            if rank is None:
                continue
            try:
                records[rank] = VmRecord.from_json(value, key=key, rank=rank)
            except Corrupt as err:
                raise ClusterFailed(f"vm{rank}: {err}") from err
        signalled = [rec for rec in records.values() if rec.extra.get(SIGNAL_NOTE)]
        if signalled:
            where = sorted({rec.place for rec in signalled})
            raise ClusterStopped(self.s.batchid, signal_of(signalled[0]), ", ".join(where))
        saved = [rec for rec in records.values() if rec.extra.get(CKPT_NOTE)]
        if saved:
            raise ClusterCheckpointed(self.s.batchid, str(saved[0].extra[CKPT_NOTE]))
        for _, rec in sorted(records.items()):
            if rec.status in (FAILED, STOPPED):
                what = "failed" if rec.status == FAILED else "stopped"
                tail = rec.extra.get("console_tail")
                kept = rec.extra.get(KEPT_LOG_NOTE)
                hints = [f"last console lines: {tail}"] if tail else []
                if kept:
                    hints.append(f"console log kept in {kept} (on {rec.place}; or "
                                 f"'pcocc console --log -j {self.s.batchid} {rec.name}')")
                raise ClusterFailed(
                    f"{rec.name} {what} on {rec.place}: {rec.error or 'QEMU exited'}",
                    hint="; ".join(hints) or None,
                )
        for rank, old in sorted(self._seen.items()):
            if rank not in records:
                self._blame_etcd_if_gone()
                raise ClusterFailed(
                    f"{old.name} disappeared: its node process on {old.place}"
                    f" (pid {old.node_pid}) stopped without cleaning up",
                    hint="the node may have failed; check the batch job's output",
                )
        self._seen.update(records)
        all_running = len(records) == self.definition.size and all(
            rec.status == RUNNING for rec in records.values()
        )
        for name, switch in zip(self.definition.networks, self._switches):
            if switch.poll() is not None:
                raise ClusterFailed(
                    f"the switch of network '{name}' {proc.ended(switch.returncode)}",
                    hint="the VMs lost that network; see the switch's message above",
                )
        if self._tasks is not None:
            status = self._tasks.poll()
            if status is not None:
                self._blame_etcd_if_gone()
                missing = [f"vm{r}" for r in range(self.definition.size) if r not in records]
                what = f" ({', '.join(missing)} never reported)" if missing else ""
                raise ClusterFailed(
                    f"the node processes exited with status {status}{what}",
                    hint="check the batch job's output for their messages",
                )
        if not booting and not all_running:
            raise ClusterFailed("a VM is no longer running")
        return all_running

    def _lease_lost(self) -> PcoccError | None:
        try:
            if self._lease is not None:
                self._lease.check()
        except PcoccError as err:
            return err
        return None

    def _blame_etcd_if_gone(self) -> None:
        """Before blaming the node processes, check that etcd still answers.

        The nodes lose etcd at the same time as the launcher and end on their own; their
        exit is then a consequence, and the message must name the cause.
        """
        try:
            if self._lease is not None:
                self._lease.check()
            self.kv.get(keys.cluster_definition(self.s.user, self.s.batchid))
        except PcoccError as err:
            self._etcd_lost = True
            raise ClusterFailed(
                err.message if err.message.startswith("lost etcd") else f"lost etcd: {err.message}",
                hint=err.hint,
            ) from err

    def _report_notes(self) -> None:
        """One warning per distinct note of the node processes (such as a fall-back to TCG),
        naming the VMs it applies to, instead of one per VM."""
        by_note: dict[str, list[str]] = {}
        for _, rec in sorted(self._seen.items()):
            note = rec.extra.get(ACCEL_NOTE)
            if note:
                by_note.setdefault(str(note), []).append(rec.name)
        for note, names in by_note.items():
            log.warning("%s: %s", ", ".join(names), note)

    # -- the user's command -----------------------------------------------------------------
    def _run_command(self, env: dict[str, str]) -> int:
        if self.s.command is not None:
            # Its own session: Ctrl-C reaches the launcher, which stops the whole group.
            argv = [self.s.shell, "-c", self.s.command]
            self._command = proc.spawn(argv, env=env, stdout=None, stderr=None, new_session=True)
            status = self._supervise_command()
            if self.s.hold:  # a batch job: its output file says how the script ended
                self.report(f"the command exited with status {status}")
            return status
        if self.s.hold:
            self.report("no command: the cluster runs until the job ends or is cancelled")
            return self._supervise_command()
        # The interactive shell stays in the terminal's process group and handles Ctrl-C
        # itself; the launcher only reacts to SIGTERM/SIGHUP meanwhile.
        shell = env.get("SHELL") or "/bin/sh"
        self._command = proc.spawn(
            [shell], env=env, stdin=None, stdout=None, stderr=None, new_session=False
        )
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return self._supervise_command()
        finally:
            signal.signal(signal.SIGINT, old)

    def _supervise_command(self) -> int:
        cmd = self._command

        def done(snapshot: dict[str, str]) -> int | None:
            status = cmd.poll() if cmd is not None else None
            if status is not None:
                return status
            self._check(snapshot, booting=False)
            return None

        return self.kv.wait_for(
            keys.vms_prefix(self.s.user, self.s.batchid), done, None, self.s.tick_s
        )

    # -- teardown ---------------------------------------------------------------------------
    def _teardown(self) -> None:
        with deferred_signals() as received:
            self.lifecycle.tear_down()
            if self._command is not None and self._command.poll() is None:
                proc.stop(self._command, timeout_s=5)
            if self._tasks is not None:
                self._release_nodes()
                try:
                    self._tasks.stop(timeout_s=15)
                except Exception as err:  # keep tearing down; say what was left
                    log.warning("could not stop the node processes: %s", err)
            if self._switches:
                from pcocc.net.private import stop_switches

                stop_switches(self._switches)
            self._reap_orphans()
            if not self._etcd_lost:
                try:
                    self.kv.delete_prefix(self.prefix)
                except Exception as err:
                    log.warning("could not remove the keys of cluster %s: %s", self.s.batchid, err)
            self.lifecycle.finish()
            if received:
                log.debug("signals received during teardown: %s", received)

    def _release_nodes(self) -> None:
        """Let the node processes end on their own: without the cluster's definition key
        each stops its VM and exits 0, so the batch system has nothing to report (a signal
        to srun makes it print that it cancelled the step and killed the tasks). A signal
        remains the fallback for nodes that do not end within ``release_timeout_s``, and the
        only way before every VM ran (a booting node process does not watch the key)."""
        assert self._tasks is not None
        if not self._booted or self._etcd_lost or self._tasks.poll() is not None:
            return
        try:
            self.kv.delete_prefix(keys.cluster_definition(self.s.user, self.s.batchid))
        except Exception as err:  # the signal below still stops them
            log.debug("could not release the node processes through etcd: %s", err)
            return
        deadline = time.monotonic() + self.s.release_timeout_s
        while self._tasks.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)

    def _reap_orphans(self) -> None:
        """Kill QEMUs on this host whose node process died without stopping them.

        A node process killed with SIGKILL cannot stop its QEMU (which runs in a session of
        its own); the launcher knows their pids from etcd. Elsewhere the batch system's
        process tracking does the same at the end of the job.
        """
        for rec in self._seen.values():
            if rec.pid and rec.host == self.s.host and is_our_qemu(rec.pid):
                log.info("%s: stopping QEMU (pid %d) left by its node process", rec.name, rec.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rec.pid, signal.SIGKILL)

    def _publish(self, state: ClusterState) -> None:
        if state.is_final or self._etcd_lost:
            return  # the keys are gone by then
        record = ClusterRecord(
            batchid=self.s.batchid,
            definition=self.definition,
            state=state,
            host=self.s.host,
            launcher_pid=os.getpid(),
            batch=getattr(self.batch, "name", ""),
            error=self.lifecycle.error,
            name=self.s.job_name,
        )
        try:
            self.kv.put(keys.cluster_definition(self.s.user, self.s.batchid), record.to_json(),
                        self._lease)
        except Exception:
            if state is ClusterState.TEARING_DOWN:
                log.warning("could not record the teardown of cluster %s", self.s.batchid)
                return
            raise


def is_our_qemu(pid: int) -> bool:
    """True when ``pid`` is a living QEMU of this user (pids are reused: check both)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        owner = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return False
    return owner == os.getuid() and bool(cmdline) and b"qemu-system" in cmdline[0]


__all__: Sequence[str] = ("Launcher", "LaunchSettings", "ClusterFailed", "ClusterStopped")
