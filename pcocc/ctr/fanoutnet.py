"""The data channel of the copies between nodes (:mod:`pcocc.ctr.fanout`): TCP from the
sender to the receiver, opened with a one-time token.

srun's own standard output carries data at a few tens of MiB/s (Slurm forwards it in small
messages), so srun only starts the sender and hands it the way back: the receiver listens
on an ephemeral port of the address the other nodes reach it at (:mod:`pcocc.netaddr`) and
writes ``ADDRESS PORT TOKEN`` on the standard input of the srun step, Slurm's authenticated
channel (the token never appears in a command line or the environment). The sender connects,
writes the token, then the layers.

Security: the receiver keeps the first connection that presents the token (compared in
constant time) and closes any other after reading at most the token's length, so another
user who finds the port can neither feed data nor hold the slot for long. Data on the right
connection is still checked blob by blob against the receiver's own manifest
(:mod:`pcocc.repo.cachelayers`), so even a stolen token could not make a node unpack
foreign data. The sender never listens: there is nothing to read from it.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import select
import socket
import time
from collections.abc import Callable

from pcocc.errors import Corrupt, PcoccError, TimedOut

TOKEN_HEX = 64
#: a connection must present its token within this time
TOKEN_WAIT_S = 5.0
#: a stalled copy is given up after this long without data
STALL_S = 120.0


class Listener:
    """The receiver's end: one port, one token, one accepted connection."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((address, 0))
        self.sock.listen(8)
        self.address = address
        self.port = self.sock.getsockname()[1]
        self.token = secrets.token_hex(TOKEN_HEX // 2)

    def offer(self) -> bytes:
        """The line the sender reads on its standard input."""
        return f"{self.address} {self.port} {self.token}\n".encode()

    def accept(self, sender_status: Callable[[], int | None], wait_s: float) -> socket.socket:
        """The connection of the sender that presents the token; ``sender_status`` is the
        sender's exit status, None while it runs (``Popen.poll``).

        :raise PcoccError: the sender exited without connecting
        :raise TimedOut: nothing valid within ``wait_s``
        """
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.sock], [], [], 0.2)
            if not ready:
                status = sender_status()
                if status is not None:
                    raise PcoccError(f"the sender exited with status {status} without connecting")
                continue
            conn, _peer = self.sock.accept()
            if self._presents_token(conn):
                conn.settimeout(STALL_S)
                return conn
            conn.close()
        raise TimedOut(f"no sender connected within {wait_s:g} s")

    def _presents_token(self, conn: socket.socket) -> bool:
        conn.settimeout(TOKEN_WAIT_S)
        got = b""
        try:
            while len(got) < TOKEN_HEX:
                chunk = conn.recv(TOKEN_HEX - len(got))
                if not chunk:
                    return False
                got += chunk
        except OSError:
            return False
        return hmac.compare_digest(got, self.token.encode())

    def close(self) -> None:
        self.sock.close()


def parse_offer(line: str) -> tuple[str, int, str]:
    """(address, port, token) of the receiver's line, checked strictly.

    :raise Corrupt: not ``IPV4 PORT TOKEN``
    """
    parts = line.strip().split(" ")
    try:
        address, port_text, token = parts
        address = str(ipaddress.IPv4Address(address))
        port = int(port_text)
        if not 0 < port < 65536 or len(token) != TOKEN_HEX:
            raise ValueError
        int(token, 16)
    except ValueError:
        raise Corrupt("the receiver's offer is not 'ADDRESS PORT TOKEN'") from None
    return address, port, token


def connect(address: str, port: int, token: str) -> socket.socket:
    """The sender's end: connected and authenticated with ``token``."""
    sock = socket.create_connection((address, port), timeout=STALL_S)
    sock.sendall(token.encode())
    return sock


__all__ = ["Listener", "connect", "parse_offer"]
