"""What pcocc needs of the ``etcd3`` package beyond its public API, in one place.

etcd3 0.12 ships old generated protobuf modules (they need protobuf<4, see setup.cfg, and
warn about deprecated descriptor calls on import), sends the login token in a way gRPC
refuses on plain channels, reopens a broken watch stream in a busy loop and has no call to
log in again. The patches to its private attributes live here and nowhere else.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pcocc.errors import ConfigError
from pcocc.kv.tls import TlsFiles

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import etcd3
    import etcd3.events
    import etcd3.exceptions
    from etcd3 import etcdrpc
import grpc

__all__ = ["etcd3", "etcdrpc", "grpc"]

log = logging.getLogger(__name__)

#: what etcd answers a client without login once authentication is enabled
LOGIN_NEEDED = "user name is empty"


def describe(err: BaseException) -> str:
    """A short text for an etcd3/gRPC error (its status and etcd's words)."""
    if isinstance(err, grpc.RpcError) and hasattr(err, "details"):
        return f"{err.code().name.lower()}: {err.details()}"
    if isinstance(err, etcd3.exceptions.ConnectionFailedError):
        return "connection failed"
    if isinstance(err, etcd3.exceptions.ConnectionTimeoutError):
        return "no answer in time"
    return str(err) or type(err).__name__


def is_auth_error(err: grpc.RpcError) -> bool:
    code = err.code() if hasattr(err, "code") else None
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return True
    details = (err.details() if hasattr(err, "details") else "") or ""
    return code == grpc.StatusCode.INVALID_ARGUMENT and (
        "authentication" in details or LOGIN_NEEDED in details
    )


def is_stale_token_error(err: grpc.RpcError) -> bool:
    details = (err.details() if hasattr(err, "details") else "") or ""
    return "invalid auth token" in details


def is_auth_disabled_error(err: BaseException | None) -> bool:
    """True for etcd's answer to a login when authentication is not enabled."""
    details = err.details() if isinstance(err, grpc.RpcError) and hasattr(err, "details") else ""
    return "authentication is not enabled" in (details or "")


def grpc_tls_args(tls: TlsFiles | None, endpoints: Sequence[str]) -> dict[str, str]:
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


class WatchStubWithBackoff:
    """Wrap the gRPC watch stub: wait longer before each new stream after a failed one;
    ``on_answer`` is called when a stream delivers again after a failure."""

    max_delay_s = 2.0

    def __init__(self, stub: Any, on_answer: Callable[[], None] = lambda: None):
        self._stub = stub
        self._delay_s = 0.0
        self._on_answer = on_answer

    def Watch(self, requests: Any, **kwargs: Any) -> Iterator[Any]:  # the gRPC method name
        if self._delay_s:
            time.sleep(self._delay_s)
        return self._track(self._stub.Watch(requests, **kwargs))

    def _track(self, stream: Iterator[Any]) -> Iterator[Any]:
        try:
            for response in stream:
                if self._delay_s:
                    self._on_answer()
                self._delay_s = 0.0
                yield response
        except grpc.RpcError:
            self._delay_s = min(max(self._delay_s * 2, 0.1), self.max_delay_s)
            raise


def tame(client: Any, on_watch_answer: Callable[[], None] = lambda: None) -> None:
    """Patch a new ``etcd3.client``: no call credentials on a plain channel, watch streams
    reopened with a back-off, and the watch thread ending quietly on close.

    etcd3 sends the auth token twice: as call credentials, which gRPC refuses on a plain
    channel, and as metadata, which is enough for etcd. It reopens a broken watch stream at
    once, in a loop: without a delay it spins on a CPU for as long as etcd is away. After
    ``close`` its watch thread dies with ValueError.
    """
    watcher = client.watcher
    if not client.uses_secure_channel:
        client.call_credentials = None
        watcher._credentials = None
    watcher._watch_stub = WatchStubWithBackoff(watcher._watch_stub, on_watch_answer)
    run = watcher._run

    def run_until_closed() -> None:
        try:
            run()
        except ValueError as err:
            log.debug("etcd watch thread ends: %s", err)

    watcher._run = run_until_closed


def authenticate(client: Any, user: str, password: str, timeout_s: float) -> None:
    """Log ``client`` in again (etcd forgot its token) for the next calls and watches."""
    reply = etcdrpc.AuthStub(client.channel).Authenticate(
        etcdrpc.AuthenticateRequest(name=user, password=password), timeout=timeout_s
    )
    client.metadata = (("token", reply.token),)
    client.watcher._metadata = client.metadata  # for the next watch stream


def auth_call(client: Any, method: str, request: Any, timeout_s: float) -> Any:
    """Call ``method`` of etcd's Auth service on ``client``'s channel, with its login."""
    stub = etcdrpc.AuthStub(client.channel)
    return getattr(stub, method)(request, timeout=timeout_s, metadata=client.metadata)


def raw_value(event: Any) -> bytes | None:
    """The value of an etcd3 watch event, None for a deletion."""
    return None if isinstance(event, etcd3.events.DeleteEvent) else bytes(event.value)
