import socket

import pytest

from pcocc.errors import ConfigError
from pcocc.netaddr import reachable_address


def test_loopback_peer_gives_loopback():
    assert reachable_address(["http://127.0.0.1:2379"]) == "127.0.0.1"


def test_override_wins_and_is_checked():
    assert reachable_address(["127.0.0.1:1"], override=" 10.1.2.3 ") == "10.1.2.3"
    with pytest.raises(ConfigError, match="PCOCC_NODE_ADDRESS"):
        reachable_address([], override="node12")


def test_unresolvable_peers_fall_back_to_loopback():
    assert reachable_address(["http://no-such-host.invalid:2379"]) == "127.0.0.1"


def test_routed_peer_gives_a_local_address():
    """A non-loopback peer yields the source address of its route: one of ours."""
    try:
        addr = reachable_address(["192.0.2.200:2379", "198.51.100.1:2379"])
    except OSError:
        pytest.skip("no IPv4 route on this machine")
    if addr == "127.0.0.1":
        pytest.skip("no IPv4 route to a test network on this machine")
    # binding proves it is an address of this host
    with socket.socket() as s:
        s.bind((addr, 0))
