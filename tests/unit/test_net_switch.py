"""The private network switch, with real UDP sockets on loopback."""

from __future__ import annotations

import socket

import pytest

from pcocc.errors import Corrupt
from pcocc.net.switch import Switch, bind_socket, endpoints_from_records, parse_port_record

MAC_A = "02:00:00:00:00:01"
MAC_B = "02:00:00:00:00:02"
MAC_C = "02:00:00:00:00:03"
BROADCAST = "ff:ff:ff:ff:ff:ff"


def frame(dst: str, src: str, payload: bytes = b"hello") -> bytes:
    return (
        bytes.fromhex(dst.replace(":", ""))
        + bytes.fromhex(src.replace(":", ""))
        + b"\x08\x00"
        + payload
    )


def endpoint() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(2)
    return s


def receive(s: socket.socket, timeout_s: float = 2) -> bytes | None:
    s.settimeout(timeout_s)
    try:
        return s.recvfrom(70000)[0]
    except TimeoutError:
        return None


@pytest.fixture
def switch():
    sock = bind_socket("127.0.0.1")
    sw = Switch(sock)
    thread = sw.serve_in_thread()
    yield sw
    sw.stop()
    thread.join(5)
    assert not thread.is_alive()
    sock.close()


def test_registered_endpoints_exchange_frames(switch):
    a, b = endpoint(), endpoint()
    switch.set_endpoints({a.getsockname(): MAC_A, b.getsockname(): MAC_B})
    hello = frame(BROADCAST, MAC_A, b"who has")
    a.sendto(hello, switch.address)
    assert receive(b) == hello  # broadcast flooded to the other port
    reply = frame(MAC_A, MAC_B, b"is at")
    b.sendto(reply, switch.address)
    assert receive(a) == reply  # unicast to the declared MAC's port
    assert receive(b, 0.3) is None  # never echoed back to the sender
    for s in (a, b):
        s.close()


def test_unicast_goes_only_to_its_port_and_learns_new_macs(switch):
    a, b, c = endpoint(), endpoint(), endpoint()
    switch.set_endpoints({s.getsockname(): m for s, m in ((a, MAC_A), (b, MAC_B), (c, MAC_C))})
    other = "02:aa:00:00:00:09"  # a MAC that b's guest uses besides its own
    b.sendto(frame(BROADCAST, other), switch.address)
    assert receive(a) and receive(c)
    to_other = frame(other, MAC_A, b"direct")
    a.sendto(to_other, switch.address)
    assert receive(b) == to_other
    assert receive(c, 0.3) is None
    for s in (a, b, c):
        s.close()


def test_unregistered_sender_is_dropped(switch):
    a, b, intruder = endpoint(), endpoint(), endpoint()
    switch.set_endpoints({a.getsockname(): MAC_A, b.getsockname(): MAC_B})
    intruder.sendto(frame(MAC_A, MAC_C, b"injected"), switch.address)
    intruder.sendto(frame(BROADCAST, MAC_C, b"injected"), switch.address)
    assert receive(a, 0.5) is None and receive(b, 0.3) is None
    assert switch.dropped >= 2
    # a port that is unregistered later is refused from then on
    switch.set_endpoints({a.getsockname(): MAC_A})
    b.sendto(frame(MAC_A, MAC_B, b"late"), switch.address)
    assert receive(a, 0.5) is None
    for s in (a, b, intruder):
        s.close()


def test_runt_frames_are_dropped(switch):
    a, b = endpoint(), endpoint()
    switch.set_endpoints({a.getsockname(): MAC_A, b.getsockname(): MAC_B})
    a.sendto(b"\xff" * 10, switch.address)
    assert receive(b, 0.5) is None
    for s in (a, b):
        s.close()


def test_port_records():
    ep, mac = parse_port_record('{"host": "10.0.0.5", "port": 4000, "mac": "02:AB:00:00:00:01"}')
    assert ep == ("10.0.0.5", 4000) and mac == "02:ab:00:00:00:01"
    for bad in (
        "nope",
        '{"host": "x", "port": 1, "mac": "02:00:00:00:00:01"}',
        '{"host": "10.0.0.5", "port": 0, "mac": "02:00:00:00:00:01"}',
        '{"host": "10.0.0.5", "port": 4000, "mac": "02:00"}',
    ):
        with pytest.raises(Corrupt, match="invalid private network port record"):
            parse_port_record(bad)
    good = '{"host": "10.0.0.5", "port": 4000, "mac": "02:00:00:00:00:01"}'
    assert endpoints_from_records([good, "garbage"]) == {("10.0.0.5", 4000): "02:00:00:00:00:01"}
