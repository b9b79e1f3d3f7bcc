"""What one VM of a cluster is, from its definition entry and template settings.

Pure: it starts nothing and talks to no service. It returns a :class:`VmBuild` (the QEMU
spec, the cloud-init seed, the virtio-fs shares) that :mod:`pcocc.cluster.adapters` hands to
a :class:`pcocc.vm.machine.Machine`. What needs the host or etcd is found by the caller and
passed in: the accelerator, the node's CPUs and address (:class:`VmHost`), the image's top
layer, the ssh host key and the private NICs (:func:`attach_private_nics`). It reads only
files the settings name: the persistent drives (checked to exist and, through ``probe``, to
be of their format) and a template's ``user-data`` file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcocc.cluster import rundir, vmsettings
from pcocc.cluster.definition import ClusterDefinition, VmEntry
from pcocc.vm import pinning
from pcocc.vm.pinning import Pinning
from pcocc.vm.qemu import Drive, VmSpec
from pcocc.vm.seed import HostKey, SeedSpec
from pcocc.errors import ConfigError
from pcocc.vm.virtiofs import Share

if TYPE_CHECKING:
    from pcocc.net.private import NicSetup

#: the memory of a VM whose template gives none, and the least it gets
DEFAULT_MEMORY_MIB = 256
MIN_MEMORY_MIB = 64
DEFAULT_NIC_MODEL = "virtio-net-pci"
#: settings copied as they are onto the VmSpec field of the same meaning
_SPEC_FIELDS = (
    ("cpu-model", "cpu_model"),
    ("machine-type", "machine_type"),
    ("qemu-bin", "qemu_bin"),
    ("nic-model", "nic_model"),
    ("append", "append"),
    ("remote-display", "remote_display"),
)


@dataclass(frozen=True)
class VmHost:
    """What the node process found out about its host for the VM it builds."""

    #: "kvm" or "tcg", resolved from the template's ``accel`` (see pcocc.vm.accel)
    accel: str
    #: CPUs of this node, for a ``full-node`` VM (see vmsettings.node_cpus)
    cpus: int
    #: where the VM's forwarded ports listen (the node's address that other nodes reach)
    address: str = "127.0.0.1"


@dataclass(frozen=True)
class VmBuild:
    """Everything a Machine needs to start one VM of a cluster."""

    spec: VmSpec
    seed: SeedSpec
    #: the top qcow2 layer of the VM's image (None: boots a kernel, no image)
    image: Path | None = None
    shares: tuple[Share, ...] = ()
    boot_timeout_s: float = 600.0
    pinning: Pinning | None = None


def runtime_settings(entry: VmEntry, batchid: str) -> Mapping[str, Any]:
    """The entry's settings with %{clusterdir} and %{vm_rank} expanded for this run."""
    return vmsettings.runtime_settings(
        entry.settings, clusterdir=str(rundir.cluster_dir(batchid)), vm_rank=entry.rank
    )


def nic_model(settings: Mapping[str, Any]) -> str:
    """The device model of the VM's NICs (the private ones use it too)."""
    return settings.get("nic-model") or DEFAULT_NIC_MODEL


def memory_mib(settings: Mapping[str, Any]) -> int:
    """The VM's memory: its resource set's, else the template's ``memory``."""
    resources = settings.get("resources") or {}
    memory = resources.get("memory") or settings.get("memory")
    if memory is None:
        return DEFAULT_MEMORY_MIB
    if isinstance(memory, int):
        return max(memory // (1024 * 1024), MIN_MEMORY_MIB)
    from pcocc.config import parse_size

    return max(parse_size(str(memory)) // (1024 * 1024), MIN_MEMORY_MIB)


def vm_shares(
    definition: ClusterDefinition, settings: Mapping[str, Any]
) -> tuple[tuple[Share, ...], tuple[tuple[str, str], ...]]:
    """The shared directories of a VM, and the (tag, target) pairs the guest mounts.

    Each ``--mount SRC:DST`` gets the tag ``pcoccN``; the seed tells the guest where to mount
    it. A ``--mount TAG=PATH`` and the template's ``mount-points`` are shared with their tag
    only, for the guest to mount (its fstab, or by hand as with pcocc 0.7).

    :raise ConfigError: two shares with one tag
    """
    shares = []
    table = []
    for index, mount in enumerate(definition.mounts):
        tag = mount.tag or f"pcocc{index}"
        shares.append(Share(tag=tag, source=mount.source, readonly=mount.readonly,
                            type=mount.type))
        if mount.target is not None:
            table.append((tag, mount.target))
    for tag, point in sorted((settings.get("mount-points") or {}).items()):
        source = os.path.expanduser(str(point["path"]))
        shares.append(Share(tag=tag, source=source, readonly=bool(point.get("readonly")),
                            type=point.get("type") or "virtio-fs"))
    tags = [share.tag for share in shares]
    for tag in tags:
        if tags.count(tag) > 1:
            raise ConfigError(f"two shared directories have the mount tag '{tag}'",
                              hint="give --mount another tag than the template's mount-points")
    return tuple(shares), tuple(table)


def persistent_disks(
    template: str,
    settings: Mapping[str, Any],
    probe: Callable[[str], str] = vmsettings.probe_format,
) -> tuple[Drive, ...]:
    """The VM's ``persistent-drives`` (placeholders expanded) as virtio Drives, each with
    its format stated (checked again here: a drive under %{clusterdir} was not before).

    :param probe: path -> format that ``qemu-img info`` detects (asked for qcow2 files)
    :raise ConfigError: a missing drive, or one not of its format
    """
    disks = []
    for index, drive in enumerate(vmsettings.persistent_drives(settings)):
        vmsettings.check_drive_file(template, drive, probe)
        disks.append(
            Drive(
                Path(drive.path),
                format=vmsettings.drive_format(template, drive),
                readonly=drive.readonly,
                cache=drive.cache,
                id=f"pdrive{index}",
            )
        )
    return tuple(disks)


def hosts_file(definition: ClusterDefinition) -> str:
    """The ``/etc/hosts`` lines naming every VM of the cluster (seed file pcocc/hosts)."""
    return "".join(f"{addr} {name}\n" for name, addr in definition.hosts_entries().items())


def template_user_data(value: Any) -> str | None:
    """A template's ``user-data``: a file name (read it) or the text itself."""
    if not value:
        return None
    text = str(value)
    if "\n" not in text and os.path.isfile(os.path.expanduser(text)):
        return Path(os.path.expanduser(text)).read_text()
    return text


def build_vm(
    definition: ClusterDefinition,
    entry: VmEntry,
    settings: Mapping[str, Any],
    *,
    batchid: str,
    host: VmHost,
    host_key: HostKey,
    image: Path | None = None,
    probe: Callable[[str], str] = vmsettings.probe_format,
) -> VmBuild:
    """The VM of ``entry``, without its private NICs (see :func:`attach_private_nics`).

    :param settings: the entry's settings as :func:`runtime_settings` expands them
    :raise ConfigError: a persistent drive that is missing or not of its format, or
        networks this version cannot build
    """
    from pcocc.net.resolve import VmContext, needs_node_setup, plan_networks

    pins = Pinning.from_settings(settings)
    fields: dict[str, Any] = {
        "name": entry.name,
        "accel": host.accel,
        "memory_mib": memory_mib(settings),
        "smp": pinning.vcpus(entry.template,
                             host.cpus if settings.get("full-node") else entry.cores, pins),
        "host_address": host.address,
        "disks": persistent_disks(entry.template, settings, probe),
        "disk_model": settings.get("disk-model") or "virtio",
    }
    context = None
    if needs_node_setup(entry.networks):
        from pcocc.net.ethernet import vhost_usable

        if not batchid.isdigit():
            raise ConfigError(f"{entry.name}: ethernet networks need a Slurm job, not {batchid}")
        context = VmContext(job=int(batchid), rank=entry.rank, nic_model=nic_model(settings),
                            vhost=vhost_usable())
    plan = plan_networks(entry.networks, context)
    fields["user_nets"] = tuple(plan.user_nets)
    fields["extra_netdevs"] = tuple(plan.qemu_args)
    fields["network"] = bool(plan.user_nets)
    shares, guest_mounts = vm_shares(definition, settings)
    fields["custom_args"] = tuple(settings.get("custom-args") or ())
    for key, field_name in _SPEC_FIELDS:
        if settings.get(key):
            fields[field_name] = settings[key]
    for key in ("kernel", "initrd"):
        if settings.get(key):
            fields[key] = Path(settings[key])
    user_data = definition.user_data
    if user_data is None:
        user_data = template_user_data(settings.get("user-data"))
    seed = SeedSpec(
        hostname=entry.name,
        instance_id=settings.get("instance-id") or f"pcocc-{batchid}-{entry.rank}",
        authorized_keys=tuple(definition.ssh_authorized_keys),
        host_key=host_key,
        user_data=user_data,
        mounts=guest_mounts,
        extra_files={"pcocc/hosts": hosts_file(definition)},
    )
    return VmBuild(
        spec=VmSpec(**fields),
        seed=seed,
        image=image,
        shares=shares,
        boot_timeout_s=definition.boot_timeout_s,
        pinning=pins,
    )


def attach_private_nics(build: VmBuild, nics: NicSetup) -> VmBuild:
    """``build`` with the NICs of its private networks after its user-mode ones, and the
    seed files that configure them in the guest. The user-mode NICs keep QEMU's default
    MACs (52:54:00:12:34:56, then counting up), configured by DHCP."""
    from pcocc.net import private

    spec = replace(
        build.spec,
        extra_netdevs=build.spec.extra_netdevs + tuple(nics.qemu_args),
        pass_fds=nics.pass_fds,
    )
    user_nics = len(build.spec.user_nets or ())
    files = private.seed_files(nics.nics, dhcp_macs=private.default_macs(user_nics))
    seed = replace(build.seed, extra_files={**build.seed.extra_files, **files})
    return replace(build, spec=spec, seed=seed)
