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
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from pcocc.errors import (
    Busy,
    ConfigError,
    Corrupt,
    KvConflict,
    NotFound,
    PcoccError,
    PermissionDenied,
    ServiceUnavailable,
    TimedOut,
)
from pcocc.kv.credentials import (
    DEFAULT_LOGIN_HINT,
    check_login_transport,
    etcd_login,
    refusal_hint,
)
from pcocc.kv.endpoints import ENDPOINTS_VAR, parse_endpoint
from pcocc.kv.tls import TlsFiles, tls_from_config

# etcd3 ships old generated protobuf modules: they need protobuf<4 (see setup.cfg) and warn
# about deprecated descriptor calls on import
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import etcd3
    import etcd3.events
    import etcd3.exceptions
    from etcd3 import etcdrpc
import grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KvEvent:
    """One change seen by a watch: ``value`` is None when the key was deleted."""

    key: str
    value: bytes | None
    revision: int

    @property
    def is_delete(self) -> bool:
        return self.value is None


class KvLease:
    """A granted lease, kept alive by a thread while its ``with`` block runs."""

    def __init__(self, client: KvClient, lease: Any, ttl_s: int):
        self._client = client
        self._lease = lease
        self.ttl_s = ttl_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: when the last refresh that etcd answered was sent (monotonic clock)
        self._refreshed_at = time.monotonic()
        #: the error of the refreshes failing right now, None while etcd answers
        self.failing: PcoccError | None = None
        #: set once the lease is known to be gone (see ``check``)
        self.lost: ServiceUnavailable | None = None

    @property
    def id(self) -> int:
        return self._lease.id

    def refresh(self) -> None:
        """Restart the lease's time to live.

        :raise NotFound: the lease already expired (the keys put under it are gone)
        """
        with self._client._errors("refresh lease"):
            responses = self._lease.refresh()
        if not responses or responses[-1].TTL <= 0:
            raise NotFound(
                f"etcd lease {self.id:x} expired: the keys put under it are gone",
                hint="the process was stalled or cut from etcd for longer than the lease TTL",
            )

    def remaining_ttl_s(self) -> int:
        """Seconds left before expiry (-1 once expired or revoked)."""
        with self._client._errors("read lease"):
            return self._lease.remaining_ttl

    def start_keepalive(self) -> None:
        self._thread = threading.Thread(
            target=self._keepalive, name=f"etcd-lease-{self.id:x}", daemon=True
        )
        self._thread.start()

    def check(self) -> None:
        """Raise if the lease is gone: etcd said so, or did not answer for a whole TTL.

        :raise ServiceUnavailable: names etcd's endpoint and how long it was away
        """
        if self.lost is not None:
            raise self.lost

    def _keepalive(self) -> None:
        """Refresh every ``ttl/3`` s; an outage shorter than the TTL is survived.

        A refresh that etcd does not answer (down, stopped, unreachable) is retried; once no
        refresh was answered for a whole TTL, etcd has expired the lease (or will as soon as
        it is back), so the lease is marked lost and the thread ends.
        """
        period = max(self.ttl_s / 3.0, 0.2)
        while not self._stop.wait(period):
            sent_at = time.monotonic()
            try:
                self.refresh()
            except NotFound as err:
                self._mark_lost(f"etcd at {self._client.endpoint} expired the lease")
                log.debug("%s", err)
                return
            except PcoccError as err:
                self.failing = err
                away_s = time.monotonic() - self._refreshed_at
                if away_s >= self.ttl_s:
                    self._mark_lost(
                        f"etcd at {self._client.endpoint} did not answer for {away_s:.0f} s,"
                        f" longer than the lease TTL ({self.ttl_s} s)"
                    )
                    return
                log.warning("cannot refresh etcd lease %x (will retry): %s", self.id, err)
            else:
                self._refreshed_at = sent_at
                if self.failing is not None:
                    log.warning("etcd at %s answers again", self._client.endpoint)
                self.failing = None

    def _mark_lost(self, why: str) -> None:
        self.lost = ServiceUnavailable(
            f"lost etcd: {why}; the keys under lease {self.id:x} are gone",
            hint=f"check that etcd runs at {self._client.endpoint} and keeps running",
        )
        log.debug("%s", self.lost)

    def revoke(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self.lost is not None:
            return  # etcd expired it (or will when it is back): nothing to revoke
        with self._client._errors("revoke lease"):
            self._lease.revoke()


class KvWatch:
    """Events of a watched prefix, in order; ``get`` waits for the next one."""

    def __init__(self, client: KvClient, prefix: str):
        self._client = client
        self.prefix = prefix
        self._queue: queue.Queue[KvEvent | BaseException] = queue.Queue()
        self.watch_id: Any = None

    def _callback(self, response: Any) -> None:
        if isinstance(response, BaseException):
            self._queue.put(response)
            return
        revision = response.header.revision
        for ev in response.events:
            value = None if isinstance(ev, etcd3.events.DeleteEvent) else bytes(ev.value)
            self._queue.put(KvEvent(ev.key.decode(), value, revision))

    def get(self, timeout_s: float | None = None) -> KvEvent | None:
        """The next event, or None after ``timeout_s``.

        :raise ServiceUnavailable: the watch stream broke (etcd went away)
        """
        try:
            item = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise ServiceUnavailable(
                f"etcd watch on {self.prefix} at {self._client.endpoint} broke: {_describe(item)}",
                hint=self._client.hint,
            ) from item
        return item

    def __iter__(self) -> Iterator[KvEvent]:
        while True:
            event = self.get()
            if event is not None:
                yield event


def _describe(err: BaseException) -> str:
    if isinstance(err, grpc.RpcError) and hasattr(err, "details"):
        return f"{err.code().name.lower()}: {err.details()}"
    if isinstance(err, etcd3.exceptions.ConnectionFailedError):
        return "connection failed"
    if isinstance(err, etcd3.exceptions.ConnectionTimeoutError):
        return "no answer in time"
    return str(err) or type(err).__name__


class _WatchStubWithBackoff:
    """Wrap the gRPC watch stub: wait longer before each new stream after a failed one."""

    max_delay_s = 2.0

    def __init__(self, stub: Any):
        self._stub = stub
        self._delay_s = 0.0

    def Watch(self, requests: Any, **kwargs: Any) -> Iterator[Any]:  # the gRPC method name
        if self._delay_s:
            time.sleep(self._delay_s)
        return self._track(self._stub.Watch(requests, **kwargs))

    def _track(self, stream: Iterator[Any]) -> Iterator[Any]:
        try:
            for response in stream:
                self._delay_s = 0.0
                yield response
        except grpc.RpcError:
            self._delay_s = min(max(self._delay_s * 2, 0.1), self.max_delay_s)
            raise


def _is_auth_error(err: grpc.RpcError) -> bool:
    code = err.code() if hasattr(err, "code") else None
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return True
    details = (err.details() if hasattr(err, "details") else "") or ""
    return code == grpc.StatusCode.INVALID_ARGUMENT and (
        "authentication" in details or _LOGIN_NEEDED in details
    )


def _is_stale_token_error(err: grpc.RpcError) -> bool:
    details = (err.details() if hasattr(err, "details") else "") or ""
    return "invalid auth token" in details


#: what etcd answers a client without login once authentication is enabled
_LOGIN_NEEDED = "user name is empty"


def is_auth_disabled_error(err: BaseException | None) -> bool:
    """True for etcd's answer to a login when authentication is not enabled."""
    details = err.details() if isinstance(err, grpc.RpcError) and hasattr(err, "details") else ""
    return "authentication is not enabled" in (details or "")


def _grpc_tls_args(tls: TlsFiles | None, endpoints: Sequence[str]) -> dict[str, str]:
    """etcd3's TLS arguments (file names; the files are checked here for clear errors).

    :raise ConfigError: no CA configured, or a file missing or unreadable
    """
    if tls is None:
        raise ConfigError(
            f"etcd endpoint {', '.join(endpoints)} uses TLS but no CA is configured",
            hint="set ca-cert in the etcd section of batch.yaml",
        )
    tls.read()
    args = {"ca_cert": str(tls.ca)}
    if tls.cert is not None and tls.key is not None:
        args.update(cert_cert=str(tls.cert), cert_key=str(tls.key))
    return args


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
    ):
        """Connect to one of ``endpoints``, as ``user`` if etcd has auth enabled.

        ``login_hint`` says what to check when etcd refuses the login (never the password);
        ``tls``: the CA (and client certificate) for ``https://`` endpoints.

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
            self._tls_args = _grpc_tls_args(tls, self.endpoints)
        self.timeout_s = timeout_s
        self.user = user
        #: False when etcd has no authentication (a configured login is then not used)
        self.is_logged_in = user is not None
        self.login_hint = login_hint or DEFAULT_LOGIN_HINT
        credentials = {} if user is None else {"user": user, "password": password or ""}
        self._password = password or ""  # kept for logging in again (etcd restarted)
        # with several endpoints, use the first that answers; with one, connect lazily
        for i, (scheme, host, port) in enumerate(addresses):
            self.endpoint = f"{scheme}://{host}:{port}"
            self.hint = f"check that etcd runs at {self.endpoint} ({ENDPOINTS_VAR})"
            tls_args = self._tls_args if scheme == "https" else {}
            try:
                self._connect(host, port, credentials, probe=len(addresses) > 1, tls=tls_args)
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
            with self._errors(f"log in as {self.user}" if self.user else "connect"):
                self._etcd = etcd3.client(
                    host=host, port=port, timeout=self.timeout_s, **credentials, **tls
                )
        except ServiceUnavailable as err:
            if not (credentials and is_auth_disabled_error(err.__cause__)):
                raise
            # a login configured before the admin enabled etcd auth: nothing to log in to
            log.debug("etcd at %s has no authentication: connecting without login", self.endpoint)
            self.is_logged_in = False
            with self._errors("connect"):
                self._etcd = etcd3.client(host=host, port=port, timeout=self.timeout_s, **tls)
        if not self._etcd.uses_secure_channel:
            # etcd3 sends the auth token twice: as call credentials, which gRPC refuses on a
            # plain channel, and as metadata, which is enough for etcd
            self._etcd.call_credentials = None
            self._etcd.watcher._credentials = None
        if probe:
            try:
                with self._errors("connect"):
                    self._etcd.status()
            except ServiceUnavailable:
                self._etcd.close()
                raise
        self._quiet_watch_thread_on_close()

    def _quiet_watch_thread_on_close(self) -> None:
        """Tame etcd3's watch thread: back off while etcd is down, end quietly on close.

        etcd3 reopens a broken watch stream at once, in a loop: without a delay it spins on
        a CPU for as long as etcd is away. After ``close`` it dies with ValueError.
        """
        watcher = self._etcd.watcher
        watcher._watch_stub = _WatchStubWithBackoff(watcher._watch_stub)
        run = watcher._run

        def run_until_closed() -> None:
            try:
                run()
            except ValueError as err:
                log.debug("etcd watch thread ends: %s", err)

        watcher._run = run_until_closed

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        etcd: Mapping[str, Any] | None = None,
        base_dir: Path | None = None,
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
        kwargs.setdefault("tls", tls_from_config(etcd, base_dir))
        if "user" not in kwargs:
            login = etcd_login(etcd, env, base_dir=base_dir)
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
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except etcd3.exceptions.PreconditionFailedError as err:
            raise KvConflict(f"etcd refused to {what}: {_describe(err)}") from err
        except grpc.RpcError as err:
            if self.is_logged_in and _is_stale_token_error(err):
                self._login_again(what, err)
            if _is_auth_error(err):
                who = f"user {self.user!r}" if self.is_logged_in else "an anonymous client"
                hint = refusal_hint(
                    who,
                    anonymous=not self.is_logged_in,
                    role_denied=err.code() == grpc.StatusCode.PERMISSION_DENIED,
                    login_hint=self.login_hint,
                )
                raise PermissionDenied(
                    f"etcd at {self.endpoint} refused to let {who} {what}: {_describe(err)}",
                    hint=hint,
                ) from err
            raise ServiceUnavailable(
                f"cannot {what} in etcd at {self.endpoint}: {_describe(err)}", hint=self.hint
            ) from err
        except etcd3.exceptions.Etcd3Exception as err:
            raise ServiceUnavailable(
                f"cannot {what} in etcd at {self.endpoint}: {_describe(err)}", hint=self.hint
            ) from err
        except ValueError as err:
            # grpc raises ValueError on a closed channel
            if "channel closed" not in str(err).lower():
                raise
            raise ServiceUnavailable(f"cannot {what}: the etcd client is closed") from err

    def _login_again(self, what: str, err: grpc.RpcError) -> None:
        """etcd forgot our login token (it restarted, or the token expired): log in again so
        that the next call works, and fail this one as a passing outage (callers that ride
        out outages retry it).

        :raise ServiceUnavailable: logged in again (the caller may retry the call)
        :raise PermissionDenied: etcd refused the login (the user or its password changed)
        """
        with self._errors(f"log in again as {self.user}"):
            reply = etcdrpc.AuthStub(self._etcd.channel).Authenticate(
                etcdrpc.AuthenticateRequest(name=self.user, password=self._password),
                timeout=self.timeout_s,
            )
        self._etcd.metadata = (("token", reply.token),)
        self._etcd.watcher._metadata = self._etcd.metadata  # for the next watch stream
        log.info("etcd at %s dropped the login token of %s: logged in again", self.endpoint,
                 self.user)  # fmt: skip
        raise ServiceUnavailable(
            f"cannot {what} in etcd at {self.endpoint}: etcd dropped the login token"
            " (restarted?); logged in again",
            hint="try again",
        ) from err

    # reads and writes ---------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        with self._errors(f"read {key}"):
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
        with self._errors(f"read {prefix}"):
            response = self._etcd.get_prefix_response(prefix)
        values = {kv.key.decode(): bytes(kv.value) for kv in response.kvs}
        return values, response.header.revision

    def put(self, key: str, value: bytes | str, *, lease: KvLease | None = None) -> None:
        with self._errors(f"write {key}"):
            self._etcd.put(key, value, lease=lease.id if lease else None)

    def put_json(self, key: str, obj: Any, *, lease: KvLease | None = None) -> None:
        self.put(key, json.dumps(obj, sort_keys=True), lease=lease)

    def delete(self, key: str) -> bool:
        """Delete ``key``; True if it existed."""
        with self._errors(f"delete {key}"):
            return bool(self._etcd.delete(key))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; return how many there were."""
        with self._errors(f"delete {prefix}"):
            return int(self._etcd.delete_prefix(prefix).deleted)

    # transactions -------------------------------------------------------------------------
    def create(self, key: str, value: bytes | str, *, lease: KvLease | None = None) -> bool:
        """Write ``key`` only if it does not exist; True if this call created it."""
        tx = self._etcd.transactions
        with self._errors(f"create {key}"):
            ok, _ = self._etcd.transaction(
                compare=[tx.create(key) == 0],
                success=[tx.put(key, value, lease=lease.id if lease else None)],
                failure=[],
            )
        return bool(ok)

    def replace(self, key: str, old: bytes | str, new: bytes | str) -> None:
        """Set ``key`` to ``new`` if it still holds ``old``.

        :raise KvConflict: the value was not ``old`` any more
        """
        tx = self._etcd.transactions
        with self._errors(f"update {key}"):
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
            with self._errors(f"read {key}"):
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
            with self._errors(f"update {key}"):
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
        with self._errors(f"grant a {ttl_s} s lease"):
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
        with self._errors(f"watch {prefix}"):
            watch.watch_id = self._etcd.add_watch_prefix_callback(prefix, watch._callback, **kwargs)
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
        predicate: Callable[[dict[str, bytes]], bool],
        timeout_s: float | None,
        *,
        what: str | None = None,
    ) -> dict[str, bytes]:
        """Wait until ``predicate(keys under prefix)`` is true; return those keys.

        Reads the prefix once, then applies watch events from the next revision on: no
        polling, and no change between the read and the watch is missed.

        :raise TimedOut: still false after ``timeout_s`` (names ``what`` or the prefix)
        """
        values, revision = self.get_prefix_at(prefix)
        if predicate(dict(values)):
            return values
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self.watch_prefix(prefix, start_revision=revision + 1) as watch:
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                event = watch.get(remaining)
                if event is None:
                    break
                if event.is_delete:
                    values.pop(event.key, None)
                else:
                    values[event.key] = event.value
                if predicate(dict(values)):
                    return values
        raise TimedOut(
            f"timed out after {timeout_s:g} s waiting for {what or f'etcd keys under {prefix}'}"
        )
