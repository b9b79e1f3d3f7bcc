"""The cluster definition: which VMs to start, from which templates, with what.

``parse_spec("compute:4,login:1")`` gives the (template, count) pairs; ``build_definition``
checks them against the templates and the command-line overrides and produces a
:class:`ClusterDefinition` with one :class:`VmEntry` per rank. Everything is checked here,
before anything is allocated: a bad definition is a usage or configuration error (exit 2).
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pcocc import fields
from pcocc.errors import ConfigError, Corrupt, NotFound, UsageError

FORMAT_VERSION = 1
_TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
#: Subnet of the cluster's private addresses, used for /etc/hosts entries in the VMs when the
#: cluster has no private network (then the first private network's cidr gives them).
PRIVATE_NET = "10.252"


@dataclass(frozen=True)
class Mount:
    source: str
    target: str


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
            fields.fields_of(item, ("source", "target"))
        except fields.BadField as err:
            raise err.within(where) from None
        mounts.append(Mount(fields.abs_path(item["source"], f"{where}.source"),
                            fields.abs_path(item["target"], f"{where}.target")))
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
                problem = fragment_error(network, {k: v for k, v in net.items() if k != "name"})
                if problem is not None:
                    problem = f"network {net.get('name')}: {problem}"
                    break
        if problem is not None:
            raise Corrupt(
                f"invalid cluster definition: {vm.name} (template {vm.template}): {problem}",
                hint="this definition was not built by pcocc from your configuration",
            )


def parse_spec(spec: str) -> list[tuple[str, int]]:
    """``"tpl:N[,tpl2:M]"`` -> [(tpl, N), (tpl2, M)]; a bare ``tpl`` means one VM."""
    if not spec or not spec.strip():
        raise UsageError("empty cluster definition", hint="give it as TEMPLATE:COUNT, e.g. mytpl:2")
    parts: list[tuple[str, int]] = []
    seen: set[str] = set()
    for item in spec.split(","):
        name, sep, count_text = item.strip().partition(":")
        if not _TEMPLATE_NAME.match(name):
            raise UsageError(
                f"cluster definition '{spec}': '{item}' is not TEMPLATE:COUNT",
                hint="e.g. 'mytpl:2,other:1'",
            )
        if sep:
            if not count_text.isdigit() or int(count_text) < 1:
                raise UsageError(
                    f"cluster definition '{spec}': the count of '{name}' must be a positive"
                    f" integer, not '{count_text}'"
                )
            count = int(count_text)
        else:
            count = 1
        if name in seen:
            raise UsageError(f"cluster definition '{spec}': template '{name}' is given twice")
        seen.add(name)
        parts.append((name, count))
    return parts


def parse_image_overrides(
    values: Sequence[str], templates_in_spec: Sequence[str]
) -> dict[str, str]:
    """``--image [TPL=]IMAGE`` options -> {template: image} for templates of the definition."""
    result: dict[str, str] = {}
    for value in values:
        tpl, sep, image = value.partition("=")
        if not sep:
            tpl, image = "", value
        if not image:
            raise UsageError(f"--image '{value}': no image given", hint="use --image [TPL=]IMAGE")
        if tpl:
            if tpl not in templates_in_spec:
                raise UsageError(
                    f"--image '{value}': template '{tpl}' is not in the cluster definition",
                    hint=f"templates of this definition: {', '.join(templates_in_spec)}",
                )
            result[tpl] = image
        else:
            for name in templates_in_spec:
                result[name] = image
    return result


def parse_mount(value: str) -> Mount:
    """``SRC:DST`` -> Mount; the source must be a directory, the target an absolute path.

    :raise UsageError: naming the ``--mount`` argument
    """
    src, sep, dst = value.partition(":")
    if not sep or not src or not dst:
        raise UsageError(f"--mount '{value}': expected SRC:DST",
                         hint="e.g. --mount $HOME/data:/data")
    if any(c in value for c in "\n\0"):
        raise UsageError(f"--mount '{value}': newlines are not allowed in paths")
    if not dst.startswith("/"):
        raise UsageError(f"--mount '{value}': the target '{dst}' must be an absolute path")
    target = os.path.normpath(dst)
    if target.startswith("//"):
        target = "/" + target.lstrip("/")
    if target == "/":
        raise UsageError(f"--mount '{value}': cannot mount over the root of the VM")
    path = Path(src).expanduser()
    if not path.exists():
        raise UsageError(f"--mount '{value}': the source '{src}' does not exist")
    if not path.is_dir():
        raise UsageError(f"--mount '{value}': the source '{src}' is not a directory",
                         hint="only directories can be shared with the VMs")
    return Mount(str(path.resolve()), target)


def parse_mounts(values: Sequence[str]) -> list[Mount]:
    """Every ``--mount``; two of them may not have the same target."""
    mounts: list[Mount] = []
    seen: dict[str, str] = {}
    for value in values:
        mount = parse_mount(value)
        if mount.target in seen:
            raise UsageError(f"--mount '{value}': target '{mount.target}' is already the "
                             f"target of --mount '{seen[mount.target]}'")
        seen[mount.target] = value
        mounts.append(mount)
    return mounts


def read_user_data(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as err:
        raise UsageError(f"--user-data '{path}': cannot read it: {err.strerror}") from err


def vm_address(rank: int) -> str:
    if rank >= 250 * 256:
        raise UsageError(f"too many VMs ({rank + 1}) in one cluster")
    return f"{PRIVATE_NET}.{rank // 250}.{rank % 250 + 1}"


def _template_cores(name: str, settings: Mapping[str, Any]) -> int:
    value = (settings.get("resources") or {}).get("cores", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"template '{name}': cores of its resource set must be a positive integer"
        )
    return value


def build_definition(
    spec: str,
    templates: Mapping[str, Mapping[str, Any]],
    *,
    cores: int | None = None,
    images: Sequence[str] = (),
    mounts: Sequence[str] = (),
    user_data_file: str | None = None,
    ssh_authorized_keys: Sequence[str] = (),
    owner: str = "",
    boot_timeout_s: float = 600.0,
    check_image: Callable[[str], None] | None = None,
    networks: Mapping[str, Mapping[str, Any]] | None = None,
) -> ClusterDefinition:
    """Validate a cluster definition and produce one entry per VM rank.

    :param templates: resolved templates (inheritance already applied), by name
    :param cores: cores of every VM (``-c``); default: the template's resource set, else 1
    :param check_image: raises NotFound/UsageError when an image URI cannot be resolved
    :param networks: networks.yaml definitions by name, for the ``networks`` of resource
        sets; the VMs' private addresses come from the first private network that they use
    :raise UsageError: bad definition or option
    :raise ConfigError: a template cannot run (no image and no kernel, or a network this
        version cannot build)
    """
    from pcocc.net.resolve import resolve_networks

    if cores is not None and cores < 1:
        raise UsageError(f"-c/--cores must be at least 1, not {cores}")
    parts = parse_spec(spec)
    names = [name for name, _ in parts]
    for name in names:
        if name not in templates:
            known = ", ".join(sorted(templates)) or "none defined"
            raise UsageError(
                f"cluster definition '{spec}': unknown template '{name}'",
                hint=f"known templates: {known} (see 'pcocc template list')",
            )
    overrides = parse_image_overrides(images, names)
    mount_list = parse_mounts(mounts)
    user_data = read_user_data(user_data_file) if user_data_file else None
    private = _private_networks(parts, templates, networks or {})
    hosts_net = next(iter(private.values()), None)
    checked: set[str] = set()
    vms: list[VmEntry] = []
    for name, count in parts:
        settings = dict(templates[name])
        image = overrides.get(name, settings.get("image"))
        if not image and not settings.get("kernel"):
            raise ConfigError(
                f"template '{name}' has no image",
                hint=f"set 'image' in the template or give --image {name}=IMAGE",
            )
        if image and check_image is not None and image not in checked:
            try:
                check_image(image)
            except NotFound as err:
                raise UsageError(f"template '{name}': {err}", hint=err.hint) from err
            checked.add(image)
        vm_cores = cores if cores is not None else _template_cores(name, settings)
        net_defs = resolve_networks(
            name,
            settings.get("resource-set"),
            list((settings.get("resources") or {}).get("networks") or ()),
            networks or {},
        )
        for _ in range(count):
            rank = len(vms)
            vms.append(
                VmEntry(
                    rank=rank,
                    name=f"vm{rank}",
                    template=name,
                    settings=settings,
                    image=image,
                    cores=vm_cores,
                    address=hosts_net.address(rank) if hosts_net else vm_address(rank),
                    networks=net_defs,
                )
            )
    definition = ClusterDefinition(
        vms=vms,
        cores=max(vm.cores for vm in vms),
        mounts=mount_list,
        user_data=user_data,
        ssh_authorized_keys=list(ssh_authorized_keys),
        owner=owner,
        boot_timeout_s=boot_timeout_s,
        spec=spec,
        networks={name: net.to_dict() for name, net in private.items()},
    )
    _check_storable(definition)
    return definition


def _check_storable(definition: ClusterDefinition) -> None:
    """Refuse now, before anything is allocated, a definition that the node processes
    would refuse when they read it back (they parse it with the same parser).

    :raise ConfigError: naming the field
    """
    try:
        parse_definition(json.loads(definition.to_json()))
    except fields.BadField as err:
        raise ConfigError(
            f"cluster definition '{definition.spec}': {err.field}: {err.problem}",
            hint="settings must be printable text without control characters"
            " (only user-data may have several lines)",
        ) from None


def vm_networks(settings: Mapping[str, Any]) -> list[str]:
    """Names of the networks of a VM (its resource set's ``networks``)."""
    return list((settings.get("resources") or {}).get("networks") or [])


def _private_networks(
    parts: Sequence[tuple[str, int]],
    templates: Mapping[str, Mapping[str, Any]],
    networks: Mapping[str, Mapping[str, Any]],
) -> dict:
    from pcocc.net.private import cluster_networks

    per_vm = [vm_networks(templates[name]) for name, count in parts for _ in range(count)]
    return cluster_networks(per_vm, networks)
