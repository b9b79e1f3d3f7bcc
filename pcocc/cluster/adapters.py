"""Bind the cluster runtime's ports to the real etcd client, QEMU machines, templates and
image repositories (the batch managers: :mod:`pcocc.cluster.batchadapter`). Everything here
is glue; what a VM is comes from :mod:`pcocc.cluster.vmbuild`.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, Union

from pcocc.cluster.definition import ClusterDefinition, VmEntry
from pcocc.cluster.ports import MachineInfo
from pcocc.cluster.vmstate import ACCEL_NOTE
from pcocc.errors import PcoccError

if TYPE_CHECKING:
    from pcocc.config import Config

log = logging.getLogger(__name__)
T = TypeVar("T")

ENDPOINTS_VAR = "PCOCC_ETCD_ENDPOINTS"
#: in a job's run dir: where its private etcd is, and the login to it
ENDPOINTS_FILE = "etcd-endpoints"
LOGIN_FILE = "etcd-login"


def user_name() -> str:
    """The user whose etcd prefix and run dirs we use."""
    return getpass.getuser()


# -- etcd ---------------------------------------------------------------------------------
class EtcdKv:
    """:class:`~pcocc.cluster.ports.Kv` over :class:`pcocc.kv.client.KvClient` (text values)."""

    def __init__(self, client: Any):
        self.client = client

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, config: Config | None = None) -> EtcdKv:
        """A client of ``$PCOCC_ETCD_ENDPOINTS`` in ``env``, logged in as the environment or
        batch.yaml says (see :func:`pcocc.kv.credentials.etcd_login`)."""
        from pcocc.kv.client import KvClient

        return cls(KvClient.from_env(env, **etcd_login_settings(config)))

    def close(self) -> None:
        self.client.close()

    def put(self, key: str, value: str, lease: Any = None) -> None:
        self.client.put(key, value, lease=lease)

    def get(self, key: str) -> str | None:
        value = self.client.get(key)
        # undecodable bytes stay visible (as surrogates) to the record parsers, which refuse
        # them naming the key, instead of failing the whole read
        return None if value is None else value.decode(errors="surrogateescape")

    def get_prefix(self, prefix: str) -> dict[str, str]:
        return {
            k: v.decode(errors="surrogateescape")
            for k, v in self.client.get_prefix(prefix).items()
        }

    def delete_prefix(self, prefix: str) -> None:
        self.client.delete_prefix(prefix)

    def lease(self, ttl_s: int) -> contextlib.AbstractContextManager[Any]:
        return self.client.lease(ttl_s)

    def wait_for(
        self,
        prefix: str,
        predicate: Callable[[dict[str, str]], T | None],
        timeout_s: float | None,
        tick_s: float = 0.5,
    ) -> T:
        """See :class:`~pcocc.cluster.ports.Kv`; also rides out etcd outages.

        When etcd cannot be read or the watch breaks (etcd restarted or unreachable), it
        reads and watches again every ``tick_s`` while the predicate keeps seeing the last
        known keys: the predicates of the launcher and node processes check their lease, so
        they end this once etcd was away for longer than the lease TTL.
        """
        import time

        from pcocc.errors import ServiceUnavailable

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        values: dict[str, str] = {}
        outage: ServiceUnavailable | None = None
        while True:
            try:
                return self._wait_once(prefix, predicate, deadline, tick_s, values)
            except ServiceUnavailable as err:
                # the predicate first: it raises if the error was its own (a lost lease)
                result = predicate(dict(values))
                if result is not None:
                    return result
                if outage is None:
                    log.warning("%s; retrying while the lease lasts", err.message)
                outage = err
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"timed out waiting on {prefix}: {outage.message}")
            time.sleep(tick_s)

    def _wait_once(
        self,
        prefix: str,
        predicate: Callable[[dict[str, str]], T | None],
        deadline: float | None,
        tick_s: float,
        values: dict[str, str],
    ) -> T:
        """Read ``prefix`` into ``values``, then apply watch events until ``predicate``."""
        import time

        raw, revision = self.client.get_prefix_at(prefix)
        values.clear()
        values.update((k, v.decode(errors="surrogateescape")) for k, v in raw.items())
        result = predicate(dict(values))
        if result is not None:
            return result
        with self.client.watch_prefix(prefix, start_revision=revision + 1) as watch:
            while True:
                wait_s = tick_s
                if deadline is not None:
                    wait_s = min(tick_s, deadline - time.monotonic())
                    if wait_s <= 0:
                        raise TimeoutError(f"timed out waiting on {prefix}")
                event = watch.get(wait_s)
                if event is not None:
                    if event.value is None:
                        values.pop(event.key, None)
                    else:
                        values[event.key] = event.value.decode(errors="surrogateescape")
                result = predicate(dict(values))
                if result is not None:
                    return result


#: a configuration, or what loads it only when needed (user commands skip the config files
#: when $PCOCC_ETCD_ENDPOINTS already says where etcd is)
ConfigSource = Union["Config", Callable[[], "Config"], None]


def configured_endpoints(config: ConfigSource, env: Mapping[str, str]) -> str | None:
    """``$PCOCC_ETCD_ENDPOINTS``, else the external etcd of batch.yaml, else None (private)."""
    if env.get(ENDPOINTS_VAR):
        return env[ENDPOINTS_VAR]
    if callable(config):
        config = config()
    etcd = (config.batch if config is not None else {}).get("etcd") or {}
    if etcd.get("mode", "external") == "external" and etcd.get("endpoints"):
        scheme = "https" if etcd.get("ca-cert") else "http"
        return ",".join(e if "://" in e else f"{scheme}://{e}" for e in etcd["endpoints"])
    return None


@contextlib.contextmanager
def etcd_for_job(
    run_dir: Path,
    env: dict[str, str],
    config: Config | None = None,
    controller_hosts: Callable[[], Sequence[str]] = lambda: (),
) -> Iterator[dict[str, str]]:
    """The configured etcd, or a private one in ``run_dir`` when none is (private mode),
    on an address the job's nodes reach (see :mod:`pcocc.kv.private`).

    :param controller_hosts: the batch system's controllers (asked only for a private etcd)
    Yields the variables that point children at it.
    """
    endpoints = configured_endpoints(config, env)
    if endpoints:
        yield {ENDPOINTS_VAR: endpoints}
        return
    from pcocc import fsutil
    from pcocc.kv.credentials import JOB_LOGIN_VAR
    from pcocc.kv.private import job_address, private_etcd

    address = job_address(list(controller_hosts()), env)
    log.debug("private etcd on %s", address)
    with private_etcd(run_dir, user_name(), address) as extra:
        # for the user commands run outside the job (``kv_endpoint_sets``)
        login_file = run_dir / LOGIN_FILE
        endpoints_file = run_dir / ENDPOINTS_FILE
        fsutil.write_atomic(login_file, extra[JOB_LOGIN_VAR] + "\n", mode=0o600)
        fsutil.write_atomic(endpoints_file, extra[ENDPOINTS_VAR] + "\n", mode=0o600)
        try:
            yield dict(extra)
        finally:
            endpoints_file.unlink(missing_ok=True)
            login_file.unlink(missing_ok=True)


def kv_endpoint_sets(
    env: Mapping[str, str], run_root: Path, config: ConfigSource = None
) -> list[tuple[str, Any]]:
    """Where a user command looks for clusters, and the login to use there (None: as
    configured): the configured etcd, else the private etcd of each local cluster of this
    user (``<run root>/<job>/etcd-endpoints`` and the job's login in ``etcd-login``)."""
    endpoints = configured_endpoints(config, env)
    if endpoints:
        return [(endpoints, None)]
    from pcocc.errors import ConfigError
    from pcocc.kv.credentials import read_job_login_file

    found = []
    for path in sorted(run_root.glob(f"*/{ENDPOINTS_FILE}")):
        with contextlib.suppress(OSError):
            text = path.read_text().strip()
            if not text:
                continue
            login = None
            login_path = path.with_name(LOGIN_FILE)
            if login_path.exists():
                try:
                    login = read_job_login_file(login_path)
                except ConfigError as err:
                    log.warning("skipping the cluster in %s: %s", path.parent, err.message)
                    continue
            found.append((text, login))
    return found


def etcd_login_settings(config: Config | None) -> dict[str, Any]:
    """The ``etcd`` section of batch.yaml and the directory of the file that set its
    ``password-file`` (relative paths start there), for ``KvClient.from_env``."""
    if config is None:
        return {}
    etcd = config.batch.get("etcd") or {}
    origin = config.origin("batch", "etcd", "password-file")
    if origin.file is None:
        origin = config.origin("batch", "etcd", "ca-cert")
    if origin.file is None:
        origin = config.origin("batch", "etcd")
    return {"etcd": etcd, "base_dir": origin.file.parent if origin.file is not None else None}


def open_kv(endpoints: str, config: Config | None = None) -> EtcdKv:
    """A client of ``endpoints``, logged in as $PCOCC_ETCD_USER or batch.yaml's etcd user."""
    return EtcdKv.from_env({**os.environ, ENDPOINTS_VAR: endpoints}, config)


def open_reader(endpoints: str, config: ConfigSource = None, login: Any = None) -> Any:
    """A read-only client of ``endpoints`` over etcd's JSON gateway (no gRPC import: user
    commands that only look clusters up start faster), logged in as ``login`` (an
    EtcdLogin) or like :func:`open_kv`."""
    from pcocc.kv.credentials import JOB_LOGIN_VAR, USER_VAR, check_login_transport, etcd_login
    from pcocc.kv.gateway import GatewayReader
    from pcocc.kv.tls import needs_tls, tls_from_config

    settings: dict[str, Any] = {}
    env_login = login is not None or os.environ.get(USER_VAR) or os.environ.get(JOB_LOGIN_VAR)
    # else the environment alone says who logs in; the config still gives TLS files
    if not env_login or needs_tls(endpoints):
        settings = etcd_login_settings(config() if callable(config) else config)
    if login is None:
        login = etcd_login(settings.get("etcd"), os.environ, base_dir=settings.get("base_dir"))
    tls = tls_from_config(settings.get("etcd"), settings.get("base_dir"))
    if login is None:
        return GatewayReader(endpoints, tls=tls)
    for endpoint in endpoints.split(","):
        if endpoint.strip():
            check_login_transport(endpoint, login)
    return GatewayReader(
        endpoints, user=login.user, password=login.password, hint=login.hint, tls=tls
    )


# -- templates and images -----------------------------------------------------------------
def resolved_templates(config: Config) -> dict[str, dict[str, Any]]:
    """Every template with inheritance applied, as plain settings (plus ``resources``)."""
    from pcocc.templates import resolve_all

    result: dict[str, dict[str, Any]] = {}
    for name, tpl in resolve_all(config).items():
        settings = {key: s.value for key, s in tpl.settings.items()}
        settings["resources"] = dict(tpl.resources)
        result[name] = settings
    return result


def image_checker(config: Config) -> Callable[[str], None]:
    """A function that raises NotFound when an image URI does not resolve to a VM image."""
    from pcocc.repo.store import RepoSet

    repos = RepoSet(config.repos)

    def check(uri: str) -> None:
        _repo, meta = repos.resolve(uri)
        meta.vm_layers()  # Corrupt when it is a container image

    return check


def image_top_layer(config: Config, uri: str) -> Path:
    """Path of the top qcow2 layer of image ``uri`` (its backing chain follows)."""
    from pcocc.repo.store import RepoSet

    repo, meta = RepoSet(config.repos).resolve(uri)
    return Path(repo.blob_path(meta.vm_layers().layers[-1].digest))


# -- QEMU ---------------------------------------------------------------------------------
def check_shares_possible(definition: ClusterDefinition) -> None:
    """Raise before allocating when the VMs have shares that virtiofsd could not serve here.

    :raise ToolMissing: virtiofsd (or, for an ordinary user, newuidmap) is not installed
    :raise PcoccError: an ordinary user without subordinate ids
    """
    if definition.mounts or any(vm.settings.get("mount-points") for vm in definition.vms):
        from pcocc.vm import virtiofs

        virtiofs.find_virtiofsd()
        virtiofs.check_unprivileged()


class MachineVm:
    """:class:`~pcocc.cluster.ports.VmHandle` over :class:`pcocc.vm.machine.Machine`."""

    def __init__(self, machine: Any, nics: Any = None, notes: Sequence[str] = ()):
        self.machine = machine
        #: what the launcher tells the user about this VM once it runs (e.g. TCG fallback)
        self.notes = list(notes)
        self.console_log = str(machine.console_log)
        #: the private NICs (a pcocc.net.private.NicSetup): their sockets close at shutdown
        self.nics = nics
        #: etcd records the node process publishes under its lease before the launch
        self.kv_entries = dict(nics.kv_entries) if nics is not None else {}

    def launch(self) -> MachineInfo:
        self.machine.launch()
        # real paths: the /proc/self/fd/N forms of long ones only work inside this process
        info = dict(self.machine.describe())
        ssh_port = info.pop("ssh_port")
        return MachineInfo(
            pid=int(info.pop("pid")),
            ssh_port=None if ssh_port is None else int(ssh_port),
            forwards={int(g): int(h) for g, h in dict(info.pop("forwards", {})).items()},
            qmp_socket=str(info.pop("qmp_socket")),
            console_socket=str(info.pop("console_socket")),
            console_log=str(info.pop("console_log")),
            extra={
                **{k: v for k, v in info.items() if k != "name"},
                **({ACCEL_NOTE: self.notes[0]} if self.notes else {}),
            },
        )

    def wait(self, timeout_s: float | None) -> int | None:
        popen = self.machine.process
        if popen is None:
            return None
        try:
            return popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def shutdown(self) -> None:
        try:
            self.machine.shutdown()
        finally:
            if self.nics is not None:
                self.nics.close()


def machine_factory(
    config: Config | None, batchid: str, kv: Any = None, address: str = "127.0.0.1"
) -> Callable[[ClusterDefinition, VmEntry, Path, Path], MachineVm]:
    """Build the VM of one rank from its template (``make_vm`` of the node process);
    its forwarded ports listen on ``address``. What the VM is comes from
    :mod:`pcocc.cluster.vmbuild`; this finds the host's part and starts nothing yet."""

    def make(definition: ClusterDefinition, entry: VmEntry, node_dir: Path, host_key: Path):
        from pcocc.cluster import vmbuild, vmsettings
        from pcocc.vm.accel import resolve_accel
        from pcocc.vm.machine import Machine
        from pcocc.vm.seed import HostKey

        accel_notes: list[str] = []
        settings = vmbuild.runtime_settings(entry, batchid)
        image = None
        if entry.image:
            if config is None:
                raise PcoccError(f"{entry.name}: no configuration to resolve '{entry.image}'")
            image = image_top_layer(config, entry.image)
        host = vmbuild.VmHost(
            # the launcher says it once for the cluster, not every node (see ACCEL_NOTE)
            accel=resolve_accel(settings.get("accel"), warn=accel_notes.append),
            cpus=vmsettings.node_cpus(os.environ),
            address=address,
        )
        key = HostKey(host_key.read_text(), host_key.with_suffix(".pub").read_text().strip())
        build = vmbuild.build_vm(
            definition, entry, settings, batchid=batchid, host=host, host_key=key, image=image
        )
        nics = private_nics(kv, definition, entry, batchid, vmbuild.nic_model(settings), address)
        try:
            if nics is not None:
                build = vmbuild.attach_private_nics(build, nics)
            machine = Machine(
                build.spec,
                node_dir / "qemu",
                image=build.image,
                seed=build.seed,
                boot_timeout_s=build.boot_timeout_s,
                shares=build.shares,
            )
            return MachineVm(machine, nics, accel_notes)
        except BaseException:
            if nics is not None:
                nics.close()
            raise

    return make


def private_nics(
    kv: Any,
    definition: ClusterDefinition,
    entry: VmEntry,
    batchid: str,
    nic_model: str,
    address: str,
) -> Any:
    """The NICs of ``entry`` on the cluster's private networks (a NicSetup), or None."""
    from pcocc.cluster.definition import vm_networks
    from pcocc.net import private

    nets = private.from_definition(definition.networks)
    names = [n for n in vm_networks(entry.settings) if n in nets]
    if not names:
        return None
    if kv is None:
        raise PcoccError(f"{entry.name}: private networks need etcd")
    return private.prepare_nics(
        kv, user_name(), batchid, nets, names, entry.rank, address, nic_model
    )
