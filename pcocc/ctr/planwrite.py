"""Save the plan of a ``pcocc run`` that qualifies, for the next identical command line
(:mod:`pcocc.ctr.runplan` says what a plan holds and how it is checked).

Called by the one-node ``pcocc run`` (:mod:`pcocc.cli.fastrun`) once its pod has ended,
from what the run did: its app's spec and record as written, the runtime's argv. A run
that does anything the plan's executor (:mod:`pcocc.ctr.planexec`) does not redo is not
planned (:func:`eligible`), and neither is one whose pod UUID cannot be told apart from the
rest of its spec. Saving never fails a run: a plan that cannot be saved is simply absent.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcocc.ctr import runplan
from pcocc.ctr.planexec import RECORD_VALUES

if TYPE_CHECKING:
    from pcocc.config import Config
    from pcocc.ctr.pod import RunRequest
    from pcocc.ctr.pods import PodRecord, PodStore

log = logging.getLogger(__name__)

#: ``[REPO:]NAME[@REV]``: an image of the repositories, named (not an ID, file or URL)
_IMAGE_RE = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._-]*:)?[A-Za-z0-9][A-Za-z0-9._-]*(?:@\d+)?")
#: pcocc's modules whose code shapes what a plan holds: a changed one makes plans miss
SHAPING_MODULES = ("__init__.py", "ctr/launch.py", "ctr/spec.py", "ctr/env.py",
                   "ctr/volumes.py", "ctr/rootlayer.py", "ctr/pods.py", "ctr/images.py",
                   "ctr/probe.py", "ctr/runtimes/base.py", "ctr/runtimes/oci.py",
                   "ctr/runplan.py", "ctr/planexec.py", "ctr/planwrite.py",
                   "config/loader.py", "repo/cache.py", "repo/reposet.py")


def eligible(request: RunRequest, config: Config) -> bool:
    """Whether the run of ``request`` is one a plan can replay: one repository image in a
    ``dir`` cache, and nothing that differs from run to run besides the pod's UUID."""
    from pcocc.ctr.volumes import select_modules

    opts, settings = request.options, config.containers
    if len(request.apps) != 1 or not _IMAGE_RE.fullmatch(request.apps[0][0]):
        return False
    if (opts.private_net or opts.ports or opts.inherit_env or opts.env_files or opts.volumes
            or opts.mounts or opts.interactive or opts.detach or settings.mounts):
        return False
    try:
        mod_mounts, _ = select_modules(settings.modules,
                                       [*settings.default_modules, *opts.modules])
    except Exception:  # noqa: BLE001 - the run itself reports a bad module
        return False
    cache = config.cache
    return not mod_mounts and cache is not None and (cache.mode or "dir") == "dir"


def save(argv: list[str], request: RunRequest, config: Config, store: PodStore,
         rec: PodRecord) -> None:
    """Write the plan of ``argv``, the command line of the run that made ``rec``, when the
    run is :func:`eligible`."""
    if os.environ.get("PCOCC_RUN_PLANS") == "0":
        return
    try:
        if not eligible(request, config):
            return
        fields = plan_fields(argv, request, config, store, rec)
    except Exception as err:  # noqa: BLE001 - a plan is an optimisation only
        log.debug("no run plan saved: %s", err)
        return
    if fields is None:
        return
    from pcocc import paths
    from pcocc.fsutil import write_atomic

    path = runplan.plan_path(argv)
    if path is None:
        return
    try:
        paths.private_dir(os.path.dirname(path), what="run plan directory")
        write_atomic(path, runplan.dump(fields), 0o600, sync_dir=False)
    except Exception as err:  # noqa: BLE001
        log.debug("no run plan saved: %s", err)


def plan_fields(argv: list[str], request: RunRequest, config: Config, store: PodStore,
                rec: PodRecord) -> list[tuple[str, str]] | None:
    """The fields of the plan, or None when this run cannot be replayed from one."""
    from pcocc.config.validate import FILES
    from pcocc.ctr.images import find_image
    from pcocc.ctr.probe import get_runtime, probe_cache_path
    from pcocc.repo.cache import ContainerCache, _key
    from pcocc.repo.reposet import RepoSet

    if len(rec.apps) != 1 or rec.state != "exited":
        return None
    app = rec.apps[0]
    opts = request.options
    runtime = get_runtime(opts.runtime or config.containers.runtime or "auto")
    if runtime.name not in ("crun", "runc") or rec.runtime != runtime.name:
        return None
    if not all(isinstance(v, str) and "," not in v and "=" not in k
               for k, v in runtime.mode.items()):
        return None
    image = request.apps[0][0]
    repos = RepoSet(config.repos)
    repo, meta = find_image(repos, image)
    if meta.ref != app.image_ref:
        return None  # the image changed during the run
    cache = ContainerCache.from_config(config.cache)
    key = _key(meta.oci_image().manifest_digest, "dir")
    entry = cache.entries_dir / key
    bundle = store.app_dir(rec.uuid, app.name)

    short = rec.uuid[:8]
    own_host = f"pcocc-{short}" if opts.hostname is None else None
    spec = _template((bundle / "config.json").read_text(), rec.uuid, own_host)
    cmd = [_template(a, rec.uuid, own_host) for a in runtime.run_argv(bundle, app.container_id)]
    record = _record_template(rec, own_host)
    if any(short in t for t in (spec, *cmd, record)) or str(entry) not in spec:
        return None  # the UUID is not only where it is expected

    watched = [*_config_files(config.system_dir, config.user_dir, FILES)]
    for r in repos.repos:
        watched.append(r.layout.image_dir(meta.name))
    watched += [repo.layout.meta_path(meta.name, meta.revision), entry,
                entry / "meta.json", entry / "rootfs", probe_cache_path()]
    watched += [Path(a) for a in cmd if a.startswith("/") and os.path.isfile(a)]
    watched += [Path(runplan.PACKAGE_DIR, m) for m in SHAPING_MODULES]
    stats = [f"{p}\0{runplan.stat_sig(str(p))}" for p in dict.fromkeys(map(str, watched))]
    private = [store.root.parent, store.root, cache.root]
    mds = ""
    if opts.register_mds:
        from pcocc.ctr.mds import mds_dir

        mds = f"{mds_dir()}\0{_mds_template(rec, meta, opts.annotations, own_host)}"
        if short in mds:
            return None
        private += [mds_dir(), mds_dir() / "records", mds_dir() / "sockets"]
    stats += [f"{p}\0{runplan.stat_sig(str(p), dir_only=True)}" for p in private]
    return [
        ("argv", runplan.line_key(argv)),
        ("ids", runplan.ids()),
        ("env", runplan.env_digest(os.environ)),
        ("host", runplan.host()),
        ("image", image),
        *(("stat", s) for s in stats),
        ("lease", str(cache.locks_dir / f"{key}.use")),
        ("touch", str(entry / "last-use")),
        ("lower", str(entry / "rootfs") if app.layer else ""),
        ("pods", str(store.root)),
        ("app", app.name),
        ("runtime", f"{runtime.name}\0" + ",".join(f"{k}={v}" for k, v in
                                                   runtime.mode.items())),
        ("spec", spec),
        *(("cmd", a) for a in cmd),
        ("record", record),
        ("mds", mds),
    ]


def _mds_template(rec: PodRecord, meta: Any, annotations: Any, own_host: str | None) -> str:
    """The pod's record for the metadata service (as :func:`pcocc.ctr.mds.register_pod`
    writes it), with its key and supervisor as markers."""
    from pcocc.ctr.images import image_config_from
    from pcocc.ctr.mds import MdsRecord, parse_annotations
    from pcocc.ctr.mds_hook import mds_apps

    image_config = image_config_from(meta.oci_image().config, f"image {meta.ref}")
    marks = {name: f"\0{name}\0" for name in ("key", "pid", "pid_start")}
    mrec = MdsRecord(rec.uuid, marks["key"], mds_apps(rec, [image_config]),
                     parse_annotations(annotations), marks["pid"],  # type: ignore[arg-type]
                     marks["pid_start"])  # type: ignore[arg-type]
    return _marked(_template(json.dumps(mrec.to_json()), rec.uuid, own_host), marks)


def _marked(text: str, marks: dict[str, str]) -> str:
    """``text`` (JSON) with each value ``marks[name]`` as the value marker of ``name``."""
    for name, mark in marks.items():
        quoted = json.dumps(mark)
        if text.count(quoted) != 1:
            raise ValueError(f"field {name} is not where expected")
        text = text.replace(quoted, runplan.value_marker(name))
    return text


def _config_files(system_dir: Path, user_dir: Path, names: tuple[str, ...]) -> list[Path]:
    """Every path whose change may change the configuration: each file and drop-in
    directory of both levels, present or not, and the files of the drop-in directories."""
    out: list[Path] = []
    for d in (system_dir, user_dir):
        for name in names:
            out += [d / f"{name}.yaml", d / f"{name}.d"]
            if (d / f"{name}.d").is_dir():
                out += sorted((d / f"{name}.d").iterdir())
    return out


def _template(text: str, uuid: str, own_host: str | None) -> str:
    """``text`` with the pod's UUID, and its own hostname ``pcocc-<short id>`` when it has
    it, as markers (:data:`pcocc.ctr.runplan.U`, :data:`~pcocc.ctr.runplan.S`)."""
    if "\0" in text:
        raise ValueError("a NUL in a template")
    text = text.replace(uuid, runplan.U)
    if own_host is not None:
        text = text.replace(own_host, f"pcocc-{runplan.S}")
    return text


def _record_template(rec: PodRecord, own_host: str | None) -> str:
    """The pod's record with its per-run values as markers (:data:`RECORD_VALUES`)."""
    data: dict[str, Any] = rec.to_json()
    marks = {name: f"\0{name}\0" for name in RECORD_VALUES}
    for name in ("state", "pid", "pid_start", "created", "started", "exited"):
        data[name] = marks[name]
    data["apps"][0].update(pid=marks["app_pid"], pid_start=marks["app_pid_start"],
                           exit_status=marks["exit_status"])
    return _marked(_template(json.dumps(data, indent=1), rec.uuid, own_host), marks)
