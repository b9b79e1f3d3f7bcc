"""Run what ``pcocc run`` asks for on this node: resolve each image to a root filesystem,
then run the apps as one pod (:func:`pcocc.ctr.launch.run_pod`).

``pcocc run`` (one node) and each task of a multi-node run (``pcocc internal ctr-task``)
call :func:`run_request`; the CLI only turns options into a :class:`RunRequest`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pcocc.ctr.launch import RunOptions

if TYPE_CHECKING:
    from pcocc.config import Config
    from pcocc.ctr.fanout import Fanout
    from pcocc.ctr.pods import PodRecord, PodStore

#: one-line messages about slow steps (an import, a first preparation in the cache)
Notify = Callable[[str], None]


@dataclass(frozen=True)
class RunRequest:
    """The apps of a pod, as ``(image reference, args)``, and the options of the run."""

    apps: list[tuple[str, list[str]]]
    options: RunOptions = field(default_factory=RunOptions)


def run_request(
    request: RunRequest,
    config: Config,
    notify: Notify,
    on_started: Callable[[PodRecord], None] | None = None,
    fanout: Fanout | None = None,
    on_done: Callable[[PodStore, PodRecord], None] | None = None,
) -> int:
    """Run the pod of ``request`` on this node; returns its exit status.

    :param on_started: called once the apps run (see :func:`pcocc.ctr.launch.start_pod`)
    :param fanout: this task's place among the nodes of a multi-node run, which copy cold
        images to each other (:mod:`pcocc.ctr.fanout`)
    :param on_done: called with the pod's store and record once it has ended (the cache
        leases still held), e.g. to save its plan (:mod:`pcocc.ctr.planwrite`)
    """
    from pcocc.ctr.images import resolve_image
    from pcocc.ctr.launch import AppSpec, run_pod
    from pcocc.ctr.pods import PodStore
    from pcocc import timing

    with contextlib.ExitStack() as mounts:  # mounts and cache leases last as the pod
        specs = []
        for image, args in request.apps:
            rootfs, image_config, image_ref = resolve_image(
                config, image, mounts=mounts, notify=notify, fanout=fanout
            )
            specs.append(AppSpec(image, str(rootfs), image_config, args, image_ref))
        timing.mark("run: images resolved")
        store = PodStore()
        rec, status = run_pod(
            store, specs, request.options, config.containers, on_started=on_started
        )
        if on_done is not None:
            on_done(store, rec)
    return status
