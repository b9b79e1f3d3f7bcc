"""Run one QEMU VM: start it, wait until the guest is up, stop it, and always clean up.

``Machine`` is a context manager. In its run directory (created mode 0700) it puts the qcow2
overlay over the image's top layer, the seed, the QMP, console and guest agent sockets
(0600), the console log and QEMU's own log. QEMU runs with that directory as its working
directory and gets relative socket names, so long run directories do not hit the 108-byte
limit of unix socket paths; pcocc reaches them through ``/proc/self/fd/N/``.

A VM with a remote display also gets its VNC or SPICE socket there, and, once the guest is
up, a random password and the ``display.json`` record of both (see :mod:`pcocc.vm.display`).

Listening forwards (ssh and the ``public-forwards`` of user networks) listen on the spec's
``host_address``, the node's address that other nodes reach; their host ports are picked free
on that address when QEMU starts (and picked again if QEMU loses the race for one). Private
forwards get no listener (see :mod:`pcocc.net.user`).

The guest is "up" when its ssh server sends its banner through the forwarded port (the
default when the VM forwards ssh: it is what users need next), or when its guest
agent answers a ping (``ready="agent"``). QEMU's hostfwd accepts connections before the guest
listens, so a mere TCP connect proves nothing; the banner does.

Each shared host directory (``shares``) gets a virtiofsd process (see
:mod:`pcocc.vm.virtiofs`) listening on ``fsN.sock`` in the run directory, started before
QEMU and stopped with it on every path; its log is ``virtiofsdN.log``.

A VM restored from a checkpoint (``restore``) starts on a copy of the saved overlay (rebased
onto the image's top layer as this host sees it) with ``-incoming defer``, loads the saved
state (see :mod:`pcocc.vm.migrate`), runs, and once up gets its clock set by the agent.

On a boot failure or timeout the console log and QEMU's log (and the virtiofsd logs) are
kept (the error names them); everything else is removed.

The probes are in :mod:`pcocc.vm.readiness`; the steps from "QEMU runs" to "guest up"
(wait, restore, pin, display, boot errors) in :mod:`pcocc.vm.bootsteps`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Self

from pcocc import daemon, fsutil, proc, timing
from pcocc.vm import display, virtiofs
from pcocc.errors import PcoccError, UsageError
from pcocc.net.user import SSH_PORT
from pcocc.vm.agent import GuestAgent
from pcocc.vm.bootsteps import BootSteps, PortTaken, VmBootError
from pcocc.vm.pinning import Pinning
from pcocc.vm.qemu import Drive, VmSpec, build_argv
from pcocc.vm.rundir import (
    AGENT_SOCKET,
    CONSOLE_LOG,
    CONSOLE_SOCKET,
    OVERLAY,
    QEMU_LOG,
    QMP_SOCKET,
    SEED,
)
from pcocc.vm.seed import SeedSpec, build_seed

if TYPE_CHECKING:  # QMP's client loads asyncio: after QEMU started (issue 18)
    from pcocc.vm.qmp import QmpClient

log = logging.getLogger(__name__)

PORT_ATTEMPTS = 3


@dataclasses.dataclass(frozen=True)
class Restore:
    """The saved state of a VM to start from (files of a checkpoint, never modified)."""

    state: Path
    #: the saved overlay; None when the VM has no image
    disk: Path | None = None


def free_tcp_ports(count: int, address: str = "127.0.0.1") -> list[int]:
    """``count`` TCP ports on ``address`` free now (QEMU may still lose a race for them)."""
    return daemon.free_ports(count, address)


class Machine(BootSteps):
    """One QEMU VM with a lifetime: ``with Machine(spec, run_dir, ...) as vm: ...``.

    :param spec: the VM; the socket, log, overlay and seed fields are filled in here
    :param run_dir: private directory for this VM; created (0700), must not hold files
    :param image: top qcow2 layer of the VM image; an overlay over it becomes the first disk
    :param seed: cloud-init seed content; built into ``run_dir/seed.iso``
    :param ready: "ssh" (banner on the forwarded port) or "agent" (guest agent ping);
        default: "ssh" when the VM forwards ssh, else "agent"
    :param boot_timeout_s: how long the guest may take to come up
    :param keep_overlay: leave the overlay in place after shutdown (for ``save``)
    :param shares: host directories served to the guest over virtio-fs
    :param pinning: pin QEMU's vCPU and emulator threads once the guest is up
    :param restore: start from this saved state instead of booting
    """

    def __init__(
        self,
        spec: VmSpec,
        run_dir: str | os.PathLike,
        *,
        image: str | os.PathLike | None = None,
        seed: SeedSpec | None = None,
        ready: str | None = None,
        boot_timeout_s: float = 120.0,
        keep_overlay: bool = False,
        shares: Sequence[virtiofs.Share] = (),
        pinning: Pinning | None = None,
        restore: Restore | None = None,
    ) -> None:
        self.restore = restore
        self.run_dir = Path(run_dir).absolute()
        self.image = Path(image).absolute() if image is not None else None
        self.seed = seed
        forwards_ssh = SSH_PORT in spec.forwarded_ports()
        self.ready = ready or ("ssh" if forwards_ssh else "agent")
        if self.ready not in ("ssh", "agent"):
            raise UsageError(f"VM {spec.name}: unknown readiness check '{self.ready}'",
                             hint="use 'ssh' or 'agent'")
        if self.ready == "ssh" and not forwards_ssh:
            raise UsageError(f"VM {spec.name}: the ssh readiness check needs a forwarded ssh"
                             " port (user networking)")
        self.boot_timeout_s = boot_timeout_s
        self.keep_overlay = keep_overlay
        self.pinning = pinning
        #: served by virtiofsd processes; the virtio-9p ones QEMU serves itself
        self.shares = tuple(s for s in shares if s.type != "virtio-9p")
        self.ninep_shares = tuple(s for s in shares if s.type == "virtio-9p")
        for share in self.ninep_shares:
            virtiofs.check_tag(share.tag)
        for share in self.shares:
            virtiofs.check_tag(share.tag)
        self.fs_processes: list[proc.Popen | None] = [None] * len(self.shares)
        self.base_spec = spec
        self.spec: VmSpec | None = None
        self.process: proc.Popen | None = None
        self.ssh_port: int | None = None
        #: guest port -> host port of every forward, once QEMU runs
        self.forwards: dict[int, int] = {}
        self._dir_fd: int | None = None
        self._created: list[Path] = []
        self._created_dir = False
        self._keep_logs = False
        self._virtiofsd = ""

    # -- paths ----------------------------------------------------------------------------
    @property
    def console_log(self) -> Path:
        return self.run_dir / CONSOLE_LOG

    @property
    def qemu_log(self) -> Path:
        return self.run_dir / QEMU_LOG

    @property
    def overlay(self) -> Path | None:
        return self.run_dir / OVERLAY if self.image else None

    def socket_path(self, name: str) -> str:
        """A path to a socket of the run directory that fits in a sockaddr_un."""
        full = str(self.run_dir / name)
        if len(full.encode()) < 100 or self._dir_fd is None:
            return full
        return f"/proc/self/fd/{self._dir_fd}/{name}"

    @property
    def qmp_socket(self) -> str:
        return self.socket_path(QMP_SOCKET)

    @property
    def agent_socket(self) -> str:
        return self.socket_path(AGENT_SOCKET)

    @property
    def console_socket(self) -> str:
        return self.socket_path(CONSOLE_SOCKET)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def accel(self) -> str:
        return self.base_spec.accel

    # -- lifetime -------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.launch()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def start(self) -> None:
        """Prepare the run directory and start QEMU, without waiting for the guest
        (:meth:`launch` then waits); the caller meanwhile does what the guest needs not."""
        try:
            self._prepare()
            self._start_qemu()
        except BaseException as err:
            self._keep_logs = isinstance(err, VmBootError)
            self.shutdown()
            raise

    def launch(self) -> None:
        """Start QEMU (unless :meth:`start` did) and wait until the guest is up.

        :raise VmBootError: QEMU failed or the guest did not come up in time; the message
            names the console log and the accelerator
        """
        if self.process is None:
            self.start()
        try:
            for attempt in range(PORT_ATTEMPTS):
                if attempt:
                    self._start_qemu()
                try:
                    self._wait_until_up()
                    self._pin()
                    break
                except PortTaken as taken:
                    if attempt == PORT_ATTEMPTS - 1:
                        raise taken.error from None
                    log.debug("VM %s: port %s was taken, retrying", self.spec.name,
                              self.ssh_port)
            self._enable_display()
        except BaseException as err:
            self._keep_logs = isinstance(err, VmBootError)
            self.shutdown()
            raise

    def _prepare(self) -> None:
        if self.run_dir.exists():
            if any(self.run_dir.iterdir()):
                raise PcoccError(f"run directory {self.run_dir} is not empty",
                                 hint="is another VM using it? remove it if not")
            os.chmod(self.run_dir, 0o700)
        else:
            self.run_dir.mkdir(mode=0o700, parents=True)
            self._created_dir = True
        self._dir_fd = os.open(self.run_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._created += [self.run_dir / n for n in
                          (CONSOLE_SOCKET, QMP_SOCKET, AGENT_SOCKET, CONSOLE_LOG, QEMU_LOG)]
        protocol = self.base_spec.remote_display
        display_socket = None
        if protocol is not None:
            display.check_protocol(self.base_spec.name, protocol, self.base_spec.qemu_bin)
            display_socket = Path(display.SOCKET_NAMES[protocol])
            self._created += [self.run_dir / display_socket, self.run_dir / display.INFO_FILE]
        disks = list(self.base_spec.disks)
        if self.image is not None:
            self._created.append(self.run_dir / OVERLAY)
            if self.restore is not None and self.restore.disk is not None:
                self._restore_overlay(self.restore.disk)
            else:
                proc.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", self.image,
                          "-F", "qcow2", self.run_dir / OVERLAY],
                         what=f"create the disk overlay of VM {self.base_spec.name}")
            disks.insert(0, Drive(Path(OVERLAY), id="disk0",
                                  interface=self.base_spec.disk_model))
        seed_path = None
        if self.seed is not None:
            self._created.append(self.run_dir / SEED)
            build_seed(self.seed, self.run_dir / SEED)
            timing.mark("machine: seed ISO built")
            seed_path = Path(SEED)
        # QEMU runs in run_dir: relative names keep socket paths short.
        self.spec = dataclasses.replace(
            self.base_spec,
            disks=tuple(disks),
            seed=seed_path or self.base_spec.seed,
            console_socket=Path(CONSOLE_SOCKET),
            console_log=Path(CONSOLE_LOG),
            qmp_socket=Path(QMP_SOCKET),
            agent_socket=Path(AGENT_SOCKET),
            display_socket=display_socket,
            fs_shares=tuple((share.tag, Path(virtiofs.socket_name(i)))
                            for i, share in enumerate(self.shares)),
            ninep_shares=self.ninep_shares,
        )
        for share in (*self.shares, *self.ninep_shares):
            if not os.path.isdir(share.source):
                raise PcoccError(f"VM {self.base_spec.name}: cannot share "
                                 f"{share.source} (tag {share.tag}): not a directory",
                                 hint="create it, or fix the template's mount-points")
        if self.shares:
            self._virtiofsd = virtiofs.find_virtiofsd()
            virtiofs.check_unprivileged()
            for i in range(len(self.shares)):
                self._created += [self.run_dir / virtiofs.socket_name(i),
                                  self.run_dir / virtiofs.log_name(i)]

    def _restore_overlay(self, saved: Path) -> None:
        """A copy of the saved overlay, its backing file set to this host's top layer
        (the checkpoint was checked to be of the same layer; the copy keeps it intact)."""
        overlay = self.run_dir / OVERLAY
        fsutil.copy_sparse(saved, overlay)
        proc.run(["qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-b", self.image,
                  "-F", "qcow2", overlay],
                 what=f"attach the saved disk of VM {self.base_spec.name} to its image")

    def _start_qemu(self) -> None:
        assert self.spec is not None
        spec = self.spec
        fixed = self.base_spec.port_map()
        wanted = [p for p in spec.forwarded_ports() if p not in fixed]
        picked = free_tcp_ports(len(wanted), spec.host_address) if wanted else []
        ports = {**fixed, **dict(zip(wanted, picked))}
        self.forwards = {p: ports[p] for p in spec.forwarded_ports()}
        self.ssh_port = self.forwards.get(SSH_PORT)
        spec = dataclasses.replace(
            spec,
            ssh_host_port=self.ssh_port,
            host_ports=tuple((g, h) for g, h in self.forwards.items() if g != SSH_PORT),
        )
        if self.restore is not None:
            from pcocc.vm.migrate import INCOMING_ARGS

            spec = dataclasses.replace(spec, custom_args=spec.custom_args + INCOMING_ARGS)
        argv = build_argv(spec)
        with contextlib.suppress(FileNotFoundError):
            self.qemu_log.unlink()  # judge each attempt by its own messages
        self._start_virtiofsd()
        log.debug("VM %s: starting QEMU (%s)", spec.name, spec.accel)
        self.process = proc.spawn(argv, cwd=self.run_dir, log_path=self.qemu_log,
                                  pass_fds=spec.pass_fds)
        self.spec = spec
        timing.mark("machine: QEMU spawned")

    def _start_virtiofsd(self) -> None:
        """Start a virtiofsd on a new listening socket for each share not served now.

        virtiofsd ends when QEMU disconnects, so a QEMU restart (lost port race) needs new
        ones; each gets the socket already listening, and QEMU connects to it by name.
        """
        for index, share in enumerate(self.shares):
            running = self.fs_processes[index]
            if running is not None:
                if running.poll() is None:
                    continue
                proc.stop(running)
            name = virtiofs.socket_name(index)
            with contextlib.suppress(FileNotFoundError):
                (self.run_dir / name).unlink()
            log.debug("VM %s: serving %s as virtio-fs tag %s", self.base_spec.name,
                      share.source, share.tag)
            self.fs_processes[index] = virtiofs.start_virtiofsd(
                self._virtiofsd, share, self.socket_path(name),
                self.run_dir / virtiofs.log_name(index))

    # -- use ------------------------------------------------------------------------------
    def qmp(self, timeout_s: float = 10.0) -> QmpClient:
        """A connected QMP client (use it as a context manager)."""
        from pcocc.vm.qmp import QmpClient

        client = QmpClient(self.qmp_socket, name=self.base_spec.name, timeout_s=timeout_s)
        try:
            client.connect()
        except BaseException:
            client.close()
            raise
        return client

    def agent(self) -> GuestAgent:
        return GuestAgent(self.agent_socket)

    def describe(self) -> dict[str, object]:
        """What others need to reach this VM (published in the cluster state)."""
        return {
            "name": self.base_spec.name,
            "accel": self.accel,
            "pid": self.pid,
            "ssh_port": self.ssh_port,
            "address": self.base_spec.host_address,
            "forwards": dict(self.forwards),
            "run_dir": str(self.run_dir),
            "qmp_socket": str(self.run_dir / QMP_SOCKET),
            "agent_socket": str(self.run_dir / AGENT_SOCKET),
            "console_socket": str(self.run_dir / CONSOLE_SOCKET),
            "console_log": str(self.console_log),
        }

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- teardown -------------------------------------------------------------------------
    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Ask QEMU to quit over QMP, kill it if it does not, then remove the run files.

        Safe to call more than once.
        """
        if self.process is not None:
            if self.process.poll() is None:
                from pcocc.vm.qmp import QmpClient

                try:
                    with QmpClient(self.qmp_socket, timeout_s=min(timeout_s, 3.0)) as qmp:
                        qmp.quit()
                    self.process.wait(timeout=timeout_s)
                except (PcoccError, proc.TimeoutExpired) as err:
                    log.debug("VM %s: QMP quit failed (%s); killing QEMU",
                              self.base_spec.name, err)
            proc.stop(self.process, timeout_s=timeout_s)
        for index, process in enumerate(self.fs_processes):
            if process is not None:
                proc.stop(process, timeout_s=timeout_s)
                self.fs_processes[index] = None
        self._cleanup()

    def _cleanup(self) -> None:
        keep: set[Path] = set()
        if self._keep_logs:
            keep = {self.console_log, self.qemu_log}
            keep.update(self.run_dir / virtiofs.log_name(i) for i in range(len(self.shares)))
        if self.keep_overlay and self.image is not None:
            keep.add(self.run_dir / OVERLAY)
        for path in self._created:
            if path not in keep:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        self._created = [p for p in self._created if p in keep]
        for tmp in self.run_dir.glob(".seed-*") if self.run_dir.exists() else ():
            shutil.rmtree(tmp, ignore_errors=True)
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None
        if self._created_dir and not keep:
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()
