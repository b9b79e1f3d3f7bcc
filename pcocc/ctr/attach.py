"""Operations on a pod that already runs: pick one of its apps, run a command in it, read
its logs (starting and running pods is :mod:`pcocc.ctr.launch`)."""

from __future__ import annotations

from collections.abc import Sequence

from pcocc import proc
from pcocc.ctr.launch import exit_status
from pcocc.ctr.pods import AppRecord, PodRecord, PodStore
from pcocc.errors import PcoccError, UsageError


def pick_app(rec: PodRecord, name: str | None) -> AppRecord:
    if name is None:
        if len(rec.apps) == 1:
            return rec.apps[0]
        raise UsageError(
            f"pod {rec.short_id} has several apps: {', '.join(a.name for a in rec.apps)}",
            hint="choose one with --app NAME",
        )
    for app in rec.apps:
        if app.name == name:
            return app
    raise UsageError(
        f"pod {rec.short_id} has no app '{name}'",
        hint=f"apps: {', '.join(a.name for a in rec.apps)}",
    )


def enter_pod(
    store: PodStore, rec: PodRecord, app_name: str | None, argv: Sequence[str], *, tty: bool = False
) -> int:
    """Run ``argv`` (default /bin/sh) inside a running app; returns its exit status."""
    from pcocc.ctr.probe import get_runtime

    if rec.state != "running":
        raise PcoccError(
            f"pod {rec.short_id} is {rec.state}, not running",
            hint="only running pods can be entered",
        )
    app = pick_app(rec, app_name)
    runtime = get_runtime(rec.runtime)
    record = {"bundle": str(store.app_dir(rec.uuid, app.name)), **runtime.exec_context(app.pid)}
    cmd, env = runtime.exec_argv(
        app.container_id, list(argv) or ["/bin/sh"], record=record, tty=tty
    )
    p = proc.spawn(cmd, env=env, stdin=None, stdout=None, stderr=None, new_session=False)
    return exit_status(p.wait())


def read_logs(store: PodStore, rec: PodRecord, app_name: str | None) -> list[tuple[str, bytes]]:
    """(app name, log content) of one app or of all."""
    apps = [pick_app(rec, app_name)] if app_name else rec.apps
    out = []
    for app in apps:
        try:
            out.append((app.name, store.log_path(rec.uuid, app.name).read_bytes()))
        except FileNotFoundError:
            out.append((app.name, b""))
    return out
