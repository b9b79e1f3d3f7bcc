"""Which NICs a VM gets: its template's resource set lists networks by name (resources.yaml),
and networks.yaml defines them.

Two steps. :func:`resolve_networks` runs when the cluster definition is built, before anything
is allocated: it looks the names up, refuses what this version cannot run, and returns the
definitions that go into the cluster definition (so the node processes need no configuration
to build the NICs). :func:`plan_networks` runs in the node process and turns those
definitions into a :class:`NetworkPlan` by calling one builder per network type
(:data:`BUILDERS`). A new type adds a builder there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pcocc.errors import ConfigError
from pcocc.net import ethernet, user

log = logging.getLogger(__name__)

#: Types refused before allocation, with the reason.
UNSUPPORTED_TYPES: dict[str, str] = {}
#: Types set up as root on the job's nodes by the pcocc Slurm plugin (``JobSpec.node_setup``)
NODE_SETUP_TYPES = frozenset({ethernet.TYPE})
#: Types built elsewhere: a ``private`` NIC needs the cluster's switch, found through etcd
#: (:func:`pcocc.net.private.prepare_nics`), so :func:`plan_networks` leaves them out.
SKIPPED_TYPES = frozenset({"private"})


@dataclass(frozen=True)
class VmContext:
    """Where the NICs are built: the VM's job (Slurm job id), its rank, its NIC model, and
    whether it may use vhost-net. Without one (checking a definition before allocating),
    builders check the settings and add no QEMU arguments."""

    job: int
    rank: int
    nic_model: str = "virtio-net-pci"
    vhost: bool = False


@dataclass
class NetworkPlan:
    """The NICs of one VM: user-mode NICs (their forwards need host ports picked at start),
    and the QEMU arguments of NICs of other types."""

    user_nets: list[user.UserNet] = field(default_factory=list)
    qemu_args: list[str] = field(default_factory=list)
    vm: VmContext | None = None
    #: the ethernet networks of the VM, in order
    ethernets: list[ethernet.EthernetNet] = field(default_factory=list)

    @property
    def has_ssh(self) -> bool:
        return any(n.has_ssh for n in self.user_nets)

    @property
    def forwards(self) -> list[int]:
        """Every forwarded guest port, listening or private (a port is forwarded by one NIC
        only)."""
        return [p for n in self.user_nets for p in n.ports]

    @property
    def private(self) -> list[int]:
        """The private forwards: reached through the VM's ssh server, nothing listens."""
        return [p for n in self.user_nets for p in n.private]


#: builder(name, settings, index, plan): add the NIC of network ``name`` (its networks.yaml
#: settings, with ``type``) to ``plan``; ``index`` is its position among the VM's networks.
Builder = Callable[[str, Mapping[str, Any], int, NetworkPlan], None]


def _build_user(name: str, settings: Mapping[str, Any], index: int, plan: NetworkPlan) -> None:
    wants_ssh = bool(settings.get("ssh-forward", True))
    if wants_ssh and plan.has_ssh:
        log.debug("network %s: ssh is already forwarded by another network", name)
    ssh = wants_ssh and not plan.has_ssh
    taken = set(plan.forwards)
    net = user.from_config(name, settings, index, ssh=ssh)
    dup = [p for p in net.ports if p in taken]
    if dup:
        raise ConfigError(
            f"network '{name}' forwards guest port {dup[0]}, which another network of the"
            " same VM forwards already",
            hint="forward each guest port in one network of networks.yaml only",
        )
    plan.user_nets.append(net)


def _build_ethernet(name: str, settings: Mapping[str, Any], index: int,
                    plan: NetworkPlan) -> None:
    net = ethernet.from_config(name, settings, int(settings.get("net-id", 0)))
    if plan.vm is not None:
        net = net.for_job(plan.vm.job)
    plan.ethernets.append(net)
    if plan.vm is not None:
        net.address(plan.vm.rank)  # the network has room for the VM
        plan.qemu_args += ethernet.tap_netdev_args(plan.vm.job, net, plan.vm.rank, index,
                                                   plan.vm.nic_model, plan.vm.vhost)


BUILDERS: dict[str, Builder] = {"user": _build_user, ethernet.TYPE: _build_ethernet}


def needs_node_setup(networks: Sequence[Mapping[str, Any]]) -> bool:
    """Whether resolved network definitions need the Slurm plugin's root setup."""
    return any(n.get("type") in NODE_SETUP_TYPES for n in networks)


def resolve_networks(
    template: str,
    resource_set: str | None,
    names: Sequence[str],
    networks: Mapping[str, Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """The definitions (``{"name": ..., "type": ..., ...}``) of the networks ``names`` of
    a template's resource set, in order.

    :raise ConfigError: a name is not in networks.yaml, or its type cannot run here
    """
    result: list[dict[str, Any]] = []
    where = f"resource set '{resource_set}' (resources.yaml) of template '{template}'"
    for name in names:
        settings = networks.get(name)
        if settings is None:
            raise ConfigError(
                f"network '{name}' of {where} is not defined",
                hint="define it in networks.yaml or remove it from the resource set",
            )
        kind = settings.get("type")
        if kind in UNSUPPORTED_TYPES:
            raise ConfigError(
                f"network '{name}' of {where} has type {kind}, which {UNSUPPORTED_TYPES[kind]}",
                hint=f"remove '{name}' from the networks of '{resource_set}' in resources.yaml",
            )
        if kind not in BUILDERS and kind not in SKIPPED_TYPES:
            raise ConfigError(
                f"network '{name}' of {where} has unknown type {kind!r}",
                hint="known types: " + ", ".join(sorted({*BUILDERS, *SKIPPED_TYPES})),
            )
        resolved = {**settings, "name": name}
        if kind == ethernet.TYPE:
            resolved["net-id"] = ethernet.ethernet_names(networks).index(name)
        result.append(resolved)
    plan_networks(result)  # the node would refuse it: say so before allocating
    return result


def plan_networks(networks: Sequence[Mapping[str, Any]],
                  vm: VmContext | None = None) -> NetworkPlan:
    """The NICs for the resolved network definitions of a VM; with none, one user NIC with
    the ssh forward (the behaviour of templates without networks).

    :raise ConfigError: a definition this version cannot build
    """
    plan = NetworkPlan(vm=vm)
    if not networks:
        plan.user_nets.append(user.default_net())
        return plan
    for index, settings in enumerate(networks):
        kind = settings.get("type")
        name = str(settings.get("name", f"#{index}"))
        builder = BUILDERS.get(str(kind))
        if builder is None:
            if kind in SKIPPED_TYPES:
                continue
            raise ConfigError(f"network '{name}' has type {kind!r}, which cannot be built here")
        builder(name, settings, index, plan)
    if plan.private and not plan.has_ssh:
        nets = [n.network for n in plan.user_nets if n.private]
        raise ConfigError(
            f"network '{nets[0]}' forwards guest port {plan.private[0]} privately, but the VM"
            " forwards no ssh port ('pcocc nc' reaches private forwards through the VM's ssh"
            " server)",
            hint="set ssh-forward: true on one of the VM's user networks, or list the port"
            " in public-forwards to let anyone who reaches the node connect (networks.yaml)",
        )
    return plan
