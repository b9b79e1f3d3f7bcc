"""Which container runtime works on this host, and in which mode: :func:`get_runtime`.

Whether a backend works is found by running a real container (``true`` from the host's
/usr, bound read-only) once per boot and per user; the result is cached in
``<runtime dir>/probe-<boot id>.json``. A backend may have several modes (see
:meth:`~pcocc.ctr.runtimes.base.Runtime.candidate_modes`): the first that works is kept.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from pcocc import paths, proc
from pcocc.ctr import host
from pcocc.ctr.runtimes.base import AUTO_ORDER, Runtime, runtime_class
from pcocc.errors import PcoccError, ToolMissing

log = logging.getLogger(__name__)

PROBE_FORMAT = 1


class RuntimeUnusable(PcoccError):
    """A runtime is installed but cannot run containers on this host."""


def get_runtime(name: str = "auto") -> Runtime:
    """The backend called ``name``, or with ``auto`` the first usable of AUTO_ORDER.

    :raise ConfigError: unknown name
    :raise ToolMissing: not installed
    :raise RuntimeUnusable: installed, but no mode runs a container on this host
    """
    if name == "auto":
        reasons = []
        for cand in AUTO_ORDER:
            try:
                return probe(cand)
            except (ToolMissing, RuntimeUnusable) as err:
                reasons.append(f"{cand}: {err}")
        raise RuntimeUnusable(
            "no container runtime works on this host",
            hint="; ".join(reasons) + " (install crun or runc, or util-linux unshare)",
        )
    return probe(name)


def probe(name: str, *, refresh: bool = False) -> Runtime:
    """The runtime ``name`` in a mode that works here (cached per boot).

    :raise ConfigError: unknown name
    :raise ToolMissing: not installed
    :raise RuntimeUnusable: installed, but no mode runs a container on this host
    """
    cls = runtime_class(name)
    rt = cls()
    rt.check_installed()
    if not rt.probe_runs_container:
        return rt
    path = probe_cache_path()
    cache = _read_cache(path)
    key = f"{name}:{os.geteuid()}"
    entry = None if refresh else cache.get("runtimes", {}).get(key)
    if entry is None:
        reasons = []
        entry = {"usable": False}
        for mode in rt.candidate_modes():
            why = try_mode(cls, mode)
            log.debug("probe %s %s: %s", name, mode, why or "ok")
            if why is None:
                entry = {"usable": True, "mode": mode}
                break
            reasons.append(why)
        if not entry["usable"]:
            entry["reason"] = reasons[-1] if reasons else "unknown"
        cache.setdefault("runtimes", {})[key] = entry
        cache["format"] = PROBE_FORMAT
        _write_cache(path, cache)
    if not entry["usable"]:
        raise RuntimeUnusable(
            f"container runtime '{name}' does not work on this host: {entry.get('reason')}",
            hint=f"try another --runtime (one of {', '.join(AUTO_ORDER)}); "
            f"the result is cached in {path}",
        )
    return cls(entry.get("mode"))


# -- the cache ----------------------------------------------------------------------------
def probe_cache_path() -> Path:
    return paths.runtime_dir() / f"probe-{host.boot_id()}.json"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != PROBE_FORMAT:
        return {}
    return data


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    from pcocc.fsutil import write_atomic

    write_atomic(path, json.dumps(data, indent=1, sort_keys=True), mode=0o600)


# -- the probe container ------------------------------------------------------------------
def probe_bundle(dest: Path) -> Path:
    """A bundle that runs the host's ``true`` from host directories bound read-only."""
    from pcocc.ctr.spec import Identity, SpecRequest, build_spec
    from pcocc.ctr.volumes import Mount

    rootfs = dest / "rootfs"
    rootfs.mkdir(parents=True)
    mounts = []
    for d in ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32"):
        if os.path.isdir(d):
            mounts.append(Mount(os.path.realpath(d), d, readonly=True))
    import shutil

    true = shutil.which("true") or "/bin/true"
    req = SpecRequest(
        rootfs=str(rootfs),
        args=[true],
        env={},
        mounts=mounts,
        hostname="pcocc-probe",
        identity=Identity(os.getuid(), os.getgid()),
    )
    (dest / "config.json").write_text(json.dumps(build_spec(req)))
    return dest


def try_mode(cls: type[Runtime], mode: dict[str, Any]) -> str | None:
    """Run the probe container with ``cls`` in ``mode``: None if it worked, else why not."""
    import tempfile

    rt = cls(mode)
    with tempfile.TemporaryDirectory(prefix="probe-", dir=paths.runtime_dir()) as tmp:
        bundle = probe_bundle(Path(tmp) / "bundle")
        spec = json.loads((bundle / "config.json").read_text())
        (bundle / "config.json").write_text(json.dumps(rt.adapt_spec(spec)))
        cid = f"pcocc-probe-{os.getpid()}"
        try:
            res = proc.run(rt.run_argv(bundle, cid), check=False, timeout_s=30)
        except PcoccError as err:
            return str(err)
        finally:
            rt.cleanup(cid)  # OCI runtimes keep a state directory per container
    if res.returncode == 0:
        return None
    from pcocc.errors import stderr_tail

    return stderr_tail(res.stderr) or f"exit status {res.returncode}"
