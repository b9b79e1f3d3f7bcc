"""The cluster definition as stored (in etcd, or the launcher's environment), and its
strict reading back.

:func:`pcocc.cluster.definition.build_definition` builds it from the configuration. The node
processes trust nothing they read: :func:`parse_definition` checks the shape of every field
(:class:`pcocc.fields.BadField` naming it), and :func:`check_settings` checks the template
settings against the schemas the user's configuration files passed when it was built.
"""

from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pcocc import fields
from pcocc.errors import ConfigError, Corrupt, NotFound

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Mount:
    """A host directory shared with the VMs (``--mount``)."""

    source: str
    #: where the guest mounts it (pcocc tells it); None: the guest mounts it by its tag
    target: str | None
    #: the mount tag; None: ``pcoccN`` (N: its index among the mounts)
    tag: str | None = None
    readonly: bool = False
    type: str = "virtio-fs"  # or "virtio-9p"


@dataclass
class VmEntry:
    rank: int
    name: str
    template: str
    settings: dict[str, Any]
    image: str | None
    cores: int
    address: str
    #: resolved networks of the template's resource set (see pcocc.net.resolve); empty:
    #: one user-mode NIC with the ssh forward
    networks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def hostname(self) -> str:
        return self.name


@dataclass
class ClusterDefinition:
    """Everything the node processes need to build their VM; stored in etcd as JSON."""

    vms: list[VmEntry]
    cores: int
    mounts: list[Mount] = field(default_factory=list)
    user_data: str | None = None
    ssh_authorized_keys: list[str] = field(default_factory=list)
    boot_timeout_s: float = 600.0
    owner: str = ""
    created: float = field(default_factory=time.time)
    spec: str = ""
    version: int = FORMAT_VERSION
    #: private networks of the cluster, by name, in order of first use (see pcocc.net.private)
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.vms)

    @property
    def full_node(self) -> bool:
        """Some VM wants a whole node: then every VM gets a node of its own."""
        return any(vm.settings.get("full-node") for vm in self.vms)

    @property
    def node_setup(self) -> bool:
        """Some VM uses a network that the Slurm plugin sets up as root on the nodes."""
        from pcocc.net.resolve import needs_node_setup

        return any(needs_node_setup(vm.networks) for vm in self.vms)

    def hosts_entries(self) -> dict[str, str]:
        """Hostname -> private address of every VM (goes into each VM's /etc/hosts)."""
        return {vm.name: vm.address for vm in self.vms}

    def vm(self, rank: int) -> VmEntry:
        if not 0 <= rank < len(self.vms):
            raise NotFound(f"vm{rank} does not exist: the cluster has vm0 to vm{self.size - 1}")
        return self.vms[rank]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, key: str | None = None) -> ClusterDefinition:
        """Parse a stored definition (etcd, or the launcher's environment); anything
        unexpected is :class:`Corrupt`, naming ``key`` and the field.

        The template settings of the VMs are checked for their shape here (plain JSON,
        no control characters); :func:`check_settings` checks them against the schemas of
        the configuration files, for the processes that build VMs from them.
        """
        return fields.parse_record(
            "cluster definition",
            key,
            text,
            lambda raw: parse_definition(fields.load_object(raw, MAX_DEFINITION_BYTES)),
        )


#: Largest stored definition: etcd's default request limit (1.5 MiB).
MAX_DEFINITION_BYTES = 1536 * 1024
#: how a mount reaches the guest
SHARE_TYPES = ("virtio-fs", "virtio-9p")
MAX_VMS = 250 * 256
MAX_CORES = 4096
_IMAGE_URI = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*:)?[A-Za-z0-9][A-Za-z0-9_./-]*(@[0-9]+)?$")
_DEF_FIELDS = ("vms", "cores", "mounts", "user_data", "ssh_authorized_keys", "boot_timeout_s",
               "owner", "created", "spec", "version", "networks")
_VM_FIELDS = ("rank", "name", "template", "settings", "image", "cores", "address")
#: template settings that may hold several lines (an inline cloud-init file)
_MULTILINE_SETTINGS = ("user-data",)


def parse_definition(data: dict[str, Any]) -> ClusterDefinition:
    """The strict parser of a stored definition (a JSON object).

    :raise pcocc.fields.BadField: naming the field
    """
    f = fields
    version = data.get("version")
    if version != FORMAT_VERSION:
        raise f.BadField(
            "version",
            f"format version {version!r}, expected {FORMAT_VERSION} (the cluster was started"
            " by another version of pcocc)",
        )
    f.fields_of(data, _DEF_FIELDS)
    raw_vms = data["vms"]
    if not isinstance(raw_vms, list) or not 1 <= len(raw_vms) <= MAX_VMS:
        raise f.BadField("vms", f"expected a list of 1 to {MAX_VMS} VMs")
    vms = []
    for index, entry in enumerate(raw_vms):
        try:
            vms.append(_parse_vm(entry, index))
        except f.BadField as err:
            raise err.within(f"vms[{index}]") from None
    return ClusterDefinition(
        vms=vms,
        cores=f.integer(data["cores"], "cores", 1, MAX_CORES),
        mounts=_parse_mounts(data["mounts"]),
        user_data=f.optional(f.text, data["user_data"], "user_data", MAX_DEFINITION_BYTES,
                             multiline=True),
        ssh_authorized_keys=f.str_list(
            data["ssh_authorized_keys"], "ssh_authorized_keys", f.ssh_public_key
        ),
        boot_timeout_s=_positive(data["boot_timeout_s"], "boot_timeout_s"),
        owner=f.text(data["owner"], "owner", 256),
        created=f.number(data["created"], "created", 0),
        spec=f.text(data["spec"], "spec"),
        version=FORMAT_VERSION,
        networks=_parse_private_networks(data["networks"]),
    )


def _positive(value: Any, field_name: str) -> float:
    number = fields.number(value, field_name)
    if number <= 0:
        raise fields.BadField(field_name, f"{number} is not positive")
    return number


def _parse_vm(entry: Any, index: int) -> VmEntry:
    f = fields
    if not isinstance(entry, dict):
        raise f.BadField("(entry)", "expected an object")
    f.fields_of(entry, _VM_FIELDS, ("networks",))
    rank = f.integer(entry["rank"], "rank", 0, MAX_VMS)
    if rank != index:
        raise f.BadField("rank", f"{rank} at position {index}")
    if entry["name"] != f"vm{rank}":
        raise f.BadField("name", f"expected 'vm{rank}', got {entry['name']!r}"[:100])
    image = f.optional(f.text, entry["image"], "image", 512)
    if image is not None and not _IMAGE_URI.match(image):
        raise f.BadField("image", f"expected an image URI [repo:]name[@rev], got {image!r}")
    networks = entry.get("networks", [])
    if not isinstance(networks, list):
        raise f.BadField("networks", "expected a list")
    for i, net in enumerate(networks):
        if not isinstance(net, dict):
            raise f.BadField(f"networks[{i}]", "expected an object")
        f.name(net.get("name"), f"networks[{i}].name")
        f.plain_json(net, f"networks[{i}]")
    return VmEntry(
        rank=rank,
        name=entry["name"],
        template=f.name(entry["template"], "template"),
        settings=_parse_settings(entry["settings"]),
        image=image,
        cores=f.integer(entry["cores"], "cores", 1, MAX_CORES),
        address=f.ipv4_address(entry["address"], "address"),
        networks=networks,
    )


def _parse_settings(settings: Any) -> dict[str, Any]:
    if not isinstance(settings, dict):
        raise fields.BadField("settings", "expected an object")
    for key, value in settings.items():
        fields.name(key, "settings key")
        if key in _MULTILINE_SETTINGS:
            fields.text(value, f"settings.{key}", MAX_DEFINITION_BYTES, multiline=True)
        else:
            fields.plain_json(value, f"settings.{key}")
    return settings


def _parse_mounts(value: Any) -> list[Mount]:
    if not isinstance(value, list):
        raise fields.BadField("mounts", "expected a list")
    mounts = []
    for i, item in enumerate(value):
        where = f"mounts[{i}]"
        if not isinstance(item, dict):
            raise fields.BadField(where, "expected an object")
        try:
            fields.fields_of(item, ("source", "target"), ("tag", "readonly", "type"))
        except fields.BadField as err:
            raise err.within(where) from None
        mounts.append(Mount(
            fields.abs_path(item["source"], f"{where}.source"),
            fields.optional(fields.abs_path, item["target"], f"{where}.target"),
            tag=fields.optional(fields.name, item.get("tag"), f"{where}.tag"),
            readonly=fields.boolean(item.get("readonly", False), f"{where}.readonly"),
            type=fields.choice(item.get("type", "virtio-fs"), f"{where}.type", SHARE_TYPES),
        ))
    return mounts


def _parse_private_networks(value: Any) -> dict[str, dict[str, Any]]:
    """``networks``: name -> {type: private, cidr, mtu}, each as PrivateNet.to_dict gives."""
    from pcocc.net.private import PrivateNet

    if not isinstance(value, dict):
        raise fields.BadField("networks", "expected an object")
    result = {}
    for name, conf in value.items():
        where = f"networks.{fields.name(name, 'networks key')}"
        if not isinstance(conf, dict):
            raise fields.BadField(where, "expected an object")
        try:
            fields.fields_of(conf, ("type", "cidr", "mtu"))
            fields.choice(conf["type"], "type", ("private",))
            fields.text(conf["cidr"], "cidr", 64)
            fields.integer(conf["mtu"], "mtu", 576, 9000)
        except fields.BadField as err:
            raise err.within(where) from None
        try:
            net = PrivateNet.from_config(name, conf)
        except ConfigError as err:
            raise fields.BadField(f"{where}.cidr", err.message) from None
        result[name] = net.to_dict()
    return result


def _net_id_error(net: dict[str, Any]) -> str | None:
    from pcocc.net.ethernet import MAX_NETWORKS

    if "net-id" not in net:
        return None
    value = net["net-id"]
    if type(value) is not int or not 0 <= value < MAX_NETWORKS or net.get("type") != "ethernet":
        return f"net-id {value!r} is not the position of an ethernet network"
    return None


def check_settings(definition: ClusterDefinition) -> None:
    """Check the template settings and networks of every VM against the schemas the
    configuration files passed when the definition was built (templates.yaml, the resource
    set of resources.yaml, networks.yaml): a stored definition gives a node process no more
    than the user's configuration could.

    :raise Corrupt: naming the VM and the setting
    """
    from pcocc.config.validate import fragment_error, load_schema

    template = copy.deepcopy(load_schema("templates")["$defs"]["template"])
    template["properties"].pop("inherits", None)
    resources = load_schema("resources")["properties"]["resource-sets"]
    template["properties"]["resources"] = resources["additionalProperties"]
    network = load_schema("networks")["properties"]["networks"]["additionalProperties"]
    for vm in definition.vms:
        problem = fragment_error(template, vm.settings)
        if problem is None:
            for net in vm.networks:
                # added by resolve_networks: the name, and an ethernet network's position
                problem = _net_id_error(net) or fragment_error(
                    network, {k: v for k, v in net.items() if k not in ("name", "net-id")})
                if problem is not None:
                    problem = f"network {net.get('name')}: {problem}"
                    break
        if problem is not None:
            raise Corrupt(
                f"invalid cluster definition: {vm.name} (template {vm.template}): {problem}",
                hint="this definition was not built by pcocc from your configuration",
            )
