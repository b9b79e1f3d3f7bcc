"""Bind the cluster runtime's ports to the batch managers, QEMU machines, templates and
image repositories (the etcd client's side is :mod:`pcocc.kv.connect`). Everything here is
glue; the logic is elsewhere.
"""

from __future__ import annotations

import getpass
import logging
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcocc import proc
from pcocc.cluster.definition import ClusterDefinition, VmEntry
from pcocc.cluster.ports import AllocRequest, MachineInfo
from pcocc.cluster.vmstate import ACCEL_NOTE
from pcocc.errors import PcoccError

if TYPE_CHECKING:
    from pcocc.config import Config

log = logging.getLogger(__name__)


def user_name() -> str:
    """The user whose etcd prefix and run dirs we use."""
    return getpass.getuser()


# -- batch --------------------------------------------------------------------------------
class PopenTasks:
    """:class:`~pcocc.cluster.ports.TaskGroup` over the Popen that ``launch_tasks`` returns."""

    def __init__(self, popen: subprocess.Popen):
        self.popen = popen

    def poll(self) -> int | None:
        return self.popen.poll()

    def stop(self, timeout_s: float = 10.0) -> None:
        proc.stop(self.popen, timeout_s=timeout_s)


class BatchAdapter:
    """:class:`~pcocc.cluster.ports.Batch` over a :class:`pcocc.batch.base.BatchManager`."""

    def __init__(self, manager: Any):
        self.manager = manager
        self.name = manager.name

    def _spec(self, request: AllocRequest, env: Mapping[str, str] | None = None) -> Any:
        from pcocc.batch.base import JobSpec

        return JobSpec(
            ntasks=request.ntasks,
            cpus_per_task=request.cpus_per_task,
            one_per_node=request.one_per_node,
            job_name=request.job_name,
            options=tuple(request.extra_args),
            env=dict(env or {}),
        )

    def allocate(
        self, request: AllocRequest, command: Sequence[str], env: Mapping[str, str] | None = None
    ) -> int:
        return self.manager.allocate(self._spec(request, env), list(command))

    def submit(self, request: AllocRequest, script: str) -> str:
        return self.manager.submit(self._spec(request), script)

    def launch_tasks(
        self,
        job_id: str,
        ntasks: int,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        one_per_node: bool = False,
    ) -> PopenTasks:
        return PopenTasks(
            self.manager.launch_tasks(
                job_id, ntasks, list(argv), dict(env), one_per_node=one_per_node
            )
        )

    def job_id_from_env(self, env: Mapping[str, str]) -> str | None:
        return self.manager.job_id_from_env(env)

    def cancel(self, job_id: str) -> None:
        self.manager.cancel(job_id)

    def nodes(self, job_id: str) -> list[str]:
        return self.manager.nodes(job_id)

    def controller_hosts(self) -> list[str]:
        return self.manager.controller_hosts()


def batch_manager(config: Config) -> BatchAdapter:
    from pcocc.batch.base import get_manager

    return BatchAdapter(get_manager(config.batch))


def task_rank(env: Mapping[str, str]) -> int | None:
    from pcocc.batch.base import task_rank as rank_of

    return rank_of(env)


# -- templates and images -----------------------------------------------------------------
def resolved_templates(config: Config) -> dict[str, dict[str, Any]]:
    """Every template with inheritance applied, as plain settings (plus ``resources``)."""
    from pcocc.templates import resolve_all

    result: dict[str, dict[str, Any]] = {}
    for name, tpl in resolve_all(config).items():
        settings = {key: s.value for key, s in tpl.settings.items()}
        settings["resources"] = dict(tpl.resources)
        result[name] = settings
    return result


def image_checker(config: Config) -> Callable[[str], None]:
    """A function that raises NotFound when an image URI does not resolve to a VM image."""
    from pcocc.repo.store import RepoSet

    repos = RepoSet(config.repos)

    def check(uri: str) -> None:
        _repo, meta = repos.resolve(uri)
        meta.vm_layers()  # Corrupt when it is a container image

    return check


def image_top_layer(config: Config, uri: str) -> Path:
    """Path of the top qcow2 layer of image ``uri`` (its backing chain follows)."""
    from pcocc.repo.store import RepoSet

    repo, meta = RepoSet(config.repos).resolve(uri)
    return Path(repo.blob_path(meta.vm_layers().layers[-1].digest))


# -- QEMU ---------------------------------------------------------------------------------
def _memory_mib(settings: Mapping[str, Any]) -> int:
    resources = settings.get("resources") or {}
    memory = resources.get("memory") or settings.get("memory")
    if memory is None:
        return 256
    if isinstance(memory, int):
        return max(memory // (1024 * 1024), 64)
    from pcocc.config import parse_size

    return max(parse_size(str(memory)) // (1024 * 1024), 64)


def vm_shares(
    definition: ClusterDefinition, settings: Mapping[str, Any]
) -> tuple[list, list[tuple[str, str]]]:
    """The virtio-fs shares of a VM, and the (tag, target) pairs the guest mounts.

    Each ``--mount`` gets the tag ``pcoccN``; the seed tells the guest where to mount it.
    The template's ``mount-points`` are shared with their name as tag, for the image's own
    fstab to mount.
    """
    from pcocc.vm.virtiofs import Share

    shares = []
    table = []
    for index, mount in enumerate(definition.mounts):
        tag = f"pcocc{index}"
        shares.append(Share(tag=tag, source=mount.source))
        table.append((tag, mount.target))
    for tag, point in sorted((settings.get("mount-points") or {}).items()):
        source = os.path.expanduser(str(point["path"]))
        shares.append(Share(tag=tag, source=source, readonly=bool(point.get("readonly"))))
    return shares, table


def check_shares_possible(definition: ClusterDefinition) -> None:
    """Raise before allocating when the VMs have shares that virtiofsd could not serve here.

    :raise ToolMissing: virtiofsd (or, for an ordinary user, newuidmap) is not installed
    :raise PcoccError: an ordinary user without subordinate ids
    """
    if definition.mounts or any(vm.settings.get("mount-points") for vm in definition.vms):
        from pcocc.vm import virtiofs

        virtiofs.find_virtiofsd()
        virtiofs.check_unprivileged()


def _template_user_data(value: Any) -> str | None:
    """A template's ``user-data``: a file name (read it) or the text itself."""
    if not value:
        return None
    text = str(value)
    if "\n" not in text and os.path.isfile(os.path.expanduser(text)):
        return Path(os.path.expanduser(text)).read_text()
    return text


def hosts_file(definition: ClusterDefinition) -> str:
    return "".join(f"{addr} {name}\n" for name, addr in definition.hosts_entries().items())


class MachineVm:
    """:class:`~pcocc.cluster.ports.VmHandle` over :class:`pcocc.vm.machine.Machine`."""

    def __init__(self, machine: Any, nics: Any = None, notes: Sequence[str] = ()):
        self.machine = machine
        #: what the launcher tells the user about this VM once it runs (e.g. TCG fallback)
        self.notes = list(notes)
        self.console_log = str(machine.console_log)
        #: the private NICs (a pcocc.net.private.NicSetup): their sockets close at shutdown
        self.nics = nics
        #: etcd records the node process publishes under its lease before the launch
        self.kv_entries = dict(nics.kv_entries) if nics is not None else {}

    def launch(self) -> MachineInfo:
        self.machine.launch()
        # real paths: the /proc/self/fd/N forms of long ones only work inside this process
        info = dict(self.machine.describe())
        ssh_port = info.pop("ssh_port")
        return MachineInfo(
            pid=int(info.pop("pid")),
            ssh_port=None if ssh_port is None else int(ssh_port),
            forwards={int(g): int(h) for g, h in dict(info.pop("forwards", {})).items()},
            qmp_socket=str(info.pop("qmp_socket")),
            console_socket=str(info.pop("console_socket")),
            console_log=str(info.pop("console_log")),
            extra={
                **{k: v for k, v in info.items() if k != "name"},
                **({ACCEL_NOTE: self.notes[0]} if self.notes else {}),
            },
        )

    def wait(self, timeout_s: float | None) -> int | None:
        popen = self.machine.process
        if popen is None:
            return None
        try:
            return popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def shutdown(self) -> None:
        try:
            self.machine.shutdown()
        finally:
            if self.nics is not None:
                self.nics.close()


def machine_factory(
    config: Config | None, batchid: str, kv: Any = None, address: str = "127.0.0.1"
) -> Callable[[ClusterDefinition, VmEntry, Path, Path], MachineVm]:
    """Build the VM of one rank from its template (``make_vm`` of the node process);
    its forwarded ports listen on ``address``."""

    def make(definition: ClusterDefinition, entry: VmEntry, node_dir: Path, host_key: Path):
        from pcocc.net.resolve import plan_networks
        from pcocc.vm.accel import resolve_accel

        accel_notes: list[str] = []

        from pcocc.cluster import rundir, vmsettings

        s = vmsettings.runtime_settings(
            entry.settings, clusterdir=str(rundir.cluster_dir(batchid)), vm_rank=entry.rank
        )
        image = None
        if entry.image:
            if config is None:
                raise PcoccError(f"{entry.name}: no configuration to resolve '{entry.image}'")
            image = image_top_layer(config, entry.image)
        spec_args: dict[str, Any] = {
            "name": entry.name,
            # the launcher says it once for the cluster, not every node (see ACCEL_NOTE)
            "accel": resolve_accel(s.get("accel"), warn=accel_notes.append),
            "memory_mib": _memory_mib(s),
            "smp": vmsettings.node_cpus(os.environ) if s.get("full-node") else entry.cores,
            "host_address": address,
            "disks": persistent_disks(entry.template, s),
            "disk_model": s.get("disk-model") or "virtio",
        }
        plan = plan_networks(entry.networks)
        spec_args["user_nets"] = tuple(plan.user_nets)
        spec_args["extra_netdevs"] = tuple(plan.qemu_args)
        spec_args["network"] = bool(plan.user_nets)
        shares, guest_mounts = vm_shares(definition, s)
        spec_args["custom_args"] = tuple(s.get("custom-args") or ())
        for key, field_name in (
            ("cpu-model", "cpu_model"),
            ("machine-type", "machine_type"),
            ("qemu-bin", "qemu_bin"),
            ("nic-model", "nic_model"),
            ("append", "append"),
        ):
            if s.get(key):
                spec_args[field_name] = s[key]
        for key in ("kernel", "initrd"):
            if s.get(key):
                spec_args[key] = Path(s[key])
        nics = private_nics(kv, definition, entry, batchid, spec_args.get("nic_model"), address)
        if nics is not None:
            spec_args["extra_netdevs"] += tuple(nics.qemu_args)
            spec_args["pass_fds"] = nics.pass_fds
        try:
            machine = _machine(
                definition, entry, s, node_dir, host_key, spec_args, image, nics, shares,
                guest_mounts,
            )
            return MachineVm(machine, nics, accel_notes)
        except BaseException:
            if nics is not None:
                nics.close()
            raise

    def _machine(
        definition: ClusterDefinition,
        entry: VmEntry,
        settings: Mapping[str, Any],
        node_dir: Path,
        host_key: Path,
        spec_args: dict[str, Any],
        image: Path | None,
        nics: Any,
        shares: Any,
        guest_mounts: Any,
    ) -> Any:
        from pcocc.vm.machine import Machine
        from pcocc.vm.qemu import VmSpec
        from pcocc.vm.seed import HostKey, SeedSpec

        public = host_key.with_suffix(".pub").read_text().strip()
        seed = SeedSpec(
            hostname=entry.name,
            instance_id=f"pcocc-{batchid}-{entry.rank}",
            authorized_keys=tuple(definition.ssh_authorized_keys),
            host_key=HostKey(host_key.read_text(), public),
            user_data=definition.user_data
            if definition.user_data is not None
            else _template_user_data(settings.get("user-data")),
            mounts=tuple(guest_mounts),
            extra_files={
                "pcocc/hosts": hosts_file(definition),
                **(
                    private_seed_files(nics, len(spec_args.get("user_nets") or ()))
                    if nics is not None
                    else {}
                ),
            },
        )
        machine = Machine(
            VmSpec(**spec_args),
            node_dir / "qemu",
            image=image,
            seed=seed,
            boot_timeout_s=definition.boot_timeout_s,
            shares=shares,
        )
        return machine

    return make


def persistent_disks(template: str, settings: Mapping[str, Any]) -> tuple:
    """The VM's ``persistent-drives`` (placeholders expanded) as virtio Drives, each with
    its format stated (checked again here: a drive under %{clusterdir} was not before)."""
    from pcocc.cluster import vmsettings
    from pcocc.vm.qemu import Drive

    disks = []
    for index, drive in enumerate(vmsettings.persistent_drives(settings)):
        vmsettings.check_drive_file(template, drive, vmsettings.probe_format)
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


def private_nics(
    kv: Any,
    definition: ClusterDefinition,
    entry: VmEntry,
    batchid: str,
    nic_model: str | None,
    address: str,
) -> Any:
    """The NICs of ``entry`` on the cluster's private networks (a NicSetup), or None."""
    from pcocc.cluster.definition import vm_networks
    from pcocc.net import private

    nets = private.from_definition(definition.networks)
    names = [n for n in vm_networks(entry.settings) if n in nets]
    if not names:
        return None
    if kv is None:
        raise PcoccError(f"{entry.name}: private networks need etcd")
    return private.prepare_nics(
        kv,
        user_name(),
        batchid,
        nets,
        names,
        entry.rank,
        address,
        nic_model or "virtio-net-pci",
    )


def private_seed_files(nics: Any, user_nics: int = 1) -> dict[str, str]:
    """Seed files configuring the private NICs. The user-mode NICs come first and keep
    QEMU's default MACs (52:54:00:12:34:56, then counting up), configured by DHCP."""
    from pcocc.net import private

    return private.seed_files(nics.nics, dhcp_macs=private.default_macs(user_nics))


def python_command() -> list[str]:
    """How to run this very pcocc on the nodes (same interpreter, no PATH lookup)."""
    import sys

    return [sys.executable, "-m", "pcocc.cli.main"]


def config_env(system_dir: str, user_dir: str) -> dict[str, str]:
    return {"PCOCC_SYSTEM_CONF_DIR": str(system_dir), "PCOCC_USER_CONF_DIR": str(user_dir)}
