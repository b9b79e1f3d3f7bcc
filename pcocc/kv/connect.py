"""How pcocc finds its etcd and logs in to it: the endpoints (environment, batch.yaml, or
the private etcd of a job), the login and TLS files of batch.yaml, and the clients built
from them (:class:`EtcdKv` for the cluster runtime, a gateway reader for user commands).

The gRPC client is imported only when a client is built: user commands that only look
clusters up go through the JSON gateway and start faster.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, Union

from pcocc.config.model import EtcdConfig
from pcocc.kv.endpoints import ENDPOINTS_VAR

if TYPE_CHECKING:
    from pcocc.kv.client import KvClient
    from pcocc.kv.tls import TlsFiles

log = logging.getLogger(__name__)
T = TypeVar("T")

#: in a job's run dir: where its private etcd is, and the login to it
ENDPOINTS_FILE = "etcd-endpoints"
LOGIN_FILE = "etcd-login"


class EtcdKv:
    """:class:`~pcocc.cluster.ports.Kv` over :class:`pcocc.kv.client.KvClient` (text values)."""

    def __init__(self, client: KvClient):
        self.client = client

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        etcd: EtcdConfig = EtcdConfig(),
        *,
        label: str | None = None,
    ) -> EtcdKv:
        """A client of ``$PCOCC_ETCD_ENDPOINTS`` in ``env``, logged in as the environment or
        batch.yaml's ``etcd`` says (see :func:`pcocc.kv.credentials.etcd_login`); ``label``
        starts its outage messages (e.g. ``vm0``, when they share the launcher's stderr)."""
        from pcocc.kv.client import KvClient

        return cls(KvClient.from_env(env, etcd=etcd, label=label))

    def close(self) -> None:
        self.client.close()

    def put(self, key: str, value: str, lease: Any = None) -> None:
        self.client.put(key, value, lease=lease)

    def get(self, key: str) -> str | None:
        value = self.client.get(key)
        return None if value is None else _decoded({key: value})[key]

    def get_prefix(self, prefix: str) -> dict[str, str]:
        return _decoded(self.client.get_prefix(prefix))

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
        """:func:`pcocc.kv.watch.wait_for` on text values (see :class:`~pcocc.cluster.ports.Kv`).

        :raise TimedOut: no result after ``timeout_s``
        """
        return self.client.wait_for(
            prefix, lambda raw: predicate(_decoded(raw)), timeout_s, tick_s=tick_s
        )


class LazyKv:
    """A :class:`~pcocc.cluster.ports.Kv` that connects on first use, through ``opener``.

    A node process starts its QEMU before it needs etcd: the gRPC client's import, the
    login (and the wait for a private etcd) then overlap the guest's boot."""

    def __init__(self, opener: Callable[[], Any]):
        self._opener = opener
        self._kv: Any = None
        #: why the opener failed: said again at once, not waited for again
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def _client(self) -> Any:
        with self._lock:
            if self._error is not None:
                raise self._error
            if self._kv is None:
                try:
                    self._kv = self._opener()
                except Exception as err:
                    self._error = err
                    raise
            return self._kv

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._client(), name)

    def close(self) -> None:
        if self._kv is not None:
            self._kv.close()


def _decoded(raw: Mapping[str, bytes]) -> dict[str, str]:
    # undecodable bytes stay visible (as surrogates) to the record parsers, which refuse
    # them naming the key, instead of failing the whole read
    return {k: v.decode(errors="surrogateescape") for k, v in raw.items()}


#: batch.yaml's etcd section, or what loads the configuration only when needed (user
#: commands skip the config files when $PCOCC_ETCD_ENDPOINTS already says where etcd is)
EtcdSource = Union[EtcdConfig, Callable[[], EtcdConfig]]


def _loaded(etcd: EtcdSource) -> EtcdConfig:
    return etcd() if callable(etcd) else etcd


def configured_endpoints(etcd: EtcdSource, env: Mapping[str, str]) -> str | None:
    """``$PCOCC_ETCD_ENDPOINTS``, else the external etcd of batch.yaml, else None (private)."""
    if env.get(ENDPOINTS_VAR):
        return env[ENDPOINTS_VAR]
    etcd = _loaded(etcd)
    if etcd.mode == "external" and etcd.endpoints:
        scheme = "https" if etcd.ca_cert else "http"
        return ",".join(e if "://" in e else f"{scheme}://{e}" for e in etcd.endpoints)
    return None


@contextlib.contextmanager
def etcd_for_job(
    run_dir: Path,
    env: dict[str, str],
    user: str,
    etcd: EtcdConfig = EtcdConfig(),
    controller_hosts: Callable[[], Sequence[str]] = lambda: (),
) -> Iterator[dict[str, str]]:
    """The configured etcd, or a private one of ``user`` in ``run_dir`` when none is
    (private mode), on an address the job's nodes reach (see :mod:`pcocc.kv.private`).

    :param controller_hosts: the batch system's controllers (asked only for a private etcd)
    Yields the variables that point children at it.
    """
    endpoints = configured_endpoints(etcd, env)
    if endpoints:
        yield {ENDPOINTS_VAR: endpoints}
        return
    from pcocc import fsutil, timing
    from pcocc.kv.credentials import JOB_LOGIN_VAR
    from pcocc.kv.private import job_address, private_etcd

    # the caller's client needs gRPC next, the slowest import: load it while etcd starts
    threading.Thread(target=importlib.import_module, args=("pcocc.kv.client",),
                     daemon=True).start()
    address = job_address(list(controller_hosts()), env)
    log.debug("private etcd on %s", address)
    with private_etcd(run_dir, user, address) as extra:
        timing.mark("launcher: private etcd up (authentication set up, then TCP on)")
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


def await_private_etcd(
    run_dir: Path, timeout_s: float, tick_s: float = 0.005
) -> dict[str, str]:
    """The variables of :func:`etcd_for_job` (endpoints, job login), read from ``run_dir``
    once the launcher of this host wrote them there: it does so only after its private etcd
    answered on its own unix socket, so etcd holds the port before anyone sends it the
    password. The login file is checked like a password file (ours, 0600).

    :raise ServiceUnavailable: not written within ``timeout_s``
    :raise ConfigError: the login file is missing, malformed or open to others
    """
    import time

    from pcocc.errors import ServiceUnavailable
    from pcocc.kv.credentials import JOB_LOGIN_VAR, format_job_login, read_job_login_file

    path = run_dir / ENDPOINTS_FILE
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(FileNotFoundError):
            endpoints = path.read_text().strip()
            if endpoints:  # written atomically after the login file: both are complete
                break
        if time.monotonic() > deadline:
            raise ServiceUnavailable(
                f"the job's private etcd did not start within {timeout_s:g} s"
                f" (no {path})",
                hint="see the launcher's messages in the job's output",
            )
        time.sleep(tick_s)
    login = read_job_login_file(run_dir / LOGIN_FILE)
    return {ENDPOINTS_VAR: endpoints, JOB_LOGIN_VAR: format_job_login(login.user, login.password)}


def kv_endpoint_sets(
    env: Mapping[str, str], run_root: Path, etcd: EtcdSource = EtcdConfig()
) -> list[tuple[str, Any]]:
    """Where a user command looks for clusters, and the login to use there (None: as
    configured): the configured etcd, else the private etcd of each local cluster of this
    user (``<run root>/<job>/etcd-endpoints`` and the job's login in ``etcd-login``)."""
    endpoints = configured_endpoints(etcd, env)
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


def site_tls(endpoints: str, etcd: EtcdSource) -> TlsFiles | None:
    """The TLS files of batch.yaml for ``endpoints`` (the config is loaded only for
    ``https://`` ones)."""
    from pcocc.kv.tls import needs_tls, tls_from_config

    if not needs_tls(endpoints):
        return None
    return tls_from_config(_loaded(etcd))


def open_kv(
    endpoints: str, etcd: EtcdConfig = EtcdConfig(), *, label: str | None = None
) -> EtcdKv:
    """A client of ``endpoints``, logged in as $PCOCC_ETCD_USER or batch.yaml's etcd user
    (``label``: see :meth:`EtcdKv.from_env`)."""
    return EtcdKv.from_env({**os.environ, ENDPOINTS_VAR: endpoints}, etcd, label=label)


def open_reader(endpoints: str, etcd: EtcdSource = EtcdConfig(), login: Any = None) -> Any:
    """A read-only client of ``endpoints`` over etcd's JSON gateway (no gRPC import: user
    commands that only look clusters up start faster), logged in as ``login`` (an
    EtcdLogin) or like :func:`open_kv`."""
    from pcocc.kv.credentials import JOB_LOGIN_VAR, USER_VAR, check_login_transport, etcd_login
    from pcocc.kv.gateway import GatewayReader
    from pcocc.kv.tls import needs_tls, tls_from_config

    settings = EtcdConfig()
    env_login = login is not None or os.environ.get(USER_VAR) or os.environ.get(JOB_LOGIN_VAR)
    # else the environment alone says who logs in; the config still gives TLS files
    if not env_login or needs_tls(endpoints):
        settings = _loaded(etcd)
    if login is None:
        login = etcd_login(settings, os.environ)
    tls = tls_from_config(settings)
    if login is None:
        return GatewayReader(endpoints, tls=tls)
    for endpoint in endpoints.split(","):
        if endpoint.strip():
            check_login_transport(endpoint, login)
    return GatewayReader(
        endpoints, user=login.user, password=login.password, hint=login.hint, tls=tls
    )


def open_cluster_writer(
    env: Mapping[str, str], run_root: Path, etcd: EtcdSource, user: str, batchid: str
) -> EtcdKv:
    """A read-write client of the etcd that holds cluster ``batchid`` (a user command
    that asks the cluster's node processes something, such as ``pcocc ckpt``), logged in
    as :func:`kv_endpoint_sets` says for that etcd.

    :raise NotFound: no etcd reachable from here holds that cluster
    """
    from pcocc.errors import NotFound, PcoccError
    from pcocc.kv import keys
    from pcocc.kv.client import KvClient

    settings = _loaded(etcd)
    for endpoints, login in kv_endpoint_sets(env, run_root, settings):
        extra: dict[str, Any] = {}
        if login is not None:
            extra = {"user": login.user, "password": login.password, "login_hint": login.hint}
        try:
            client = KvClient.from_env({**env, ENDPOINTS_VAR: endpoints}, etcd=settings, **extra)
        except PcoccError as err:
            log.debug("skipping etcd %s: %s", endpoints, err)
            continue
        kv = EtcdKv(client)
        try:
            if kv.get(keys.cluster_definition(user, batchid)) is not None:
                return kv
        except PcoccError as err:
            log.debug("skipping etcd %s: %s", endpoints, err)
        kv.close()
    raise NotFound(f"cluster {batchid} is not in any etcd reachable from here",
                   hint="see 'pcocc ps'")
