"""etcd endpoint addresses (kept apart from the gRPC client, which is slow to import)."""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlsplit

from pcocc.errors import ConfigError

ENDPOINTS_VAR = "PCOCC_ETCD_ENDPOINTS"


class Endpoint(NamedTuple):
    scheme: str  # http or https
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_endpoint(endpoint: str) -> Endpoint:
    """``http://host:port``, ``https://host:port`` or ``host:port`` (http).

    :raise ConfigError: not such an address
    """
    text = endpoint.strip()
    url = urlsplit(text if "://" in text else f"http://{text}")
    try:
        port = url.port
    except ValueError:
        port = None
    if url.scheme not in ("http", "https") or not url.hostname or port is None:
        raise ConfigError(
            f"invalid etcd endpoint {endpoint!r}", hint="use http://HOST:PORT or https://HOST:PORT"
        )
    return Endpoint(url.scheme, url.hostname, port)

