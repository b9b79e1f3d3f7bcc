"""A site etcd over TLS with authentication: pcocc's gRPC client and its JSON-gateway reader
both go through https with the CA and client certificate of batch.yaml; plain http and a
client without certificate are refused; missing certificate files are named."""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pcocc.kv import connect
from pcocc.cluster.definition import build_definition
from pcocc.cluster.lookup import clusters_of
from pcocc.cluster.record import ClusterRecord
from pcocc.cluster.state import ClusterState
from pcocc.config import load_config
from pcocc.errors import PcoccError
from pcocc.kv import keys
from pcocc.kv.client import KvClient
from pcocc.kv.gateway import GatewayReader
from pcocc.kv.server import EtcdServer, Grant, TlsServerFiles

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402


def _write_key(key, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _cert(name: str, key, issuer_name, issuer_key, *, ca: bool = False, server: bool = False):
    now = datetime.datetime.now(datetime.timezone.utc)
    # a client certificate without CN: etcd's JSON gateway refuses one with a CN
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, name)] if ca or server else []
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    if not server and not ca:
        names = [x509.DNSName("pcocc-client")]
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if not ca:
        # etcd's JSON gateway calls etcd's gRPC with the server certificate: it is a
        # client certificate too
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path) -> dict[str, Path]:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pcocc test CA")])
    ca = _cert("pcocc test CA", ca_key, ca_name, ca_key, ca=True)
    files = {"ca": directory / "ca.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(f"pcocc {name}", key, ca_name, ca_key, server=server)
        files[name] = directory / f"{name}.pem"
        files[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{name}-key"] = directory / f"{name}-key.pem"
        _write_key(key, files[f"{name}-key"])
    return files


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory):
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (Debian package etcd-server)")
    top = tmp_path_factory.mktemp("etcd-tls")
    pki = make_pki(top / "pki")
    server = EtcdServer(
        top / "etcd",
        auth=True,
        grants=[Grant(keys.user_prefix(getpass.getuser()))],
        tls=TlsServerFiles(pki["server"], pki["server-key"], pki["ca"]),
    )
    with server:
        yield server, pki


def _sysconf(tmp_path: Path, server: EtcdServer, pki: dict[str, Path], **overrides) -> Path:
    sysconf = tmp_path / "etc-pcocc"
    sysconf.mkdir(exist_ok=True)
    password_file = tmp_path / "etcd-password"
    password_file.write_text(server.login.password + "\n")
    password_file.chmod(0o600)
    etcd = {
        "endpoints": [f"127.0.0.1:{server.client_port}"],
        "ca-cert": str(pki["ca"]),
        "cert": str(pki["client"]),
        "key": str(pki["client-key"]),
        "user": server.login.user,
        "password-file": str(password_file),
        **overrides,
    }
    (sysconf / "batch.yaml").write_text(json.dumps({"type": "local", "etcd": etcd}))
    (tmp_path / "home" / ".pcocc").mkdir(parents=True, exist_ok=True)
    return sysconf


def _env(sysconf: Path, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PCOCC_", "ETCD"))}
    env.update(
        HOME=str(tmp_path / "home"),
        PCOCC_SYSTEM_CONF_DIR=str(sysconf),
        PCOCC_USER_CONF_DIR=str(tmp_path / "home" / ".pcocc"),
        PCOCC_RUN_DIR=str(tmp_path / "run"),
    )
    return env


def _pcocc(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).parent / "pcocc")
    return subprocess.run(
        [exe, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_grpc_and_gateway_go_through_tls_with_the_configured_files(tls_etcd, tmp_path):
    server, pki = tls_etcd
    assert server.endpoint.startswith("https://127.0.0.1:")
    sysconf = _sysconf(tmp_path, server, pki)
    etcd = load_config(sysconf, tmp_path / "home" / ".pcocc").batch.etcd
    endpoints = connect.configured_endpoints(etcd, {})
    assert endpoints == server.endpoint
    user = getpass.getuser()
    definition = build_definition("tpl:1", {"tpl": {"kernel": "/k"}}, owner=user)
    record = ClusterRecord("77", definition, ClusterState.RUNNING, "n1", 123, batch="local")
    kv = connect.open_kv(endpoints, etcd)  # gRPC over TLS, logged in
    try:
        kv.put(keys.cluster_definition(user, "77"), record.to_json())
        with connect.open_reader(endpoints, etcd) as reader:  # the gateway over https
            assert [c.batchid for c in clusters_of(reader, user)] == ["77"]
        # the CLI finds it the same way
        res = _pcocc(_env(sysconf, tmp_path), "ps", "--json")
        assert res.returncode == 0, res.stderr
        assert [c["id"] for c in json.loads(res.stdout)] == ["77"]
    finally:
        kv.delete_prefix(keys.cluster_prefix(user, "77"))
        kv.close()


def test_plain_http_and_clients_without_certificate_are_refused(tls_etcd, tmp_path):
    server, pki = tls_etcd
    plain = f"http://127.0.0.1:{server.client_port}"
    with pytest.raises(PcoccError), GatewayReader(plain) as reader:
        reader.get_prefix("/")
    with pytest.raises(PcoccError), KvClient(plain, timeout_s=3) as client:
        client.get_prefix("/")
    # TLS with the CA but no client certificate: etcd asks for one
    from pcocc.kv.tls import TlsFiles

    with pytest.raises(PcoccError), GatewayReader(server.endpoint, tls=TlsFiles(pki["ca"])) as r:
        r.get_prefix("/")


def test_missing_certificate_files_are_named(tls_etcd, tmp_path):
    server, pki = tls_etcd
    missing = tmp_path / "nope" / "client.pem"
    sysconf = _sysconf(tmp_path, server, pki, cert=str(missing))
    res = _pcocc(_env(sysconf, tmp_path), "ps")
    assert res.returncode == 2, res.stderr
    assert f"etcd cert file {missing} does not exist" in res.stderr
    assert "Traceback" not in res.stderr
