"""Build the QEMU command line of a VM: a pure function from a VmSpec to an argv list.

QEMU parses ``key=value,key=value`` option strings; a comma inside a value must be doubled.
``-kernel``, ``-initrd`` and ``-append`` take their argument verbatim (checked with QEMU 7.2:
a path with commas boots as is), so they are never escaped.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from pcocc.errors import UsageError
from pcocc.net.user import SSH_PORT, UserNet, default_net, hostfwd_rules
from pcocc.vm import virtiofs
from pcocc.vm.display import PROTOCOLS as DISPLAY_PROTOCOLS

ACCELERATORS = ("tcg", "kvm")
DISK_INTERFACES = ("virtio", "virtio-scsi", "ide")
#: id of the virtio-scsi controller that the "virtio-scsi" drives share
SCSI_CONTROLLER = "scsi0"

#: Name of the virtio-serial port that qemu-guest-agent opens in the guest.
GUEST_AGENT_PORT = "org.qemu.guest_agent.0"


@dataclass(frozen=True)
class Drive:
    """A disk attached to the VM."""

    path: Path
    format: str = "qcow2"
    #: "virtio", "ide" (QEMU -drive if=) or "virtio-scsi" (a scsi-hd on a virtio-scsi-pci)
    interface: str = "virtio"
    readonly: bool = False
    cache: str | None = None  # e.g. "unsafe" for throwaway overlays
    id: str | None = None


@dataclass(frozen=True)
class VmSpec:
    """Everything needed to start one VM; paths are absolute or relative to QEMU's cwd."""

    name: str
    accel: str = "tcg"
    cpu_model: str | None = None  # default: "max" under TCG, "host" under KVM
    memory_mib: int = 256
    smp: int = 1
    machine_type: str | None = None
    qemu_bin: str = "qemu-system-x86_64"
    kernel: Path | None = None
    initrd: Path | None = None
    append: str | None = None
    disks: tuple[Drive, ...] = ()
    #: interface of the boot disk (the image's overlay): see DISK_INTERFACES
    disk_model: str = "virtio"
    seed: Path | None = None  # iso9660 cloud-init seed, attached as a read-only virtio disk
    console_socket: Path | None = None
    console_log: Path | None = None
    qmp_socket: Path | None = None
    agent_socket: Path | None = None
    ssh_host_port: int | None = None  # user networking: HOST_ADDRESS:PORT -> guest port 22
    nic_model: str = "virtio-net-pci"
    network: bool = True
    #: virtio-fs shares as (tag, vhost-user socket); they make the guest RAM a shared memfd
    fs_shares: tuple[tuple[str, Path], ...] = ()
    #: virtio-9p shares, served by QEMU itself
    ninep_shares: tuple[virtiofs.Share, ...] = ()
    #: NICs of other types than user, as ready QEMU arguments (``-netdev ... -device ...``),
    #: after the user-mode NICs
    extra_netdevs: tuple[str, ...] = ()
    #: descriptors that QEMU inherits (e.g. sockets named in ``extra_netdevs``)
    pass_fds: tuple[int, ...] = ()
    custom_args: tuple[str, ...] = field(default_factory=tuple)
    #: host address the forwards listen on (the node's address that other nodes reach)
    host_address: str = "127.0.0.1"
    #: user-mode NICs; None: one NIC with the ssh forward (see pcocc.net.user.default_net)
    user_nets: tuple[UserNet, ...] | None = None
    #: host port of each listening forward other than ssh (public ones): ((guest, host), ...)
    host_ports: tuple[tuple[int, int], ...] = ()
    #: "vnc" or "spice": a VGA card shown on ``display_socket`` (unix), password required
    remote_display: str | None = None
    display_socket: Path | None = None

    def nics(self) -> tuple[UserNet, ...]:
        """The user-mode NICs (none without networking)."""
        if not self.network:
            return ()
        return self.user_nets if self.user_nets is not None else (default_net(),)

    def forwarded_ports(self) -> list[int]:
        """Every guest port QEMU listens for on the host, ssh first (private forwards have
        no listener)."""
        return [port for net in self.nics() for port in net.forwards]

    def port_map(self) -> dict[int, int]:
        """Guest port -> host port, for the forwards whose host port is known."""
        ports = dict(self.host_ports)
        if self.ssh_host_port is not None:
            ports[SSH_PORT] = self.ssh_host_port
        return ports


def escape(value: str | os.PathLike) -> str:
    """Quote a value for a QEMU ``key=value,...`` option string (commas are doubled)."""
    return os.fspath(value).replace(",", ",,")


def _opts(head: str, **kwargs: object) -> str:
    """``head,key=value,...`` with escaped values; ``None`` values are left out."""
    parts = [head] if head else []
    for key, value in kwargs.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "on" if value else "off"
        parts.append(f"{key.replace('_', '-')}={escape(str(value))}")
    return ",".join(parts)


def default_cpu_model(accel: str) -> str:
    """``max`` under TCG; ``host`` only under KVM (which the caller has probed)."""
    return "host" if accel == "kvm" else "max"


def validate(spec: VmSpec) -> None:
    """Refuse specs QEMU would reject with a less clear message.

    :raise UsageError: naming the VM and the bad field
    """
    if spec.accel not in ACCELERATORS:
        raise UsageError(
            f"VM {spec.name}: unknown accelerator '{spec.accel}'",
            hint="use one of: " + ", ".join(ACCELERATORS),
        )
    if spec.memory_mib < 16:
        raise UsageError(f"VM {spec.name}: memory must be at least 16 MiB, not {spec.memory_mib}")
    if spec.smp < 1:
        raise UsageError(f"VM {spec.name}: needs at least one CPU, not {spec.smp}")
    if (spec.initrd or spec.append) and not spec.kernel:
        raise UsageError(f"VM {spec.name}: initrd and append need a kernel")
    for guest, host in spec.port_map().items():
        if not 0 < host < 65536 or not 0 < guest < 65536:
            raise UsageError(f"VM {spec.name}: bad forwarded port {host} (guest port {guest})")
    try:
        ipaddress.IPv4Address(spec.host_address)
    except ValueError:
        raise UsageError(
            f"VM {spec.name}: host address {spec.host_address!r} is not an IPv4 address"
        ) from None
    ids = [net.id for net in spec.nics()]
    if len(set(ids)) != len(ids):
        raise UsageError(f"VM {spec.name}: two NICs have the same id ({', '.join(ids)})")
    for model in (spec.disk_model, *(d.interface for d in spec.disks)):
        if model not in DISK_INTERFACES:
            raise UsageError(f"VM {spec.name}: unknown disk model '{model}'",
                             hint="use one of: " + ", ".join(DISK_INTERFACES))
    if spec.remote_display is not None:
        if spec.remote_display not in DISPLAY_PROTOCOLS:
            raise UsageError(f"VM {spec.name}: unknown remote display '{spec.remote_display}'",
                             hint="use one of: " + ", ".join(DISPLAY_PROTOCOLS))
        if spec.display_socket is None:
            raise UsageError(f"VM {spec.name}: a remote display needs a socket path")
    for text in (spec.name, *(os.fspath(d.path) for d in spec.disks)):
        if "\n" in text or "\0" in text:
            raise UsageError(f"VM {spec.name}: newlines are not allowed in names and paths")


def build_argv(spec: VmSpec) -> list[str]:
    """The full QEMU command line for ``spec``.

    :raise UsageError: the spec is inconsistent (see :func:`validate`)
    """
    validate(spec)
    argv = [spec.qemu_bin, "-name", _opts("", guest=spec.name)]
    argv += ["-accel", spec.accel]
    if spec.machine_type:
        argv += ["-machine", spec.machine_type]
    argv += ["-cpu", spec.cpu_model or default_cpu_model(spec.accel)]
    argv += ["-m", str(spec.memory_mib), "-smp", str(spec.smp)]
    if spec.fs_shares:
        argv += virtiofs.memory_args(spec.memory_mib)
    argv += ["-display", "none", "-nodefaults", "-no-user-config"]

    if spec.console_socket or spec.console_log:
        if spec.console_socket:
            chardev = _opts("socket", id="console", path=spec.console_socket, server=True,
                            wait=False, logfile=spec.console_log,
                            logappend=True if spec.console_log else None)
        else:
            chardev = _opts("file", id="console", path=spec.console_log)
        argv += ["-chardev", chardev, "-serial", "chardev:console"]
    if spec.qmp_socket:
        argv += ["-chardev", _opts("socket", id="qmp", path=spec.qmp_socket, server=True,
                                   wait=False),
                 "-mon", "chardev=qmp,mode=control"]
    if spec.agent_socket:
        argv += ["-chardev", _opts("socket", id="qga0", path=spec.agent_socket, server=True,
                                   wait=False),
                 "-device", "virtio-serial-pci,id=vser0",
                 "-device", _opts("virtserialport", bus="vser0.0", chardev="qga0",
                                  name=GUEST_AGENT_PORT)]

    argv += _display_args(spec)

    if spec.kernel:
        argv += ["-kernel", os.fspath(spec.kernel)]
        if spec.initrd:
            argv += ["-initrd", os.fspath(spec.initrd)]
        if spec.append:
            argv += ["-append", spec.append]

    argv += _drive_args(spec.disks)
    if spec.seed:
        argv += ["-drive", _opts("", file=spec.seed, format="raw", id="seed",
                                 **{"if": "virtio"}, readonly=True)]

    ports = spec.port_map()
    for net in spec.nics():
        netdev = _opts("user", id=net.id, net=net.cidr)
        # hostfwd may be repeated, which _opts (one value per key) cannot express
        netdev += "".join(f",hostfwd={escape(rule)}"
                          for rule in hostfwd_rules(net, spec.host_address, ports))
        argv += ["-netdev", netdev, "-device", _opts(spec.nic_model, netdev=net.id)]
    argv += list(spec.extra_netdevs)
    if spec.fs_shares:
        argv += virtiofs.device_args([tag for tag, _ in spec.fs_shares],
                                     [sock for _, sock in spec.fs_shares])
    argv += virtiofs.ninep_args(spec.ninep_shares)
    argv += list(spec.custom_args)
    return argv


def _display_args(spec: VmSpec) -> list[str]:
    """The VGA card and the password-protected unix socket of a remote display. The
    password itself is set over QMP once QEMU runs (see pcocc.vm.display): until then the
    server refuses every client."""
    if spec.remote_display is None or spec.display_socket is None:
        return []
    if spec.remote_display == "vnc":
        server = ["-vnc", f"unix:{escape(spec.display_socket)},password=on"]
    else:
        server = ["-spice", _opts("", unix=True, addr=spec.display_socket,
                                  disable_ticketing=False)]
    return ["-device", "VGA", *server]


def _drive_args(disks: tuple[Drive, ...]) -> list[str]:
    """``-drive`` (and ``-device``) arguments of the disks, in order; virtio-scsi disks
    share one controller, added before the first of them."""
    argv: list[str] = []
    for index, drive in enumerate(disks):
        drive_id = drive.id or f"disk{index}"
        scsi = drive.interface == "virtio-scsi"
        if scsi and not any(d.interface == "virtio-scsi" for d in disks[:index]):
            argv += ["-device", _opts("virtio-scsi-pci", id=SCSI_CONTROLLER)]
        argv += ["-drive", _opts("", file=drive.path, format=drive.format, id=drive_id,
                                 **{"if": "none" if scsi else drive.interface},
                                 readonly=True if drive.readonly else None, cache=drive.cache)]
        if scsi:
            argv += ["-device", _opts("scsi-hd", drive=drive_id, bus=f"{SCSI_CONTROLLER}.0")]
    return argv
