"""The one etcd v3 client of pcocc, over the ``etcd3`` package.

Every etcd3/gRPC error becomes a pcocc error that keeps its root cause:
``ServiceUnavailable`` (etcd cannot be reached or failed), ``KvConflict`` (a transaction
lost a race), ``TimedOut`` (``wait_for`` ran out of time), ``Corrupt`` (a stored value is
not what pcocc wrote). Leases and watches are context managers: leaving the block, also by
an exception or Ctrl-C, revokes the lease or cancels the watch.

Keys come from ``pcocc.kv.keys``; values are bytes (``put_json``/``get_json`` for JSON).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Self, TypeVar

from pcocc.config.model import EtcdConfig
from pcocc.errors import (
    AlreadyExists,
    Busy,
    ConfigError,
    Corrupt,
    KvConflict,
    NotFound,
    PcoccError,
    PermissionDenied,
    ServiceUnavailable,
)
from pcocc.kv import etcd3compat
from pcocc.kv.credentials import (
    DEFAULT_LOGIN_HINT,
    check_login_transport,
    etcd_login,
    refusal_hint,
)
from pcocc.kv.endpoints import ENDPOINTS_VAR, parse_endpoint
from pcocc.kv.etcd3compat import describe, etcd3, grpc, is_auth_disabled_error
from pcocc.kv.lease import KvLease
from pcocc.kv.link import EtcdLink, link_to
from pcocc.kv.tls import TlsFiles, tls_from_config
from pcocc.kv.watch import KvEvent, KvWatch, wait_for

__all__ = ["KvClient", "KvEvent", "KvLease", "KvWatch", "is_auth_disabled_error"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class KvClient:
    """A connection to one etcd v3 endpoint: the first of ``endpoints`` that answers."""

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        *,
        timeout_s: float = 5.0,
        user: str | None = None,
        password: str | None = None,
        login_hint: str | None = None,
        tls: TlsFiles | None = None,
        label: str | None = None,
    ):
        """Connect to one of ``endpoints``, as ``user`` if etcd has auth enabled.

        ``login_hint`` says what to check when etcd refuses the login (never the password);
        ``tls``: the CA (and client certificate) for ``https://`` endpoints; ``label``
        starts the messages of an outage (see :mod:`pcocc.kv.link`).

        :raise ConfigError: no or malformed endpoint, an https endpoint without ``tls``,
            a TLS file missing or unreadable
        :raise PermissionDenied: etcd refused the user name or password
        :raise ServiceUnavailable: no endpoint answers (checked here only with several
            endpoints or a user; otherwise on the first call)
        """
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        if not endpoints:
            raise ConfigError(
                "no etcd endpoint configured", hint=f"set {ENDPOINTS_VAR}=http://HOST:PORT"
            )
        self.endpoints = list(endpoints)
        addresses = [parse_endpoint(e) for e in self.endpoints]
        self._tls_args: dict[str, str] = {}
        if any(a.scheme == "https" for a in addresses):
            self._tls_args = etcd3compat.grpc_tls_args(tls, self.endpoints)
        self.timeout_s = timeout_s
        self.user = user
        #: False when etcd has no authentication (a configured login is then not used)
        self.is_logged_in = user is not None
        self.login_hint = login_hint or DEFAULT_LOGIN_HINT
        credentials = {} if user is None else {"user": user, "password": password or ""}
        self._password = password or ""  # kept for logging in again (etcd restarted)
        #: whether etcd answers (None while connecting: no outage to report yet)
        self.link: EtcdLink | None = None
        # with several endpoints, use the first that answers; with one, connect lazily
        for i, (scheme, host, port) in enumerate(addresses):
            self.endpoint = f"{scheme}://{host}:{port}"
            self.hint = f"check that etcd runs at {self.endpoint} ({ENDPOINTS_VAR})"
            tls_args = self._tls_args if scheme == "https" else {}
            try:
                self._connect(host, port, credentials, probe=len(addresses) > 1, tls=tls_args)
                self.link = link_to(self.endpoint, label)
                break
            except ServiceUnavailable as err:
                if i == len(addresses) - 1:
                    raise
                log.debug("etcd endpoint %s unusable, trying the next: %s", self.endpoint, err)

    def _connect(
        self,
        host: str,
        port: int,
        credentials: dict[str, str],
        probe: bool,
        tls: Mapping[str, str],
    ) -> None:
        try:
            with self.errors(f"log in as {self.user}" if self.user else "connect"):
                self._etcd = etcd3.client(
                    host=host, port=port, timeout=self.timeout_s, **credentials, **tls
                )
        except ServiceUnavailable as err:
            if not (credentials and is_auth_disabled_error(err.__cause__)):
                raise
            # a login configured before the admin enabled etcd auth: nothing to log in to
            log.debug("etcd at %s has no authentication: connecting without login", self.endpoint)
            self.is_logged_in = False
            with self.errors("connect"):
                self._etcd = etcd3.client(host=host, port=port, timeout=self.timeout_s, **tls)
        if probe:
            try:
                with self.errors("connect"):
                    self._etcd.status()
            except ServiceUnavailable:
                self._etcd.close()
                raise
        etcd3compat.tame(self._etcd, on_watch_answer=self._answered)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        etcd: EtcdConfig = EtcdConfig(),
        **kwargs: Any,
    ) -> KvClient:
        """A client for ``$PCOCC_ETCD_ENDPOINTS`` (comma-separated URLs).

        With etcd auth, the environment gives the login, else ``user`` and
        ``password-file`` of ``etcd`` (batch.yaml's section; see
        :func:`pcocc.kv.credentials.etcd_login`); TLS files come from that section too.

        :raise ConfigError: the password file is missing, unreadable or not private; a
            password would go in clear to a remote etcd
        """
        env = os.environ if env is None else env
        endpoints = env.get(ENDPOINTS_VAR, "")
        kwargs.setdefault("tls", tls_from_config(etcd))
        if "user" not in kwargs:
            login = etcd_login(etcd, env)
            if login is not None:
                for endpoint in endpoints.split(","):
                    if endpoint.strip():
                        check_login_transport(endpoint, login)
                kwargs.update(user=login.user, password=login.password, login_hint=login.hint)
        return cls(endpoints, **kwargs)

    def close(self) -> None:
        self._etcd.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """Turn the etcd3/gRPC errors of the block into pcocc errors (``what`` names the
        call), and tell :attr:`link` whether etcd answered."""
        try:
            yield
        except etcd3.exceptions.PreconditionFailedError as err:
            self._answered()
            raise KvConflict(f"etcd refused to {what}: {describe(err)}") from err
        except grpc.RpcError as err:
            if self.is_logged_in and etcd3compat.is_stale_token_error(err):
                self._login_again(what, err)
            if etcd3compat.is_auth_error(err):
                self._answered()
                who = f"user {self.user!r}" if self.is_logged_in else "an anonymous client"
                hint = refusal_hint(
                    who,
                    anonymous=not self.is_logged_in,
                    role_denied=err.code() == grpc.StatusCode.PERMISSION_DENIED,
                    login_hint=self.login_hint,
                )
                raise PermissionDenied(
                    f"etcd at {self.endpoint} refused to let {who} {what}: {describe(err)}",
                    hint=hint,
                ) from err
            raise self._unavailable(what, err) from err
        except etcd3.exceptions.Etcd3Exception as err:
            raise self._unavailable(what, err) from err
        except ValueError as err:
            # grpc raises ValueError on a closed channel
            if "channel closed" not in str(err).lower():
                raise
            raise ServiceUnavailable(f"cannot {what}: the etcd client is closed") from err
        else:
            self._answered()

    def _answered(self) -> None:
        if self.link is not None:
            self.link.answered()

    def _unavailable(self, what: str, err: BaseException) -> ServiceUnavailable:
        if self.link is not None:
            self.link.lost(describe(err))
        return ServiceUnavailable(
            f"cannot {what} in etcd at {self.endpoint}: {describe(err)}", hint=self.hint
        )

    def _login_again(self, what: str, err: grpc.RpcError) -> None:
        """etcd forgot our login token (it restarted, or the token expired): log in again so
        that the next call works, and fail this one as a passing outage (callers that ride
        out outages retry it).

        :raise ServiceUnavailable: logged in again (the caller may retry the call)
        :raise PermissionDenied: etcd refused the login (the user or its password changed)
        """
        with self.errors(f"log in again as {self.user}"):
            etcd3compat.authenticate(self._etcd, self.user or "", self._password, self.timeout_s)
        log.debug("etcd at %s dropped the login token of %s: logged in again", self.endpoint,
                  self.user)  # fmt: skip
        raise ServiceUnavailable(
            f"cannot {what} in etcd at {self.endpoint}: etcd dropped the login token"
            " (restarted?); logged in again",
            hint="try again",
        ) from err

    def auth_call(self, method: str, request: Any, what: str) -> Any:
        """Call ``method`` of etcd's Auth service (request types of ``etcd3compat.etcdrpc``)
        with this client's login. etcd's "already exists" and "not found" become
        AlreadyExists and NotFound; other errors as for every call."""
        with self.errors(what):
            try:
                return etcd3compat.auth_call(self._etcd, method, request, self.timeout_s)
            except grpc.RpcError as err:
                details = (err.details() if hasattr(err, "details") else "") or ""
                if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    text = details.removeprefix("etcdserver: ")
                    if "already exists" in details:
                        raise AlreadyExists(f"cannot {what}: {text}") from err
                    if "not found" in details:
                        raise NotFound(f"cannot {what}: {text}") from err
                raise

    # reads and writes ---------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        with self.errors(f"read {key}"):
            value, _meta = self._etcd.get(key)
        return value

    def get_json(self, key: str) -> Any:
        """The JSON value of ``key`` or None; :raise Corrupt: the value is not JSON."""
        value = self.get(key)
        if value is None:
            return None
        try:
            return json.loads(value)
        except ValueError as err:
            raise Corrupt(f"etcd key {key} does not hold JSON: {value[:60]!r}") from err

    def get_prefix(self, prefix: str) -> dict[str, bytes]:
        return self.get_prefix_at(prefix)[0]

    def get_prefix_at(self, prefix: str) -> tuple[dict[str, bytes], int]:
        """The keys under ``prefix`` and the store revision they were read at."""
        with self.errors(f"read {prefix}"):
            response = self._etcd.get_prefix_response(prefix)
        values = {kv.key.decode(): bytes(kv.value) for kv in response.kvs}
        return values, response.header.revision

    def put(self, key: str, value: bytes | str, *, lease: KvLease | None = None) -> None:
        with self.errors(f"write {key}"):
            self._etcd.put(key, value, lease=lease.id if lease else None)

    def put_json(self, key: str, obj: Any, *, lease: KvLease | None = None) -> None:
        self.put(key, json.dumps(obj, sort_keys=True), lease=lease)

    def delete(self, key: str) -> bool:
        """Delete ``key``; True if it existed."""
        with self.errors(f"delete {key}"):
            return bool(self._etcd.delete(key))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; return how many there were."""
        with self.errors(f"delete {prefix}"):
            return int(self._etcd.delete_prefix(prefix).deleted)

    # transactions -------------------------------------------------------------------------
    def create(self, key: str, value: bytes | str, *, lease: KvLease | None = None,
               also: Mapping[str, bytes | str] | None = None) -> bool:
        """Write ``key`` (and the keys of ``also``) only if none exists, in one
        transaction; True if this call created them."""
        tx, items = self._etcd.transactions, {key: value, **(also or {})}
        with self.errors(f"create {key}"):
            ok, _ = self._etcd.transaction(
                compare=[tx.create(k) == 0 for k in items],
                success=[tx.put(k, v, lease=lease.id if lease else None) for k, v in items.items()],
                failure=[],
            )
        return bool(ok)

    def delete_if(self, key: str, value: bytes | str) -> bool:
        """Delete ``key`` if it holds ``value``; True if this call deleted it."""
        tx = self._etcd.transactions
        with self.errors(f"delete {key}"):
            ok, _ = self._etcd.transaction(
                compare=[tx.value(key) == value], success=[tx.delete(key)], failure=[])
        return bool(ok)

    def replace(self, key: str, old: bytes | str, new: bytes | str) -> None:
        """Set ``key`` to ``new`` if it still holds ``old``.

        :raise KvConflict: the value was not ``old`` any more
        """
        tx = self._etcd.transactions
        with self.errors(f"update {key}"):
            ok, _ = self._etcd.transaction(
                compare=[tx.value(key) == old], success=[tx.put(key, new)], failure=[]
            )
        if not ok:
            raise KvConflict(f"etcd key {key} changed meanwhile", hint="read it again and retry")

    def allocate(
        self,
        prefix: str,
        candidates: Iterable[str | int],
        value: bytes | str = b"",
        *,
        lease: KvLease | None = None,
    ) -> str:
        """Take the first free candidate under ``prefix`` atomically; return it.

        Each candidate is a key ``prefix + str(candidate)`` created only if absent, so
        concurrent allocators always get distinct candidates.

        :raise Busy: every candidate is taken
        """
        count = 0
        for candidate in candidates:
            count += 1
            if self.create(f"{prefix}{candidate}", value, lease=lease):
                return str(candidate)
        raise Busy(
            f"all {count} candidates under etcd prefix {prefix} are taken",
            hint="release some or widen the range",
        )

    def increment(self, key: str, *, start: int = 1, attempts: int = 100) -> int:
        """Atomically add one to the counter in ``key`` (``start`` if absent); return it.

        :raise KvConflict: lost the race ``attempts`` times in a row
        :raise Corrupt: the key holds something else than an integer
        """
        tx = self._etcd.transactions
        for _ in range(attempts):
            with self.errors(f"read {key}"):
                value, meta = self._etcd.get(key)
            if value is None:
                new = start
                compare = [tx.create(key) == 0]
            else:
                try:
                    new = int(value) + 1
                except ValueError as err:
                    raise Corrupt(f"etcd key {key} is not a counter: {value[:60]!r}") from err
                compare = [tx.mod(key) == meta.mod_revision]
            with self.errors(f"update {key}"):
                ok, _ = self._etcd.transaction(
                    compare=compare, success=[tx.put(key, str(new))], failure=[]
                )
            if ok:
                return new
        raise KvConflict(f"gave up incrementing etcd key {key} after {attempts} conflicts")

    # leases and watches -------------------------------------------------------------------
    @contextlib.contextmanager
    def lease(self, ttl_s: int, *, keepalive: bool = True) -> Iterator[KvLease]:
        """Grant a lease for the ``with`` block; keys put under it vanish with it.

        With ``keepalive`` a thread refreshes it every ``ttl_s / 3`` seconds; on leaving the
        block the lease is revoked (its keys deleted at once). If this process dies, etcd
        expires the lease after ``ttl_s``.
        """
        with self.errors(f"grant a {ttl_s} s lease"):
            raw = self._etcd.lease(int(ttl_s))
        lease = KvLease(self, raw, int(ttl_s))
        if keepalive:
            lease.start_keepalive()
        try:
            yield lease
        finally:
            try:
                lease.revoke()
            except PcoccError as err:
                # etcd expires it anyway; do not hide the exception that ended the block
                log.warning("cannot revoke etcd lease %x: %s", lease.id, err)

    @contextlib.contextmanager
    def watch_prefix(self, prefix: str, *, start_revision: int | None = None) -> Iterator[KvWatch]:
        """Watch every change under ``prefix`` (from ``start_revision`` if given)."""
        watch = KvWatch(self, prefix)
        kwargs = {} if start_revision is None else {"start_revision": start_revision}
        with self.errors(f"watch {prefix}"):
            watch.watch_id = self._etcd.add_watch_prefix_callback(prefix, watch.callback, **kwargs)
        try:
            yield watch
        finally:
            try:
                self._etcd.cancel_watch(watch.watch_id)
            except Exception as err:  # noqa: BLE001 - cancelling must not hide the cause
                log.debug("cannot cancel etcd watch on %s: %s", prefix, err)

    def wait_for(
        self,
        prefix: str,
        predicate: Callable[[dict[str, bytes]], T | None],
        timeout_s: float | None,
        *,
        tick_s: float = 0.5,
        what: str | None = None,
    ) -> T:
        """See :func:`pcocc.kv.watch.wait_for` (the first non-None ``predicate``).

        :raise TimedOut: no result after ``timeout_s``
        """
        return wait_for(self, prefix, predicate, timeout_s, tick_s=tick_s, what=what)
