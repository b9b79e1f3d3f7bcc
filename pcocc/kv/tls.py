"""TLS to a site etcd: the files named in batch.yaml's ``etcd`` section.

``ca-cert`` turns TLS on (the configured endpoints become ``https://``) and is the CA that
signed etcd's server certificate; ``cert`` and ``key`` are a client certificate and its
key, for an etcd that asks for one (``--client-cert-auth``). Both etcd clients use them:
gRPC (:mod:`pcocc.kv.client`) and the JSON gateway over https (:mod:`pcocc.kv.gateway`).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from pcocc.config.model import EtcdConfig
from pcocc.errors import ConfigError

_SETTINGS = {"ca": "ca-cert", "cert": "cert", "key": "key"}


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def read(self) -> tuple[bytes, bytes | None, bytes | None]:
        """The PEM contents of (ca, cert, key).

        :raise ConfigError: a file is missing or unreadable (names it and its setting)
        """
        return (
            _read(self.ca, "ca"),
            None if self.cert is None else _read(self.cert, "cert"),
            None if self.key is None else _read(self.key, "key"),
        )

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts ``ca`` only and shows ``cert`` when given.

        :raise ConfigError: a file is missing, unreadable or not PEM of the right kind
        """
        self.read()  # clear messages for missing or unreadable files
        try:
            context = ssl.create_default_context(cafile=str(self.ca))
        except (ssl.SSLError, ValueError) as err:
            raise ConfigError(f"etcd ca-cert {self.ca} is not a PEM CA certificate: {err}") from None
        if self.cert is not None:
            try:
                context.load_cert_chain(str(self.cert), str(self.key))
            except ssl.SSLError as err:
                raise ConfigError(
                    f"etcd cert {self.cert} and key {self.key} are not a PEM certificate and"
                    f" its private key: {err}"
                ) from None
        return context


def _read(path: Path, which: str) -> bytes:
    setting = _SETTINGS[which]
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"etcd {setting} file {path} does not exist",
            hint=f"fix '{setting}' in the etcd section of batch.yaml",
        ) from None
    except OSError as err:
        raise ConfigError(
            f"cannot read etcd {setting} file {path}: {err.strerror}",
            hint="the file must be readable by the user running pcocc",
        ) from None


def tls_from_config(etcd: EtcdConfig) -> TlsFiles | None:
    """The TLS files of batch.yaml's ``etcd`` section, or None when ``ca-cert`` is not set.

    Paths are expanded like ``password-file`` (``~``, relative to ``etcd.base_dir``).

    :raise ConfigError: ``cert`` without ``key`` (or the reverse), or either without ``ca-cert``
    """
    from pcocc.kv.credentials import expand_path

    values = {"ca": etcd.ca_cert, "cert": etcd.cert, "key": etcd.key}
    if bool(values["cert"]) != bool(values["key"]):
        raise ConfigError(
            "etcd section of batch.yaml: 'cert' and 'key' go together",
            hint="give both (a client certificate and its key) or neither",
        )
    if not values["ca"]:
        if values["cert"]:
            raise ConfigError(
                "etcd section of batch.yaml: 'cert' needs 'ca-cert' (TLS is on with ca-cert)",
            )
        return None
    paths = {k: expand_path(v, etcd.base_dir) if v else None for k, v in values.items()}
    return TlsFiles(paths["ca"], paths["cert"], paths["key"])  # type: ignore[arg-type]


def needs_tls(endpoints: str | list[str]) -> bool:
    """Some endpoint is ``https://``."""
    items = endpoints.split(",") if isinstance(endpoints, str) else endpoints
    return any(e.strip().startswith("https://") for e in items)

