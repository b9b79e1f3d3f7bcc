"""The ``containers.yaml`` settings: :class:`ContainerSettings`, which the configuration
loader builds once the files passed ``pcocc/config/schemas/containers.json`` and were merged
(the override rules of ``allow-user-override`` applied). Nothing is checked again here.
"""

from __future__ import annotations

import os

from pcocc.config.model import ContainerModule, ContainerSettings, MountConfig

__all__ = ["ContainerModule", "ContainerSettings", "MountConfig", "load_settings"]


def load_settings(
    system_dir: str | os.PathLike,
    user_dir: str | os.PathLike,
    preloaded: ContainerSettings | None = None,
) -> ContainerSettings:
    """``preloaded`` (a session's ``config.containers``), else the settings loaded through
    the configuration loader from both directories."""
    if preloaded is not None:
        return preloaded
    from pcocc.config import load_config

    return load_config(system_dir, user_dir).containers
