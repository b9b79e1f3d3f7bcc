"""Template settings that become real only for one VM of one running cluster.

``%{clusterdir}`` and ``%{vm_rank}`` are expanded by :func:`runtime_settings` when the node
process builds its VM. ``persistent-drives`` are normalised by :func:`persistent_drives` and
checked for the whole cluster, before anything is allocated, by :func:`check_drives`.

The format of a persistent drive is never guessed by QEMU: a raw file whose guest wrote a
qcow2 header would otherwise be opened as qcow2 next time, backing file and all. It comes from
the entry's ``format``, else from the file's extension (``.qcow2``, ``.raw``, ``.img``); a
qcow2 file is checked to really be one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pcocc.config.placeholders import expand_runtime
from pcocc.errors import ConfigError

#: Settings whose strings may hold %{clusterdir} and %{vm_rank}.
RUNTIME_KEYS = (
    "custom-args", "mount-points", "persistent-drives", "user-data", "kernel", "initrd",
    "append", "instance-id",
)  # fmt: skip
DISK_MODELS = ("virtio", "virtio-scsi", "ide")
DRIVE_FORMATS = ("qcow2", "raw")
_EXTENSIONS = {".qcow2": "qcow2", ".qcow": "qcow2", ".raw": "raw", ".img": "raw"}
CREATE_HINT = "create it with 'qemu-img create -f qcow2 {path} SIZE' (e.g. SIZE 10G)"


@dataclass(frozen=True)
class PersistentDrive:
    """One entry of ``persistent-drives``, its placeholders expanded."""

    path: str
    format: str | None = None  # None: from the extension (see drive_format)
    cache: str = "writeback"
    readonly: bool = False


def runtime_settings(settings: Mapping[str, Any], *, clusterdir: str, vm_rank: int) -> dict:
    """A copy of a VM's settings with the run-time placeholders of :data:`RUNTIME_KEYS`
    expanded (and ``%%{`` turned into ``%{`` there)."""
    result = dict(settings)
    for key in RUNTIME_KEYS:
        if key in result:
            result[key] = expand_runtime(result[key], clusterdir=clusterdir, vm_rank=vm_rank)
    return result


def persistent_drives(settings: Mapping[str, Any]) -> list[PersistentDrive]:
    """The ``persistent-drives`` of (expanded) settings: a path or {path, cache, readonly,
    format} each."""
    drives = []
    for item in settings.get("persistent-drives") or ():
        if isinstance(item, str):
            drives.append(PersistentDrive(path=item))
        else:
            drives.append(
                PersistentDrive(
                    path=str(item["path"]),
                    format=item.get("format"),
                    cache=str(item.get("cache") or "writeback"),
                    readonly=bool(item.get("readonly", False)),
                )
            )
    return drives


def drive_format(template: str, drive: PersistentDrive) -> str:
    """``qcow2`` or ``raw``: the entry's ``format``, else the extension of its file.

    :raise ConfigError: neither says it
    """
    if drive.format:
        return drive.format
    fmt = _EXTENSIONS.get(os.path.splitext(drive.path)[1].lower())
    if fmt is None:
        raise ConfigError(
            f"template '{template}': persistent drive '{drive.path}': cannot tell its format",
            hint="name the file .qcow2 or .raw, or give the entry 'format: qcow2' or"
            " 'format: raw' (pcocc never lets QEMU guess a format)",
        )
    return fmt


def check_drive_file(template: str, drive: PersistentDrive, probe: Callable[[str], str]) -> None:
    """Refuse a drive whose file is missing, relative, or not of its format.

    :param probe: path -> format that ``qemu-img info`` detects
    :raise ConfigError: naming the template and the path
    """
    what = f"template '{template}': persistent drive '{drive.path}'"
    if not os.path.isabs(drive.path):
        raise ConfigError(f"{what}: the path must be absolute",
                          hint="use e.g. %{homedir}/data.qcow2")
    fmt = drive_format(template, drive)
    if not os.path.isfile(drive.path):
        raise ConfigError(f"{what}: no such file", hint=CREATE_HINT.format(path=drive.path))
    if fmt == "qcow2":
        found = probe(drive.path)
        if found != "qcow2":
            raise ConfigError(
                f"{what}: not a qcow2 image (qemu-img sees {found})",
                hint="give the entry 'format: raw' if it is a raw disk, or "
                + CREATE_HINT.format(path=drive.path),
            )


def check_drives(
    vms: Sequence[tuple[str, int, Mapping[str, Any]]],
    probe: Callable[[str], str] | None = None,
) -> None:
    """Check the persistent drives of every VM of a cluster before it is allocated.

    Paths under ``%{clusterdir}`` cannot exist yet and are only checked at run time.

    :param vms: (template, rank, settings) of every VM
    :param probe: path -> format qemu-img detects (default: :func:`probe_format`)
    :raise ConfigError: a missing or unreadable drive, or one that two VMs (or one VM twice)
        would write
    """
    probe = probe or probe_format
    users: dict[str, list[tuple[str, int, bool]]] = {}
    for template, rank, settings in vms:
        raw_drives = settings.get("persistent-drives") or ()
        if not raw_drives:
            continue
        expanded = runtime_settings(
            {"persistent-drives": raw_drives}, clusterdir="\0clusterdir", vm_rank=rank
        )
        for drive in persistent_drives(expanded):
            if "\0clusterdir" in drive.path:
                drive_format(template, drive)
                continue
            check_drive_file(template, drive, probe)
            key = os.path.realpath(drive.path)
            users.setdefault(key, []).append((template, rank, drive.readonly))
    for path, found in users.items():
        if len(found) > 1 and not all(readonly for _, _, readonly in found):
            names = ", ".join(f"vm{rank} ({tpl})" for tpl, rank, _ in found)
            templates = sorted({tpl for tpl, _, _ in found})
            raise ConfigError(
                f"template '{templates[0]}': persistent drive '{path}' would be written by"
                f" more than one VM: {names}",
                hint="put %{vm_rank} in its path to give each VM its own file, or attach it"
                " with 'readonly: true'",
            )


def probe_format(path: str) -> str:
    """The format ``qemu-img info`` detects for ``path`` (only to check a stated qcow2)."""
    from pcocc.repo import qemu_img

    return qemu_img.info(path).format


def node_cpus(env: Mapping[str, str]) -> int:
    """CPUs of this node for a full-node VM: Slurm's count for the job on this node, else
    the CPUs this process may run on."""
    text = env.get("SLURM_CPUS_ON_NODE", "")
    if text.isdigit() and int(text) > 0:
        return int(text)
    return len(os.sched_getaffinity(0)) or 1
