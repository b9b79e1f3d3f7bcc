"""etcd endpoint addresses (kept apart from the gRPC client, which is slow to import)."""

from __future__ import annotations

from urllib.parse import urlsplit

from pcocc.errors import ConfigError

ENDPOINTS_VAR = "PCOCC_ETCD_ENDPOINTS"


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``http://host:port`` or ``host:port`` -> (host, port).

    :raise ConfigError: not such an address, or https (not supported yet)
    """
    text = endpoint.strip()
    url = urlsplit(text if "://" in text else f"http://{text}")
    try:
        port = url.port
    except ValueError:
        port = None
    if url.scheme != "http" or not url.hostname or port is None:
        raise ConfigError(
            f"invalid etcd endpoint {endpoint!r}",
            hint="use http://HOST:PORT (TLS endpoints are not supported yet)",
        )
    return url.hostname, port
