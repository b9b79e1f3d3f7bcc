"""The cluster definition: which VMs to start, from which templates, with what.

``parse_spec("compute:4,login:1")`` gives the (template, count) pairs; ``build_definition``
checks them against the templates and the command-line overrides and produces a
:class:`ClusterDefinition` with one :class:`VmEntry` per rank. Everything is checked here,
before anything is allocated: a bad definition is a usage or configuration error (exit 2).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pcocc import fields
from pcocc.cluster.stored import (
    SHARE_TYPES,
    ClusterDefinition,
    Mount,
    VmEntry,
    parse_definition,
)
from pcocc.errors import ConfigError, NotFound, UsageError
from pcocc.vm import pinning
from pcocc.vm.pinning import Pinning

_TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
#: Subnet of the cluster's private addresses, used for /etc/hosts entries in the VMs when the
#: cluster has no private network (then the first private network's cidr gives them).
PRIVATE_NET = "10.252"



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


#: a ``--mount`` of pcocc 0.7's form: TAG=PATH[,type=virtio-fs|virtio-9p][,readonly]
_TAGGED_MOUNT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,35})=(.+)$", re.DOTALL)


def _source_dir(value: str, src: str) -> str:
    path = Path(src).expanduser()
    if not path.exists():
        raise UsageError(f"--mount '{value}': the source '{src}' does not exist")
    if not path.is_dir():
        raise UsageError(f"--mount '{value}': the source '{src}' is not a directory",
                         hint="only directories can be shared with the VMs")
    return str(path.resolve())


def _parse_tagged(value: str, tag: str, rest: str) -> Mount:
    """``TAG=PATH[,type=...][,readonly]``; a PATH with commas cannot have options."""
    src, options = rest, []
    if not Path(rest).expanduser().exists():
        src, *options = rest.split(",")
    kind, readonly = "virtio-fs", False
    for option in options:
        key, sep, arg = option.partition("=")
        if key == "readonly" and not sep:
            readonly = True
        elif key == "type" and arg in SHARE_TYPES:
            kind = arg
        else:
            raise UsageError(f"--mount '{value}': unknown option '{option}'",
                             hint="expected TAG=PATH[,type=virtio-fs|virtio-9p][,readonly]")
    return Mount(_source_dir(value, src), None, tag=tag, readonly=readonly, type=kind)


def parse_mount(value: str) -> Mount:
    """``SRC:DST`` (pcocc mounts SRC at DST in the guest), or pcocc 0.7's
    ``TAG=PATH[,type=virtio-fs|virtio-9p][,readonly]`` (the guest mounts it by its tag).

    :raise UsageError: naming the ``--mount`` argument
    """
    if any(c in value for c in "\n\0"):
        raise UsageError(f"--mount '{value}': newlines are not allowed in paths")
    tagged = _TAGGED_MOUNT.match(value)
    if tagged:
        return _parse_tagged(value, tagged.group(1), tagged.group(2))
    src, sep, dst = value.partition(":")
    if not sep or not src or not dst:
        raise UsageError(f"--mount '{value}': expected SRC:DST or TAG=PATH",
                         hint="e.g. --mount $HOME/data:/data, or --mount data=$HOME/data,readonly")
    if not dst.startswith("/"):
        raise UsageError(f"--mount '{value}': the target '{dst}' must be an absolute path")
    target = os.path.normpath(dst)
    if target.startswith("//"):
        target = "/" + target.lstrip("/")
    if target == "/":
        raise UsageError(f"--mount '{value}': cannot mount over the root of the VM")
    return Mount(_source_dir(value, src), target)


def parse_mounts(values: Sequence[str]) -> list[Mount]:
    """Every ``--mount``; two of them may not have the same target, nor the same tag."""
    mounts: list[Mount] = []
    seen: dict[str, str] = {}
    for value in values:
        mount = parse_mount(value)
        key = mount.target if mount.target is not None else f"tag {mount.tag}"
        if key in seen:
            what = f"target '{mount.target}'" if mount.target is not None else f"tag '{mount.tag}'"
            raise UsageError(f"--mount '{value}': {what} is already the "
                             f"{what.split()[0]} of --mount '{seen[key]}'")
        seen[key] = value
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
    check_image: Callable[[str], str | None] | None = None,
    networks: Mapping[str, Mapping[str, Any]] | None = None,
) -> ClusterDefinition:
    """Validate a cluster definition and produce one entry per VM rank.

    :param templates: resolved templates (inheritance already applied), by name
    :param cores: cores of every VM (``-c``); default: the template's resource set, else 1
    :param check_image: raises NotFound/UsageError when an image URI cannot be resolved;
        may return the local image URI to use instead (an image fetched for the template)
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
    checked: dict[str, str] = {}  # image of the templates -> the local image it is
    vms: list[VmEntry] = []
    for name, count in parts:
        settings = dict(templates[name])
        image = overrides.get(name, settings.get("image"))
        if not image and not settings.get("kernel"):
            raise ConfigError(
                f"template '{name}' has no image",
                hint=f"set 'image' in the template or give --image {name}=IMAGE",
            )
        if image and check_image is not None:
            if image not in checked:
                try:
                    checked[image] = check_image(image) or image
                except NotFound as err:
                    raise UsageError(f"template '{name}': {err}", hint=err.hint) from err
            image = checked[image]
        vm_cores = cores if cores is not None else _template_cores(name, settings)
        if not settings.get("full-node"):
            pinning.vcpus(name, vm_cores, Pinning.from_settings(settings))
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
    _check_ethernet_room(definition)
    return definition


def _check_ethernet_room(definition: ClusterDefinition) -> None:
    """Every VM needs an address in the job's subnet of each ethernet network it uses.

    :raise ConfigError: a job's subnet is too small for the cluster
    """
    from pcocc.net import ethernet

    for vm in definition.vms:
        for net in vm.networks:
            if net.get("type") == ethernet.TYPE:
                ethernet.from_config(net["name"], net, int(net["net-id"])).for_job(1).address(
                    vm.rank)


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
