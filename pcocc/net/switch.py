"""A small userspace Ethernet switch for the ``private`` networks of one cluster.

Each VM NIC on the network is a QEMU ``-netdev dgram`` endpoint: QEMU sends every frame the
guest emits as one UDP datagram to the switch, and receives frames as datagrams from it.
The switch learns which endpoint owns which source MAC, forwards unicast frames to the
learnt endpoint, and floods broadcast, multicast and unknown destinations to every other
endpoint.

Only endpoints registered for this cluster are served: the node processes publish their
NIC's ``host:port`` in etcd under the user's cluster prefix (leased), the switch watches that
prefix and drops every datagram from any other source, so that another user cannot inject
frames through the switch. The other direction is closed by the kernel: each NIC's socket is
connected to the switch (pcocc opens it and hands it to QEMU), so it receives datagrams from
the switch's address only.

The forwarding loop costs one ``recvfrom`` and one ``sendto`` per delivered frame and
allocates nothing but the datagram and its two MAC slices.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterable, Mapping

from pcocc import fields
from pcocc.errors import Corrupt

log = logging.getLogger(__name__)

#: Larger than any frame QEMU sends (its own buffer is 68 KiB).
MAX_DATAGRAM = 69632
#: Forget learnt MACs beyond this many (a guest cannot fill the switch's memory).
MAX_MACS = 4096

Endpoint = tuple[str, int]


def parse_port_record(text: str | bytes, key: str | None = None) -> tuple[Endpoint, str]:
    """``{"host": h, "port": p, "mac": m}`` (a node's NIC record, under the key
    ``nets/<net>/ports/<rank>``) -> ((h, p), mac); h is an IPv4 address.

    :raise Corrupt: not such a record, naming the key and the field
    """

    def parse(raw: str | bytes) -> tuple[Endpoint, str]:
        data = fields.load_object(raw)
        fields.fields_of(data, ("host", "port", "mac"))
        host = fields.ipv4_address(data["host"], "host")
        return (host, fields.port(data["port"], "port")), fields.mac(data["mac"], "mac")

    return fields.parse_record("private network port record", key, text, parse)


def mac_bytes(mac: str) -> bytes:
    """``02:00:...`` -> 6 bytes (ValueError otherwise)."""
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return raw


class Switch:
    """The forwarding state and loop; the caller owns the socket and the endpoint list."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        #: registered endpoint -> its declared MAC; replaced whole, never mutated
        self._endpoints: dict[Endpoint, bytes] = {}
        self._flood: tuple[Endpoint, ...] = ()
        self._macs: dict[bytes, Endpoint] = {}
        self._stop = False
        self.dropped = 0
        self.forwarded = 0

    @property
    def address(self) -> Endpoint:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def set_endpoints(self, endpoints: Mapping[Endpoint, str]) -> None:
        """Serve exactly these endpoints (endpoint -> declared MAC) from now on."""
        table = {ep: mac_bytes(mac) for ep, mac in endpoints.items()}
        macs = {mac: ep for ep, mac in table.items()}
        # keep what was learnt from endpoints that are still registered
        for mac, ep in list(self._macs.items()):
            if ep in table and mac not in macs:
                macs[mac] = ep
        # the forwarding thread reads these attributes: assign finished objects only
        self._endpoints = table
        self._flood = tuple(table)
        self._macs = macs

    def stop(self) -> None:
        """Make :meth:`serve` return (wakes it up with an empty datagram)."""
        self._stop = True
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"", self.address)
        except OSError:
            pass

    def serve(self) -> None:
        """Forward frames until :meth:`stop`."""
        sock = self.sock
        recvfrom, sendto = sock.recvfrom, sock.sendto
        while not self._stop:
            try:
                frame, source = recvfrom(MAX_DATAGRAM)
            except OSError as err:
                if self._stop:
                    return
                log.debug("switch: recvfrom: %s", err)
                continue
            endpoints = self._endpoints
            if source not in endpoints or len(frame) < 14:
                self.dropped += 1
                continue
            macs = self._macs
            src = frame[6:12]
            if macs.get(src) != source and not src[0] & 1:
                if len(macs) >= MAX_MACS:
                    macs.clear()
                macs[src] = source
            dest = None if frame[0] & 1 else macs.get(frame[0:6])
            try:
                if dest is not None:
                    if dest != source:
                        sendto(frame, dest)
                        self.forwarded += 1
                    continue
                for ep in self._flood:
                    if ep != source:
                        sendto(frame, ep)
                self.forwarded += 1
            except OSError as err:  # e.g. ICMP port unreachable from a VM that stopped
                log.debug("switch: sendto: %s", err)

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve, name="pcocc-vswitch", daemon=True)
        thread.start()
        return thread


def bind_socket(host: str, port: int = 0) -> socket.socket:
    """A UDP socket bound on ``host:port`` with room for bursts of frames."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def endpoints_from_records(
    records: Iterable[str] | Mapping[str, str],
) -> dict[Endpoint, str]:
    """Endpoint -> MAC of the valid port records (invalid ones are logged and skipped);
    a mapping gives each record's key (named in the warning)."""
    table: dict[Endpoint, str] = {}
    items = records.items() if isinstance(records, Mapping) else ((None, r) for r in records)
    for key, text in items:
        try:
            ep, mac = parse_port_record(text, key)
        except Corrupt as err:
            log.warning("switch: %s", err.message)
            continue
        table[ep] = mac
    return table
