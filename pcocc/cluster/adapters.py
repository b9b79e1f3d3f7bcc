"""Bind the cluster runtime's ports to QEMU machines, templates and image repositories
(the batch managers: :mod:`pcocc.cluster.batchadapter`; the etcd client's side:
:mod:`pcocc.kv.connect`). Everything here is glue; what a VM is comes from
:mod:`pcocc.cluster.vmbuild`.
"""

from __future__ import annotations

import getpass
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcocc import proc
from pcocc.cluster.definition import ClusterDefinition, VmEntry
from pcocc.cluster.ports import MachineInfo
from pcocc.cluster.vmstate import ACCEL_NOTE
from pcocc.errors import PcoccError

if TYPE_CHECKING:
    from pcocc.config import Config
    from pcocc.repo.meta import ImageMeta
    from pcocc.repo.reposet import RepoSet

log = logging.getLogger(__name__)

#: how long a checkpoint waits for a save of the same VM to end
CKPT_SAVE_WAIT_S = 120.0


def user_name() -> str:
    """The user whose etcd prefix and run dirs we use."""
    return getpass.getuser()


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


def image_checker(
    config: Config, fetch: Callable[[RepoSet, str], ImageMeta] | None = None
) -> Callable[[str], str | None]:
    """A function that raises NotFound when an image URI does not resolve to a VM image.

    :param fetch: gets an image that no repository holds when its URI is a URL or a
        discoverable name (pcocc.trust.fetch.fetch_missing); the function then returns
        the local URI of the fetched image, which the VMs use
    """
    from pcocc.repo.reposet import RepoSet
    from pcocc.trust.prefix import fetchable

    repos = RepoSet(config.repos)

    def check(uri: str) -> str | None:
        local = None
        if fetch is not None and fetchable(uri):
            meta = fetch(repos, uri)
            local = meta.ref
        else:
            _repo, meta = repos.resolve(uri)
        meta.vm_layers()  # Corrupt when it is a container image
        return local

    return check


def image_top_layer(config: Config, uri: str) -> Path:
    """Path of the top qcow2 layer of image ``uri`` (its backing chain follows)."""
    from pcocc.repo.reposet import RepoSet

    repo, meta = RepoSet(config.repos).resolve(uri)
    return Path(repo.blob_path(meta.vm_layers().layers[-1].digest))


# -- QEMU ---------------------------------------------------------------------------------
def check_shares_possible(definition: ClusterDefinition) -> None:
    """Raise before allocating when the VMs have shares that virtiofsd could not serve here.

    :raise ToolMissing: virtiofsd (or, for an ordinary user, newuidmap) is not installed
    :raise PcoccError: an ordinary user without subordinate ids
    """
    if definition.mounts or any(vm.settings.get("mount-points") for vm in definition.vms):
        from pcocc.vm import virtiofs

        virtiofs.find_virtiofsd()
        virtiofs.check_unprivileged()


class MachineVm:
    """:class:`~pcocc.cluster.ports.VmHandle` over :class:`pcocc.vm.machine.Machine`."""

    def __init__(self, machine: Any, nics: Any = None, notes: Sequence[str] = (),
                 host_key: Path | None = None):
        self.machine = machine
        #: the guest's ssh host key (saved with a checkpoint: the guest keeps it)
        self.host_key = host_key
        #: what the launcher tells the user about this VM once it runs (e.g. TCG fallback)
        self.notes = list(notes)
        self.console_log = str(machine.console_log)
        #: the private NICs (a pcocc.net.private.NicSetup): their sockets close at shutdown
        self.nics = nics
        #: etcd records the node process publishes under its lease before the launch
        self.kv_entries = dict(nics.kv_entries) if nics is not None else {}

    def start(self) -> None:
        self.machine.start()

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
        except proc.TimeoutExpired:
            return None

    def save_checkpoint(self, dest: Path) -> Any:
        """Pause the VM and save its state, overlay and host key into ``dest``; the VM stays
        paused (see :mod:`pcocc.cluster.checkpoint`)."""
        from pcocc import fsutil
        from pcocc.cluster import checkpoint, ckptdir
        from pcocc.repo.digest import from_hex, hash_file
        from pcocc.vm import migrate

        from pcocc.vm import snapshot

        name = self.machine.base_spec.name
        layer = None
        # a save's snapshot is merged back first, and none is taken until we are done
        with snapshot.locked(self.machine.run_dir, name, wait_s=CKPT_SAVE_WAIT_S), \
                self.machine.qmp() as qmp:
            if self.machine.overlay is not None:
                snapshot.settled(qmp, "disk0", self.machine.run_dir / snapshot.TEMP_OVERLAY)
            version = migrate.qemu_version(qmp)
            migrate.save_state(qmp, dest / ckptdir.STATE, name)
            if self.machine.overlay is not None:
                # QEMU flushed and released the disk when the migration completed
                fsutil.copy_sparse(self.machine.overlay, dest / ckptdir.DISK)
                layer = from_hex(Path(self.machine.image).name)
        if self.host_key is not None:
            fsutil.copy_sparse(self.host_key, dest / ckptdir.HOST_KEY)
        files = {p.name: hash_file(p) for p in sorted(dest.iterdir())}
        return checkpoint.Report("", checkpoint.SAVED, "", files=files, layer=layer,
                                 qemu_version=version)

    def resume_after_checkpoint(self) -> None:
        """Run the VM again after a checkpoint, its clock set by the guest agent."""
        from pcocc.vm import migrate

        with self.machine.qmp() as qmp:
            migrate.resume(qmp)
        migrate.set_guest_time(self.machine.agent(), self.machine.base_spec.name)

    def shutdown(self) -> None:
        try:
            self.machine.shutdown()
        finally:
            if self.nics is not None:
                self.nics.close()


def machine_factory(
    config: Config | None, batchid: str, kv: Any = None, address: str = "127.0.0.1",
    restore: Path | None = None,
) -> Callable[[ClusterDefinition, VmEntry, Path, Path], MachineVm]:
    """Build the VM of one rank from its template (``make_vm`` of the node process);
    its forwarded ports listen on ``address``. What the VM is comes from
    :mod:`pcocc.cluster.vmbuild`; this finds the host's part and starts nothing yet.

    :param restore: a checkpoint directory to restore the VM from (checked here)
    """

    def make(definition: ClusterDefinition, entry: VmEntry, node_dir: Path, host_key: Path):
        from pcocc.cluster import vmbuild, vmsettings
        from pcocc.vm.accel import resolve_accel
        from pcocc.vm.machine import Machine
        from pcocc.vm.seed import HostKey

        accel_notes: list[str] = []
        settings = vmbuild.runtime_settings(entry, batchid)
        image = None
        if entry.image:
            if config is None:
                raise PcoccError(f"{entry.name}: no configuration to resolve '{entry.image}'")
            image = image_top_layer(config, entry.image)
        host = vmbuild.VmHost(
            # the launcher says it once for the cluster, not every node (see ACCEL_NOTE)
            accel=resolve_accel(settings.get("accel"), warn=accel_notes.append),
            cpus=vmsettings.node_cpus(os.environ),
            address=address,
        )
        saved = restore_of(restore, entry.rank, image)
        key = HostKey(host_key.read_text(), host_key.with_suffix(".pub").read_text().strip())
        build = vmbuild.build_vm(
            definition, entry, settings, batchid=batchid, host=host, host_key=key, image=image
        )
        nics = private_nics(kv, definition, entry, batchid, vmbuild.nic_model(settings), address)
        try:
            if nics is not None:
                build = vmbuild.attach_private_nics(build, nics)
            machine = Machine(
                build.spec,
                node_dir / "qemu",
                image=build.image,
                seed=build.seed,
                boot_timeout_s=build.boot_timeout_s,
                shares=build.shares,
                pinning=build.pinning,
                restore=saved,
            )
            return MachineVm(machine, nics, accel_notes, host_key=host_key)
        except BaseException:
            if nics is not None:
                nics.close()
            raise

    return make


def restore_of(root: Path | None, rank: int, image: Path | None) -> Any:
    """The checked files of VM ``rank`` in checkpoint ``root`` (a Machine's Restore), or
    None without a checkpoint."""
    if root is None:
        return None
    from pcocc.cluster import ckptdir
    from pcocc.cluster.ckptrestore import restore_files
    from pcocc.repo.digest import from_hex
    from pcocc.vm.machine import Restore

    vm = restore_files(root, rank, from_hex(image.name) if image is not None else None)
    where = ckptdir.vm_dir(root, rank)
    return Restore(state=where / ckptdir.STATE,
                   disk=where / ckptdir.DISK if ckptdir.DISK in vm.files else None)


def private_nics(
    kv: Any,
    definition: ClusterDefinition,
    entry: VmEntry,
    batchid: str,
    nic_model: str,
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
        kv, user_name(), batchid, nets, names, entry.rank, address, nic_model
    )
