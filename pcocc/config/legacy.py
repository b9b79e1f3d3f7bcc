"""pcocc 0.7's spellings of templates.yaml, resources.yaml and networks.yaml.

pcocc 0.7 puts the names at the top level of these files (``compute:`` rather than
``templates: {compute: ...}``). :func:`adapt` turns such a document into the wrapped form,
with every key position moved along, so that the schema, the loader and the error messages
see one form only. It also rewrites the 0.7 spellings that mean exactly what a current key
means, and lists the 0.7 settings this version cannot honour, each with its reason: they
are refused (never ignored) before the schema is checked.

0.7 spellings rewritten:

- ``mount-points: {TAG: PATH}`` -> ``{TAG: {path: PATH}}``;
- ``persistent-drives: [{PATH: {cache: ...}}]`` (one key, the path) -> ``{path: PATH, ...}``.
"""

from __future__ import annotations

from typing import Any

from pcocc.config.yamldoc import KeyPath, YamlDoc
from pcocc.errors import ConfigError

#: Files whose entries go under one top-level key in the current form.
ENTRIES_UNDER = {"templates": "templates", "resources": "resource-sets", "networks": "networks"}
_TOP_KEYS = {"allow-user-override"}

#: Template settings of pcocc 0.7 that this version refuses, and why.
TEMPLATE_REFUSED = {
    "disk-cache": (
        "the cache mode of the boot disk is not configurable in this version "
        "(its overlay is private to the VM and dropped at the end)"
    ),
    "ispod": "pods of pcocc 0.7 are not supported: run containers with 'pcocc run'",
    "placeholder": "an internal setting of pcocc 0.7, not a template setting",
}
#: Settings of persistent drives of pcocc 0.7 that this version refuses, and why.
DRIVE_REFUSED = {
    "mmp": (
        "multi-mount protection is not implemented: pcocc refuses a drive that several VMs "
        "of one cluster would write, but takes no lock against other clusters"
    ),
}
#: Settings of resource sets of pcocc 0.7 that this version refuses, and why.
RESOURCE_REFUSED = {
    "default": (
        "there is no default resource set: a template without 'resource-set' gets "
        "1 core, 1G and one user-mode network"
    ),
}
#: Network types of pcocc 0.7 and why this version refuses them (with what to use).
NETWORK_REFUSED = {
    "nat": ("NAT networks built by the Slurm plugin are not available in this version",
            "use 'type: user' (NAT by QEMU, ssh forwarded to each VM)"),
    "pv": ("private networks of pcocc 0.7 (Open vSwitch and host tunnels) are not "
           "available in this version", "use 'type: private' (a switch without privilege)"),
    "bridged": ("bridging VMs onto a host bridge is not available in this version",
                "use 'type: user' or 'type: private'"),
    "ib": ("InfiniBand networks (SR-IOV virtual functions, partition keys) are not "
           "available in this version", None),
    "infiniband": ("InfiniBand networks (SR-IOV virtual functions, partition keys) are not "
                   "available in this version", None),
    "hostib": ("passing the host's InfiniBand device through is not available in this "
               "version", None),
    "genericpci": ("PCI device passthrough is not available in this version", None),
}
ETHERNET_SETTINGS = (
    "networks of pcocc 0.7 ('type' and 'settings:') are not available: this version's "
    "network types have their own keys, directly under the network",
    "use 'type: private' or 'type: user', with the keys of docs/configuration.md",
)
_REMOVE = "remove this key"


def is_unwrapped(name: str, doc: YamlDoc) -> bool:
    """True when ``doc`` is a pcocc 0.7 file: names at the top level, no wrapping key."""
    top = ENTRIES_UNDER.get(name)
    if top is None or not doc.data:
        return False
    return not any(key in _TOP_KEYS or key == top for key in doc.data)


def _move(table: dict[KeyPath, tuple[int, int]], old: KeyPath, new: KeyPath) -> None:
    """Move the positions of ``old`` and everything under it to ``new``."""
    for path in [p for p in table if p[: len(old)] == old]:
        table[(*new, *path[len(old):])] = table.pop(path)


def wrap(name: str, doc: YamlDoc) -> None:
    """Put the top-level names of a pcocc 0.7 file under their key (positions follow)."""
    top = ENTRIES_UNDER[name]
    doc.data = {top: doc.data}
    for table in (doc.keys, doc.values):
        moved = {(top, *path) if path else path: pos for path, pos in table.items()}
        table.clear()
        table.update(moved)
    doc.values[(top,)] = doc.values.get((), (1, 1))
    doc.keys[(top,)] = doc.values[(top,)]


def _convert_template(doc: YamlDoc, base: KeyPath, tpl: dict[str, Any]) -> None:
    points = tpl.get("mount-points")
    if isinstance(points, dict):
        for tag, value in list(points.items()):
            if isinstance(value, str):
                points[tag] = {"path": value}
                where = (*base, "mount-points", tag)
                doc.values[(*where, "path")] = doc.values.get(where, (0, 0))
                doc.keys[(*where, "path")] = doc.keys.get(where, (0, 0))
    drives = tpl.get("persistent-drives")
    if isinstance(drives, list):
        for index, item in enumerate(drives):
            if not (isinstance(item, dict) and len(item) == 1 and "path" not in item):
                continue
            (path, opts), = item.items()
            if not isinstance(path, str) or not (opts is None or isinstance(opts, dict)):
                continue
            where = (*base, "persistent-drives", index)
            drives[index] = {"path": path, **(opts or {})}
            old = (*where, path)
            position = doc.keys.get(old, (0, 0))
            for table in (doc.keys, doc.values):
                _move(table, old, where)
                table[(*where, "path")] = position


def convert(name: str, doc: YamlDoc) -> None:
    """Rewrite the 0.7 spellings of templates that have an exact current equivalent."""
    if name != "templates":
        return
    for tpl_name, tpl in (doc.data.get("templates") or {}).items():
        if isinstance(tpl, dict):
            _convert_template(doc, ("templates", tpl_name), tpl)


def _refused(doc: YamlDoc, path: KeyPath, reason: str, hint: str | None) -> ConfigError:
    return doc.error(path, f"not supported (pcocc 0.7 setting): {reason}", key=True,
                     hint=hint or _REMOVE)


def refusals(name: str, doc: YamlDoc) -> list[tuple[KeyPath, ConfigError]]:
    """The 0.7 settings of ``doc`` (wrapped form) that this version refuses, in file order,
    each with the path of what to leave out to check the rest (a refused network: all of it).
    """
    found: list[tuple[KeyPath, ConfigError]] = []

    def refuse(path: KeyPath, reason: str, hint: str | None = None) -> None:
        found.append((path, _refused(doc, path, reason, hint)))

    entries = doc.data.get(ENTRIES_UNDER.get(name, ""))
    if not isinstance(entries, dict):
        return []
    top = ENTRIES_UNDER[name]
    for entry_name, entry in entries.items():
        if not isinstance(entry, dict):
            continue
        base = (top, entry_name)
        if name == "templates":
            for key, reason in TEMPLATE_REFUSED.items():
                if key in entry:
                    refuse((*base, key), reason)
            image = entry.get("image")
            if isinstance(image, str) and image.startswith("/"):
                found.append(((*base, "image"), doc.error(
                    (*base, "image"),
                    "a directory of images (pcocc 0.7 without repositories) is not supported",
                    hint="import the image into a repository ('pcocc image import FILE "
                         "NAME', or 'pcocc image repo import-legacy' for a 0.7 repository) "
                         "and set image: [repo:]NAME")))
            for index, drive in enumerate(entry.get("persistent-drives") or ()):
                for key, reason in DRIVE_REFUSED.items():
                    if isinstance(drive, dict) and key in drive:
                        refuse((*base, "persistent-drives", index, key), reason)
        elif name == "resources":
            for key, reason in RESOURCE_REFUSED.items():
                if key in entry:
                    refuse((*base, key), reason)
        elif name == "networks":
            kind = entry.get("type")
            if isinstance(kind, str) and kind in NETWORK_REFUSED:
                reason, hint = NETWORK_REFUSED[kind]
                found.append((base, doc.error(
                    (*base, "type"), f"network type '{kind}' of pcocc 0.7: {reason}",
                    hint=hint or "remove this network and its uses in resources.yaml")))
            elif "settings" in entry:
                refuse((*base, "settings"), *ETHERNET_SETTINGS)
    return sorted(found, key=lambda f: doc.keys.get(f[0]) or doc.values.get(f[0], (0, 0)))


def leave_out(doc: YamlDoc, path: KeyPath) -> None:
    """Remove the value at ``path`` from the data of ``doc`` (a refused setting)."""
    parent: Any = doc.data
    for part in path[:-1]:
        parent = parent[part]
    del parent[path[-1]]


def adapt(name: str, doc: YamlDoc) -> list[ConfigError]:
    """Bring a 0.7 document to the current form (in place); return what it cannot keep."""
    if is_unwrapped(name, doc):
        wrap(name, doc)
    convert(name, doc)
    return [err for _, err in refusals(name, doc)]
