"""The steps of :class:`pcocc.vm.machine.Machine` between "QEMU runs" and "the guest is up":
wait for the guest (loading the saved state first on a restore), pin the threads, enable
the remote display, and turn a QEMU or virtiofsd that ended into one boot error naming
their logs. ``BootSteps`` holds them for ``Machine``; it has no state of its own.
"""

from __future__ import annotations

import contextlib
import os
import time

from pcocc import proc, timing
from pcocc.errors import PcoccError
from pcocc.vm import display, pinning, readiness, virtiofs
from pcocc.vm.agent import GuestAgent
from pcocc.vm.rundir import AGENT_SOCKET, CONSOLE_SOCKET, QMP_SOCKET


class VmBootError(PcoccError):
    """The VM did not come up (QEMU failed, or the guest did not answer in time)."""


class PortTaken(Exception):
    """QEMU could not bind the ssh port that was free a moment ago; try another one."""

    def __init__(self, error: VmBootError) -> None:
        super().__init__(str(error))
        self.error = error


class BootSteps:
    """Mixin of :class:`pcocc.vm.machine.Machine` (uses its attributes and ``qmp()``)."""

    def _wait_until_up(self) -> None:
        assert self.process is not None and self.spec is not None
        deadline = time.monotonic() + self.boot_timeout_s
        agent = GuestAgent(self.agent_socket)
        if self.restore is not None:
            self._load_state(deadline)
        if self.ready == "ssh":
            assert self.ssh_port is not None
            up = readiness.wait_ssh_banner(self.ssh_port, self.spec.host_address,
                                           deadline, self._check_qemu)
        else:
            up = readiness.wait_ready(lambda: agent.ping(timeout_s=1.0), deadline,
                                      self._check_qemu)
        if not up:
            check = "ssh server" if self.ready == "ssh" else "guest agent"
            raise self._boot_error(
                f"VM {self.spec.name} did not answer ({check}) within "
                f"{self.boot_timeout_s:g} s"
            )
        timing.mark("machine: guest up (ssh banner or agent)")
        for name in (QMP_SOCKET, AGENT_SOCKET, CONSOLE_SOCKET, *display.SOCKET_NAMES.values()):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(self.run_dir / name, 0o600)
        if self.restore is not None:
            from pcocc.vm.migrate import set_guest_time

            set_guest_time(agent, self.spec.name)

    def _load_state(self, deadline: float) -> None:
        """Connect to the QEMU waiting for its state (its monitor may not listen yet), and
        load it (see Restore)."""
        from pcocc.vm.migrate import load_state

        assert self.process is not None and self.restore is not None
        while True:
            try:
                qmp = self.qmp(timeout_s=5.0)
                break
            except PcoccError as err:
                if self.process.poll() is not None:
                    return  # the caller reports QEMU's exit and its log
                if time.monotonic() > deadline:
                    raise self._boot_error(f"VM {self.base_spec.name}: QEMU's monitor did"
                                           f" not answer: {err.message}") from err
                time.sleep(0.05)
        with qmp:
            try:
                load_state(qmp, self.restore.state, self.base_spec.name,
                           timeout_s=max(1.0, deadline - time.monotonic()))
            except PcoccError as err:
                raise self._boot_error(f"cannot restore VM {self.base_spec.name} from"
                                       f" {self.restore.state}: {err.message}") from err

    def _check_qemu(self) -> None:
        """Raise the boot error when QEMU has ended (PortTaken when it lost its port)."""
        assert self.process is not None and self.spec is not None
        if self.process.poll() is None:
            return
        tail = self._qemu_log_tail()
        shares = self._virtiofsd_failures()
        error = self._boot_error(
            f"QEMU {proc.ended(self.process.returncode)} before VM "
            f"{self.spec.name} was up: {tail or 'no message'}"
            + (f"; {shares}" if shares else "")
        )
        if "host forwarding" in tail and set(self.forwards) - set(self.base_spec.port_map()):
            raise PortTaken(error)  # lost the race for the port we picked
        raise error

    def _pin(self) -> None:
        if self.pinning is None:
            return
        assert self.process is not None
        with self.qmp() as qmp:
            pinning.apply(self.process.pid, qmp, self.pinning)

    def _enable_display(self) -> None:
        """Set the remote display's password and write its record (see pcocc.vm.display)."""
        assert self.spec is not None
        if self.spec.remote_display is None or self.spec.display_socket is None:
            return
        with self.qmp() as qmp:
            display.enable(qmp, self.spec.remote_display,
                           self.run_dir / self.spec.display_socket,
                           self.run_dir / display.INFO_FILE)

    def _boot_error(self, message: str) -> VmBootError:
        accel = self.spec.accel if self.spec else self.base_spec.accel
        hint = f"see the console log {self.console_log} (accelerator: {accel})"
        if accel == "tcg":
            hint += "; TCG is slow, a larger boot timeout may help"
        return VmBootError(f"{message} (accelerator {accel}, console log {self.console_log})",
                           hint=hint)

    def _qemu_log_tail(self) -> str:
        try:
            lines = self.qemu_log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return " | ".join(ln.strip() for ln in lines if ln.strip())[-300:]

    def _virtiofsd_failures(self) -> str:
        """The messages of the virtiofsd processes that ended with an error."""
        failures = []
        for index, process in enumerate(self.fs_processes):
            if process is None or process.poll() in (None, 0):
                continue
            path = self.run_dir / virtiofs.log_name(index)
            tail = virtiofs.log_tail(path)
            failures.append(f"virtiofsd of {self.shares[index].source} "
                            f"{proc.ended(process.returncode)}: {tail or 'no message'} "
                            f"(log {path})")
        return "; ".join(failures)
