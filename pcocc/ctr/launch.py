"""Run a pod: build one bundle per app, start them with the runtime, record, wait, collect.

``run_pod`` is what ``pcocc run`` (one node) and ``pcocc internal ctr-task`` (one Slurm task)
call. The calling process supervises the pod: its pid and start time are in the record, so a
pod whose supervisor died shows as exited. App output goes to our stdout/stderr and to the
app's log file (except with ``interactive``, where the app owns the terminal).
"""

from __future__ import annotations

import json
import logging
import os
import re
import selectors
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pcocc import proc, timing
from pcocc.ctr.env import merge_env
from pcocc.ctr.mds_hook import mds_mounts, register_mds, unregister_mds
from pcocc.ctr.net import NetPlan, PodNetwork, add_gate, gate_path_for, plan_network
from pcocc.ctr.pods import AppRecord, PodRecord, PodStore, process_start_ticks
from pcocc.ctr.rootlayer import RootLayer, with_root_layer
from pcocc.ctr.settings import ContainerSettings
from pcocc.ctr.spec import Identity, SpecRequest, app_args, build_spec, parse_insecure_options
from pcocc.ctr.volumes import parse_mount, parse_volume, resolve_mounts, select_modules
from pcocc.errors import PcoccError, UsageError
from pcocc.signals import Interrupted, deferred_signals

log = logging.getLogger(__name__)


@dataclass
class AppSpec:
    """One app of ``pcocc run``: its image reference, rootfs and image config, and args."""

    image: str
    rootfs: str
    image_config: Mapping[str, Any] = field(default_factory=dict)
    args: Sequence[str] = ()
    #: the image ID of the repository image (``sha256-...``); "" for a directory
    image_ref: str = ""


@dataclass
class RunOptions:
    runtime: str | None = None
    set_env: Sequence[str] = ()
    env_files: Sequence[str] = ()
    inherit_env: bool = False
    volumes: Sequence[str] = ()
    mounts: Sequence[str] = ()
    modules: Sequence[str] = ()
    private_net: bool = False
    #: with private_net: auto, slirp or loopback (:mod:`pcocc.ctr.net`)
    net_mode: str = "auto"
    allow_host_loopback: bool = False
    #: ``[HOSTADDR:]HOSTPORT:PODPORT[/tcp|/udp]`` forwarded by slirp4netns
    ports: Sequence[str] = ()
    insecure: Sequence[str] = ()
    interactive: bool = False
    hostname: str | None = None
    as_root: bool = False
    #: ``pcocc run --detach``: the pod runs on under a supervisor of its own
    detach: bool = False
    #: serve the pod's metadata (:mod:`pcocc.ctr.mds`) and ``--annotation K=V`` values
    register_mds: bool = True
    annotations: Sequence[str] = ()


def app_names(images: Sequence[str]) -> list[str]:
    """Readable, unique app names from image references (``busybox``, ``busybox-2``)."""
    names: list[str] = []
    for ref in images:
        base = ref.rstrip("/").rsplit("/", 1)[-1].split("@")[0].split(":")[-1]
        if base == "rootfs":
            base = ref.rstrip("/").rsplit("/", 2)[-2] if ref.count("/") >= 1 else base
        name = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-") or "app"
        cand, i = name, 2
        while cand in names:
            cand, i = f"{name}-{i}", i + 1
        names.append(cand)
    return names


def exit_status(returncode: int) -> int:
    """A Popen return code as a shell would report it (128+N for signal N)."""
    return 128 - returncode if returncode < 0 else returncode


def prepare_pod(
    store: PodStore,
    apps: Sequence[AppSpec],
    opts: RunOptions,
    settings: ContainerSettings,
    *,
    runtime: Any,
    host_env: Mapping[str, str] | None = None,
    save: bool = True,
    net: NetPlan | None = None,
) -> PodRecord:
    """Check every input, create the pod and write the app bundles (state prepared).

    :param save: write the record now; ``run_pod`` saves it first when the apps have
        started, which spares one synced write on the start-up path
    :param net: the pod's network; with ``slirp`` the first app waits at the network gate
    """
    if not apps:
        raise UsageError("no image given", hint="pcocc run IMAGE [-- ARGS]")
    insecure = parse_insecure_options(opts.insecure)
    volumes = [parse_volume(v) for v in opts.volumes]
    mount_reqs = [parse_mount(m) for m in opts.mounts]
    module_names = list(dict.fromkeys([*settings.default_modules, *opts.modules]))
    where = settings.source
    mod_mounts, mod_env = select_modules(settings.modules, module_names)
    argvs = [app_args(a.image_config, a.args, a.image) for a in apps]
    names = app_names([a.image for a in apps])
    envs = [
        merge_env(
            image_env=a.image_config.get("Env") or (),
            config_env={**settings.env, **mod_env},
            host_env=(host_env if host_env is not None else os.environ)
            if opts.inherit_env
            else None,
            env_files=opts.env_files,
            set_env=opts.set_env,
        )
        for a in apps
    ]
    rec = store.create(
        [AppRecord(n, a.image, list(a.args), image_ref=a.image_ref) for n, a in zip(names, apps)],
        runtime=runtime.name,
        save=False,
    )
    try:
        rec.hostname = opts.hostname or f"pcocc-{rec.short_id}"
        mounts = resolve_mounts(
            volumes,
            mount_reqs,
            empty_dir=store.pod_dir(rec.uuid) / "volumes",
            config_mounts=[*settings.mounts, *mod_mounts],
            config_name=where,
        )
        mds_dirs = register_mds(rec, apps, opts) if serves_mds(opts, runtime) else {}
        ident = Identity(os.getuid(), os.getgid(), tuple(os.getgroups()), opts.as_root)
        for app, spec_app, argv, env in zip(rec.apps, apps, argvs, envs):
            bundle = store.app_dir(rec.uuid, app.name)
            layer = RootLayer(bundle) if runtime.supports_root_layer() else None
            if layer is not None:
                layer.create(spec_app.rootfs)
                app.layer = True
            req = SpecRequest(
                rootfs=str(spec_app.rootfs if layer is None else layer.merged),
                args=argv,
                env=env,
                identity=ident,
                cwd=str(spec_app.image_config.get("WorkingDir") or "/"),
                hostname=rec.hostname,
                mounts=[*mounts, *mds_mounts(mds_dirs, app.name)] if mds_dirs else mounts,
                private_net=opts.private_net,
                insecure=insecure,
                readonly_rootfs=layer is None,
            )
            app.container_id = f"pcocc-{rec.uuid}-{app.name}"
            spec = build_spec(req)
            if layer is not None:
                with_root_layer(spec, layer, spec_app.rootfs)
            spec = runtime.adapt_spec(spec)
            if net is not None and net.mode == "slirp" and app is rec.apps[0]:
                add_gate(spec, str(_gate_path(rec)))
            (bundle / "config.json").write_text(json.dumps(spec, indent=1))
        if save:
            store.save(rec)
    except BaseException:
        if serves_mds(opts, runtime):
            unregister_mds(rec)
        store.remove(rec)
        raise
    return rec


def serves_mds(opts: RunOptions, runtime: Any) -> bool:
    """Whether the pod is registered with the metadata service (a unix socket does not
    cross into a VM: the vm runtime's apps have none)."""
    return opts.register_mds and runtime.name != "vm"


def _on_term(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def start_pod(
    store: PodStore,
    rec: PodRecord,
    runtime: Any,
    *,
    interactive: bool = False,
    out: BinaryIO | None = None,
    err: BinaryIO | None = None,
    net: NetPlan | None = None,
    on_started: Callable[[PodRecord], None] | None = None,
    registered: bool = True,
) -> int:
    """Run the prepared pod's apps side by side and wait for them all.

    With ``on_started``, each app is first checked to have started its program
    (:meth:`Runtime.wait_started`); then ``on_started`` is called with the running record.
    An app that failed to start stops the pod with a :class:`PcoccError` that carries the
    runtime's message.

    With a ``slirp`` network (the pod must have been prepared with the same ``net``), the
    first app waits until slirp4netns serves its network namespace; slirp4netns stops with
    the pod.

    :param registered: the pod was registered with the metadata service: forget it at the end
    :return: 0 if every app exited 0, else the first non-zero exit status (in app order)
    """
    out = out or sys.stdout.buffer
    err = err or sys.stderr.buffer
    rec.pid = os.getpid()
    rec.pid_start = process_start_ticks(rec.pid)
    rec.started = time.time()
    rec.state = "running"
    popens: list[proc.Popen] = []
    logs: list[BinaryIO] = []
    old_term = signal.signal(signal.SIGTERM, _on_term)
    ns_fds: dict[str, int] = {}
    network = None
    if net is not None and net.mode == "slirp":
        network = PodNetwork(
            net,
            _gate_path(rec),
            store.pod_dir(rec.uuid) / "slirp4netns.log",
            api_path=_gate_path(rec, "slirp"),
        )
        network.open_gate()
    try:
        for i, app in enumerate(rec.apps):
            bundle = store.app_dir(rec.uuid, app.name)
            if i == 1:
                holder = runtime.namespace_holder(rec.apps[0].container_id, popens[0])
                if holder is not None:
                    ns_fds = _hold_namespaces(holder)
            if ns_fds:
                _share_with(bundle, ns_fds)
            argv = runtime.run_argv(bundle, app.container_id)
            if interactive:
                p = proc.spawn(argv, stdin=None, stdout=None, stderr=None, new_session=False)
            else:
                p = proc.spawn(argv, stdout=proc.PIPE, stderr=proc.PIPE)
            popens.append(p)
            logs.append(open(bundle / "log", "ab", buffering=0))  # noqa: SIM115
            app.pid, app.pid_start = p.pid, process_start_ticks(p.pid)
            if i == 0 and network is not None:
                network.connect(p)
        store.save(rec)
        timing.mark("run: apps spawned, record saved")
        if on_started is not None:
            _check_started(runtime, rec, popens, logs)
            on_started(rec)
        if not interactive:
            _pump(popens, logs, out, err)
        for app, p in zip(rec.apps, popens):
            app.exit_status = exit_status(p.wait())
        timing.mark("run: apps exited")
    except (KeyboardInterrupt, PcoccError) as err:
        stopped_by = signal.SIGINT if isinstance(err, KeyboardInterrupt) else None
        if isinstance(err, Interrupted):
            stopped_by = err.signum
        with deferred_signals():  # a second Ctrl-C must not leave containers behind
            for app, p in zip(rec.apps, popens):
                if p.poll() is None:
                    runtime.kill(app.container_id, p)
            for app, p in zip(rec.apps, popens):
                app.exit_status = exit_status(p.wait())
                # the runtime's record of a container killed under it outlives it
                runtime.cleanup(app.container_id)
        if stopped_by is not None:
            raise Interrupted(stopped_by, f"pod {rec.short_id} stopped by") from None
        raise
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if network is not None:
            network.stop()
        for f in logs:
            f.close()
        for fd in ns_fds.values():
            os.close(fd)
        rec.state = "exited"
        rec.exited = time.time()
        store.save(rec)
        if registered:
            unregister_mds(rec)
        timing.mark("run: record saved, pod done")
    return next((a.exit_status for a in rec.apps if a.exit_status), 0) or 0


def _check_started(
    runtime: Any, rec: PodRecord, popens: Sequence[proc.Popen], logs: Sequence[BinaryIO]
) -> None:
    """:raise PcoccError: an app's runtime ended with an error before running its program"""
    for app, p, log in zip(rec.apps, popens, logs):
        if runtime.wait_started(app.container_id, p):
            continue
        said = _drain(p, log).decode(errors="replace").strip().splitlines()
        raise PcoccError(
            f"app {app.name} of pod {rec.short_id} failed to start or ended at once "
            f"(exit status {exit_status(p.returncode)})" + (f": {said[-1]}" if said else ""),
            hint=f"see 'pcocc pod logs {rec.short_id}'",
        )


def _drain(p: proc.Popen, log: BinaryIO) -> bytes:
    """What an ended app's pipes hold now (without waiting), also written to its log."""
    data = b""
    for pipe in (p.stdout, p.stderr):
        if pipe is None:
            continue
        os.set_blocking(pipe.fileno(), False)
        try:
            chunk = pipe.read() or b""
        except BlockingIOError:
            chunk = b""
        data += chunk
    log.write(data)
    return data


def _hold_namespaces(pid: int) -> dict[str, int]:
    """Open the shareable namespaces of ``pid``: they outlive it while we hold them.

    Returns OCI type -> fd, or {} when ``pid`` is already gone (no sharing then).
    """
    from pcocc.ctr.nsjoin import SHARED_NAMESPACES

    fds: dict[str, int] = {}
    try:
        for oci_type, name in SHARED_NAMESPACES.items():
            fds[oci_type] = os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        for fd in fds.values():
            os.close(fd)
        return {}
    return fds


def _share_with(bundle: Path, ns_fds: Mapping[str, int]) -> None:
    """Make the app of ``bundle`` join the namespaces held in ``ns_fds``."""
    from pcocc.ctr.nsjoin import join_namespaces

    paths = {t: f"/proc/{os.getpid()}/fd/{fd}" for t, fd in ns_fds.items()}
    path = bundle / "config.json"
    path.write_text(json.dumps(join_namespaces(json.loads(path.read_text()), paths), indent=1))


def _pump(
    popens: Sequence[proc.Popen], logs: Sequence[BinaryIO], out: BinaryIO, err: BinaryIO
) -> None:
    """Copy every app's stdout/stderr to ours and to its log until all pipes close."""
    sel = selectors.DefaultSelector()
    for p, log in zip(popens, logs):
        sel.register(p.stdout, selectors.EVENT_READ, (log, out))
        sel.register(p.stderr, selectors.EVENT_READ, (log, err))
    while sel.get_map():
        for key, _ in sel.select():
            data = os.read(key.fd, 65536)
            if not data:
                sel.unregister(key.fileobj)
                key.fileobj.close()
                continue
            log, dest = key.data
            log.write(data)
            try:
                dest.write(data)
                dest.flush()
            except BrokenPipeError:
                pass
    sel.close()


def run_pod(
    store: PodStore,
    apps: Sequence[AppSpec],
    opts: RunOptions,
    settings: ContainerSettings,
    *,
    on_started: Callable[[PodRecord], None] | None = None,
) -> tuple[PodRecord, int]:
    """Prepare and run a pod on this node; returns its record and exit status.

    :param on_started: see :func:`start_pod`
    """
    from pcocc.ctr.probe import get_runtime

    runtime = get_runtime(opts.runtime or settings.runtime or "auto")
    net = plan_network(
        opts.private_net,
        opts.net_mode,
        allow_host_loopback=opts.allow_host_loopback,
        ports=opts.ports,
        runtime_name=runtime.name,
        warn=log.warning,
    )
    rec = prepare_pod(store, apps, opts, settings, runtime=runtime, save=False, net=net)
    timing.mark("run: pod prepared")
    rec.detached = opts.detach
    status = start_pod(
        store, rec, runtime, interactive=opts.interactive, net=net, on_started=on_started,
        registered=serves_mds(opts, runtime),
    )
    return rec, status


def _gate_path(rec: PodRecord, kind: str = "net") -> Path:
    from pcocc.paths import runtime_dir

    return gate_path_for(runtime_dir(), rec.uuid, kind)
