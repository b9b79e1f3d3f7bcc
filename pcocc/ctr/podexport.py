"""``pcocc pod export``: the changes an app of a stopped pod made to its root file system,
committed as a new container image (its image plus one layer) in a writable repository.

The changes are the upper directory of the app's writable layer
(:mod:`pcocc.ctr.rootlayer`), written as an OCI layer by :mod:`pcocc.repo.difflayer`;
:func:`pcocc.repo.ops.commit_ctr_layer` stores it and commits the image. A pod that still
runs is refused (its layer is still changing), and so is an app that has no layer or ran a
directory rather than a repository image. Nothing is written before these checks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pcocc.ctr import host
from pcocc.ctr.pods import AppRecord, PodRecord, PodStore, process_start_ticks
from pcocc.ctr.rootlayer import RootLayer
from pcocc.errors import NotFound, PcoccError, UsageError

if TYPE_CHECKING:
    from pcocc.repo.meta import ImageMeta
    from pcocc.repo.reposet import RepoSet


def export_pod(
    store: PodStore,
    repos: RepoSet,
    uuid: str,
    dest: str,
    *,
    app_name: str | None = None,
    description: str = "",
) -> ImageMeta:
    """Commit the changes of app ``app_name`` (may be omitted in a one-app pod) of the pod
    whose UUID starts with ``uuid`` as the new image ``dest`` ([REPO:]NAME).

    :raise NotFound: no such pod, app, or the pod's image was deleted since
    :raise UsageError: an ambiguous UUID prefix, or no ``app_name`` in a pod of several apps
    :raise PcoccError: the pod runs, never ran, or the app has nothing to export
    """
    from pcocc.repo import ops
    from pcocc.repo.difflayer import write_diff_layer

    rec = store.resolve(uuid)
    check_exportable(rec)
    app = pick_app(rec, app_name)
    where = f"app {app.name} of pod {rec.short_id}"
    if not app.layer:
        raise PcoccError(
            f"{where} ran on a read-only root (runtime {rec.runtime}): nothing to export",
            hint="run it with a runtime that gives apps a writable layer (crun, runc, unshare)",
        )
    if not app.image_ref:
        raise PcoccError(
            f"{where} ran the directory {app.image}, not a repository image: "
            "there is no image to add a layer to",
            hint="import the directory as an image first, and run that image",
        )
    try:
        base_repo, base = repos.resolve(app.image_ref)
    except NotFound:
        raise NotFound(
            f"the image {where} ran ({app.image}, {app.image_ref}) is no longer in any "
            "repository", hint="export needs the image the pod ran; import it again"
        ) from None
    bundle = store.app_dir(rec.uuid, app.name)
    upper = RootLayer(bundle).upper
    points = mount_points(bundle / "config.json")
    return ops.commit_ctr_layer(
        repos,
        base_repo,
        base,
        lambda path: write_diff_layer(upper, path, points),
        dest,
        created_by=f"pcocc pod export {rec.uuid} (app {app.name})",
        description=description or f"{base.ref} + changes of pod {rec.short_id}",
    )


def check_exportable(rec: PodRecord) -> None:
    """:raise PcoccError: the pod runs (or one of its apps' runtimes does), or never ran"""
    running = rec.state == "running" or (rec.state == "prepared" and rec.is_alive())
    if rec.node == os.uname().nodename and rec.boot_id == host.boot_id():
        # a supervisor killed hard may leave its runtime processes behind
        running = running or any(
            a.pid and a.pid_start and process_start_ticks(a.pid) == a.pid_start
            for a in rec.apps
        )
    if running:
        raise PcoccError(
            f"pod {rec.uuid} is running: its file systems are still changing",
            hint=f"stop it first ('pcocc pod stop {rec.short_id}'), then export it",
        )
    if rec.state == "prepared" or rec.started is None:
        raise PcoccError(f"pod {rec.uuid} was never started: nothing to export")


def mount_points(spec_path: Path) -> list[str]:
    """The mount destinations of an app's spec, but ``/`` (unreadable spec: none)."""
    try:
        spec = json.loads(spec_path.read_text())
        return [
            m["destination"] for m in spec.get("mounts", []) if m.get("destination") != "/"
        ]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return []


def pick_app(rec: PodRecord, name: str | None) -> AppRecord:
    names = [a.name for a in rec.apps]
    if name is None:
        if len(rec.apps) == 1:
            return rec.apps[0]
        raise UsageError(
            f"pod {rec.short_id} has {len(names)} apps: say which to export",
            hint=f"add --app NAME, one of: {', '.join(names)}",
        )
    for app in rec.apps:
        if app.name == name:
            return app
    raise NotFound(
        f"pod {rec.short_id} has no app '{name}'", hint=f"its apps: {', '.join(names)}"
    )
