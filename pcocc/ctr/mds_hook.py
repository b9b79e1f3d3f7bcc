"""Where a pod's run meets the metadata service (:mod:`pcocc.ctr.mds`): register the pod
when it is prepared, bind each app's socket directory, forget the pod when it ends."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcocc.ctr.volumes import Mount

if TYPE_CHECKING:
    from pcocc.ctr.pods import PodRecord


def register_mds(rec: PodRecord, apps: Sequence[Any], opts: Any) -> dict[str, Path]:
    """Register ``rec`` (its apps are the ``AppSpec`` of ``apps``), supervised by this
    process; returns app name -> socket directory."""
    from pcocc.ctr.mds import parse_annotations, register_pod
    from pcocc.ctr.pods import process_start_ticks

    pid = os.getpid()
    return register_pod(rec.uuid, mds_apps(rec, [a.image_config for a in apps]),
                        parse_annotations(opts.annotations), pid=pid,
                        pid_start=process_start_ticks(pid))


def mds_apps(rec: PodRecord, image_configs: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The :class:`~pcocc.ctr.mds.MdsApp` of each app of ``rec``, whose image configs (as
    ``AppSpec.image_config``) are ``image_configs``."""
    from pcocc.ctr.mds import MdsApp, image_id

    out = []
    for app, config in zip(rec.apps, image_configs):
        labels = config.get("Labels") or {}
        out.append(MdsApp(app.name, app.image, image_id(config),
                          {str(k): str(v) for k, v in labels.items()}))
    return out


def mds_mounts(dirs: Mapping[str, Path], app: str) -> list[Mount]:
    from pcocc.ctr.mds import CONTAINER_DIR

    return [Mount(str(dirs[app]), CONTAINER_DIR, readonly=False)] if app in dirs else []


def unregister_mds(rec: PodRecord) -> None:
    from pcocc.ctr.mds import unregister_pod

    unregister_pod(rec.uuid)
