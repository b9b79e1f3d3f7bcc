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
    from pcocc.ctr.mds import MdsApp, image_id, parse_annotations, register_pod
    from pcocc.ctr.pods import process_start_ticks

    annotations = parse_annotations(opts.annotations)
    mds_apps = []
    for app, spec in zip(rec.apps, apps):
        labels = spec.image_config.get("Labels") or {}
        mds_apps.append(MdsApp(app.name, app.image, image_id(spec.image_config),
                               {str(k): str(v) for k, v in labels.items()}))
    pid = os.getpid()
    return register_pod(rec.uuid, mds_apps, annotations, pid=pid,
                        pid_start=process_start_ticks(pid))


def mds_mounts(dirs: Mapping[str, Path], app: str) -> list[Mount]:
    from pcocc.ctr.mds import CONTAINER_DIR

    return [Mount(str(dirs[app]), CONTAINER_DIR, readonly=False)] if app in dirs else []


def unregister_mds(rec: PodRecord) -> None:
    from pcocc.ctr.mds import unregister_pod

    unregister_pod(rec.uuid)
