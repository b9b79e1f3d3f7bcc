"""Import/export drivers by format name, and parsing of ``[FORMAT:]SOURCE``.

Container drivers are imported lazily, so VM commands never load them. A container driver
module provides::

    import_image(source: str, fmt: str, staging: Path, add_blob: AddBlob, progress) -> OciImage
    export_image(image: OciImage, blob_path: Callable[[str], Path], dest: str, fmt: str,
                 workdir: Path, progress) -> None

and the SIF module ``import_sif(path, staging, add_blob, progress) -> OciImage``.
``source``/``dest`` are the text after ``FORMAT:`` (for ``docker://busybox`` that is
``//busybox``), so the skopeo reference is ``f"{fmt}:{source}"``.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from types import ModuleType

from pcocc.errors import PcoccError, UsageError
from pcocc.repo.qemu_img import VM_FORMATS

CONTAINER_FORMATS = ("docker", "docker-archive", "docker-daemon", "oci", "oci-archive", "dir",
                     "ostree")
SIF_FORMATS = ("simg", "sif")
ALL_FORMATS = (*VM_FORMATS, *CONTAINER_FORMATS, *SIF_FORMATS)

#: format name -> module implementing it (tests may point a format at a fake module).
DRIVER_MODULES: dict[str, str] = {
    **{f: "pcocc.repo.oci" for f in CONTAINER_FORMATS},
    **{f: "pcocc.repo.sif" for f in SIF_FORMATS},
}

#: File name extensions that tell the format.
EXTENSIONS = {
    ".raw": "raw", ".qcow2": "qcow2", ".qed": "qed", ".vdi": "vdi", ".vmdk": "vmdk",
    ".simg": "simg", ".sif": "sif",
}

_PREFIX_RE = re.compile(r"^([a-z][a-z0-9-]*):(.*)$", re.DOTALL)


@dataclass(frozen=True)
class FormatSpec:
    fmt: str | None  # None: to be found from the extension or the contents
    location: str  # path or transport reference, without the format prefix
    origin: str  # "option", "prefix", "extension" or "" (unknown yet)

    @property
    def is_container(self) -> bool:
        return self.fmt in CONTAINER_FORMATS or self.fmt in SIF_FORMATS


def _check_known(fmt: str, what: str) -> str:
    if fmt not in ALL_FORMATS:
        raise UsageError(f"unknown image format {fmt!r} ({what})",
                         hint="known formats: " + ", ".join(ALL_FORMATS))
    return fmt


def parse_format(text: str, type_opt: str | None = None) -> FormatSpec:
    """Split ``[FORMAT:]LOCATION``; the format comes from -t, the prefix, then the extension.

    A prefix counts only when it is a known format, or when no file of that name exists
    (``foo:bar`` then is an unknown format, not a file). -t and a different prefix conflict.
    """
    if not text:
        raise UsageError("empty image source or destination")
    if type_opt is not None:
        _check_known(type_opt, "-t option")
    fmt, origin, location = None, "", text
    m = _PREFIX_RE.match(text)
    if m and (m.group(1) in ALL_FORMATS or not os.path.lexists(text)):
        fmt = _check_known(m.group(1), f"prefix of {text!r}")
        location, origin = m.group(2), "prefix"
        if not location:
            raise UsageError(f"{text!r}: nothing after the format prefix")
    if type_opt is not None:
        if fmt is not None and fmt != type_opt:
            raise UsageError(f"-t {type_opt} conflicts with the format prefix of {text!r}",
                             hint="give the format once")
        fmt, origin = type_opt, "option"
    if fmt is None:
        ext = os.path.splitext(location)[1].lower()
        if ext in EXTENSIONS:
            fmt, origin = EXTENSIONS[ext], "extension"
    return FormatSpec(fmt, location, origin)


def load_driver(fmt: str) -> ModuleType:
    """The module implementing container format ``fmt``, imported on first use."""
    module = DRIVER_MODULES.get(fmt)
    if module is None:
        raise UsageError(f"format {fmt!r} has no container driver")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        raise PcoccError(
            f"container formats need the container drivers ({module}), "
            "which this pcocc installation does not have",
            hint="use a VM format (" + ", ".join(VM_FORMATS) + ") or install container support",
        ) from None
