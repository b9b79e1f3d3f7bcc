"""Read-only etcd access over etcd's JSON gateway (HTTP), for quick user commands.

``pcocc ssh``, ``ps`` and friends only read a few keys. The gRPC client (``etcd3`` + ``grpc``)
costs about a quarter of a second to import, more than the whole lookup; etcd serves the
same v3 API as JSON over HTTP on its client port (``POST /v3/kv/range``, keys and values in
base64), which needs nothing beyond the standard library. Writers, leases and watches stay
on :mod:`pcocc.kv.client`.

Errors map like the gRPC client's: :class:`ServiceUnavailable` when etcd cannot be reached,
:class:`PermissionDenied` when it refuses the user, :class:`Corrupt` for an answer that is
not etcd's.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
from collections.abc import Sequence
from typing import Any, Self

from pcocc.errors import ConfigError, Corrupt, PermissionDenied, ServiceUnavailable
from pcocc.kv.credentials import DEFAULT_LOGIN_HINT, refusal_hint
from pcocc.kv.endpoints import ENDPOINTS_VAR, Endpoint, parse_endpoint
from pcocc.kv.tls import TlsFiles

log = logging.getLogger(__name__)

#: gRPC status codes that etcd's gateway returns in its error bodies
_PERMISSION_DENIED, _UNAUTHENTICATED = 7, 16


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def prefix_end(prefix: str) -> str:
    """The first key after every key that starts with ``prefix`` (etcd's ``range_end``)."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return raw.decode(errors="surrogateescape")
        raw.pop()
    return "\0"


class GatewayReader:
    """Reads keys from the first of ``endpoints`` that answers, as ``user`` with auth on."""

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        *,
        user: str | None = None,
        password: str | None = None,
        hint: str | None = None,
        timeout_s: float = 5.0,
        tls: TlsFiles | None = None,
    ):
        """``hint``: what to check when etcd refuses the login (never the password);
        ``tls``: the CA (and client certificate) for ``https://`` endpoints.

        :raise ConfigError: an https endpoint without ``tls``, or a TLS file missing,
            unreadable or not PEM
        """
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        if not endpoints:
            raise ConfigError(
                "no etcd endpoint configured", hint=f"set {ENDPOINTS_VAR}=http://HOST:PORT"
            )
        self.addresses: list[Endpoint] = [parse_endpoint(e) for e in endpoints]
        self._ssl = None
        if any(a.scheme == "https" for a in self.addresses):
            if tls is None:
                raise ConfigError(
                    f"etcd endpoint {', '.join(endpoints)} uses TLS but no CA is configured",
                    hint="set ca-cert in the etcd section of batch.yaml",
                )
            self._ssl = tls.ssl_context()
        self.user = user
        self.password = password
        self.login_hint = hint or DEFAULT_LOGIN_HINT
        self.timeout_s = timeout_s
        self.endpoint = self.addresses[0].url
        self._conn: http.client.HTTPConnection | None = None
        self._token: str | None = None

    # connection ----------------------------------------------------------------------------
    def _post(self, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        """POST to the current endpoint, moving on to the next one when it is unreachable."""
        last: OSError | None = None
        for _ in range(len(self.addresses)):
            if self._conn is None:
                address = self.addresses[0]
                self.endpoint = address.url
                if address.scheme == "https":
                    self._conn = http.client.HTTPSConnection(
                        address.host, address.port, timeout=self.timeout_s, context=self._ssl
                    )
                else:
                    self._conn = http.client.HTTPConnection(
                        address.host, address.port, timeout=self.timeout_s
                    )
            headers = {"Content-Type": "application/json"}
            if self._token:
                headers["Authorization"] = self._token
            try:
                self._conn.request("POST", path, json.dumps(body), headers)
                response = self._conn.getresponse()
                payload = response.read()
                return self._decode(response.status, payload, what)
            except (OSError, http.client.HTTPException) as err:
                last = err if isinstance(err, OSError) else OSError(str(err))
                log.debug("etcd endpoint %s unusable: %s", self.endpoint, err)
                self.close()
                self.addresses.append(self.addresses.pop(0))
        raise ServiceUnavailable(
            f"cannot {what} in etcd at {self.endpoint}: {last}",
            hint=f"check that etcd runs at {self.endpoint} ({ENDPOINTS_VAR})",
        )

    def _decode(self, status: int, payload: bytes, what: str) -> dict[str, Any]:
        if status == 400 and b"CommonName of client" in payload:
            # etcd's gateway refuses a client certificate with a CN (it cannot authenticate
            # by CN, so it will not pretend to)
            raise ConfigError(
                f"etcd at {self.endpoint} refuses the JSON gateway to a client certificate"
                " with a Common Name",
                hint="give pcocc a client certificate without CN (subject alternative names"
                " only) in the etcd section of batch.yaml",
            )
        try:
            body = json.loads(payload or b"{}")
        except ValueError:
            raise Corrupt(
                f"etcd at {self.endpoint} sent a non-JSON answer (HTTP {status})",
                hint=f"check that {self.endpoint} is an etcd v3 client URL",
            ) from None
        if status == 200:
            return body
        message = body.get("message") or body.get("error") or f"HTTP {status}"
        code = body.get("code")
        refused = any(
            m in message
            for m in ("authentication failed", "permission denied", "user name is empty")
        )
        if code in (_PERMISSION_DENIED, _UNAUTHENTICATED) or status in (401, 403) or refused:
            who = f"user {self.user!r}" if self.user else "an anonymous client"
            hint = refusal_hint(
                who,
                anonymous=self.user is None,
                role_denied=bool(self._token) and "permission denied" in message,
                login_hint=self.login_hint,
            )
            raise PermissionDenied(
                f"etcd at {self.endpoint} refused to let {who} {what}: {message}", hint=hint
            )
        raise ServiceUnavailable(f"cannot {what} in etcd at {self.endpoint}: {message}")

    def _login(self) -> None:
        if self.user is None or self._token is not None:
            return
        try:
            answer = self._post(
                "/v3/auth/authenticate",
                {"name": self.user, "password": self.password or ""},
                f"log in as {self.user}",
            )
        except ServiceUnavailable as err:
            if "authentication is not enabled" in err.message:
                self._token = ""  # etcd without auth: go on anonymously
                return
            raise
        self._token = answer.get("token") or ""

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # reads ---------------------------------------------------------------------------------
    def _range(self, key: str, range_end: str | None, what: str) -> dict[str, str]:
        self._login()
        body = {"key": _b64(key)}
        if range_end is not None:
            body["range_end"] = _b64(range_end)
        answer = self._post("/v3/kv/range", body, what)
        found = {}
        try:
            for kv in answer.get("kvs", []):
                found[base64.b64decode(kv["key"]).decode()] = base64.b64decode(
                    kv.get("value", "")
                ).decode()
        except (KeyError, TypeError, ValueError, UnicodeDecodeError) as err:
            raise Corrupt(f"etcd at {self.endpoint} sent a malformed range answer: {err}") from err
        return found

    def get(self, key: str) -> str | None:
        return self._range(key, None, f"read {key}").get(key)

    def get_prefix(self, prefix: str) -> dict[str, str]:
        return self._range(prefix, prefix_end(prefix), f"read {prefix}")
