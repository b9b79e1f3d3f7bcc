"""From an image reference to a root filesystem and its OCI image config.

A reference is a local directory (a rootfs, or a bundle-like directory holding ``rootfs/``
and ``config.json``) or, once the image repositories are wired in, an image URI
``[repo:]name[@rev]`` resolved through ``pcocc.repo.store`` and ``pcocc.repo.cache``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcocc.errors import Corrupt, NotFound

if TYPE_CHECKING:
    from pcocc.cli.context import Session

CONFIG_KEYS = ("Env", "Entrypoint", "Cmd", "WorkingDir", "User")


def image_config_from(data: Any, where: str) -> dict[str, Any]:
    """The ``config`` part of an OCI image config, an OCI runtime spec, or the part itself."""
    if not isinstance(data, dict):
        raise Corrupt(f"{where}: expected a JSON object")
    if isinstance(data.get("config"), dict):
        data = data["config"]
    elif isinstance(data.get("process"), dict):  # a runtime spec: take its process
        p = data["process"]
        data = {"Env": p.get("env"), "Cmd": p.get("args"), "WorkingDir": p.get("cwd")}
    return {k: data[k] for k in CONFIG_KEYS if data.get(k) is not None}


def _load_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise Corrupt(f"{path}: invalid JSON: {err}") from err
    return image_config_from(data, str(path))


def resolve_directory(ref: str) -> tuple[Path, dict[str, Any]] | None:
    path = Path(ref).expanduser()
    if not path.is_dir():
        return None
    path = path.resolve()
    if (path / "rootfs").is_dir():
        return path / "rootfs", _load_config(path / "config.json")
    return path, _load_config(path.parent / "config.json")


def resolve_rootfs(session: Session | None, image_ref: str) -> tuple[Path, dict[str, Any]]:
    """(rootfs directory, OCI image config) of ``image_ref``.

    :raise NotFound: neither a directory nor an image of the repositories
    """
    found = resolve_directory(image_ref)
    if found is not None:
        return found
    if session is not None and _repos_available():
        found = _resolve_from_repos(session, image_ref)
        if found is not None:
            return found
    raise NotFound(
        f"image '{image_ref}' not found",
        hint="give an image of 'pcocc image list' or the path of a root filesystem directory",
    )


def _repos_available() -> bool:
    try:
        return (
            importlib.util.find_spec("pcocc.repo.store") is not None
            and importlib.util.find_spec("pcocc.repo.cache") is not None
        )
    except ImportError:
        return False


def _resolve_from_repos(session: Session, image_ref: str) -> tuple[Path, dict[str, Any]] | None:
    """Hook for the image store and its container cache (wired when both exist).

    Expected shape: the store gives the image (and its blob path), the cache
    ``prepare(image, blob_path, mode) -> Path`` an unpacked bundle directory.
    """
    from pcocc.repo import cache, store

    resolver = getattr(store, "resolve_container_image", None)
    if resolver is None:
        return None
    image, blob_path = resolver(session, image_ref)
    bundle = Path(cache.prepare(image, blob_path, "dir"))
    rootfs = bundle / "rootfs" if (bundle / "rootfs").is_dir() else bundle
    return rootfs, _load_config(bundle / "config.json")
