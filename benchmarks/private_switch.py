#!/usr/bin/env python3
"""Throughput and round trip of the private network switch, against plain UDP.

The VMs of a private network send each Ethernet frame as one UDP datagram to the switch
(pcocc/net/switch.py, a Python process), which sends it on to the destination's port. This
measures what the switch costs on this host, without QEMU and guests (whose own costs,
under TCG especially, would hide it):

throughput: a sender process sends 1464-byte frames (a full frame at the default MTU of
            1450) as fast as it can for a few seconds; the receiver counts what arrives.
            ours: sender -> switch (its own process) -> receiver;
            baseline: sender -> receiver directly.
rtt:        one frame back and forth between two ports (an echo process answers), median
            over many rounds. ours: both ways through the switch; baseline: direct.

Prints both values per case and the ratio ours/baseline.

    python benchmarks/private_switch.py [--seconds S] [--rounds N]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import statistics
import time

import benchlib
from pcocc.net.switch import Switch, bind_socket

FRAME = 1464
MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


def _udp(port: int = 0) -> socket.socket:
    s = bind_socket("127.0.0.1", port)
    return s


def _switch_main(a: tuple, b: tuple, ready) -> None:
    sock = bind_socket("127.0.0.1")
    sw = Switch(sock)
    sw.set_endpoints({a: "02:00:00:00:00:01", b: "02:00:00:00:00:02"})
    ready.put(sock.getsockname())
    sw.serve()


def _blast(src_port: int, dest: tuple, seconds: float) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", src_port))
    frame = MAC_B + MAC_A + b"\x08\x00" + bytes(FRAME - 14)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(64):
            try:
                s.sendto(frame, dest)
            except OSError:
                pass
    s.close()


def _echo(sock_port: int, dest: tuple, count: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", sock_port))
    s.settimeout(5)
    for _ in range(count):
        try:
            data, _ = s.recvfrom(2048)
        except TimeoutError:
            break
        s.sendto(MAC_A + MAC_B + data[12:], dest)
    s.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_switch(a: tuple, b: tuple) -> tuple[mp.Process, tuple]:
    ready: mp.Queue = mp.Queue()
    p = mp.Process(target=_switch_main, args=(a, b, ready), daemon=True)
    p.start()
    return p, ready.get(timeout=10)


def throughput(seconds: float, through_switch: bool) -> float:
    """Frames per second delivered."""
    recv = _udp()
    a = ("127.0.0.1", _free_port())
    b = recv.getsockname()
    switch = None
    dest = b
    if through_switch:
        switch, dest = _start_switch(a, b)
    sender = mp.Process(target=_blast, args=(a[1], dest, seconds))
    recv.settimeout(2)
    sender.start()
    count, first, last = 0, None, None
    try:
        while True:
            recv.recvfrom(2048)
            last = time.monotonic()
            first = first or last
            count += 1
    except TimeoutError:
        pass
    sender.join()
    if switch is not None:
        switch.terminate()
        switch.join()
    recv.close()
    return count / (last - first) if count > 1 else 0.0


def rtt(rounds: int, through_switch: bool) -> float:
    """Median round trip in microseconds."""
    me = _udp()
    echo_addr = ("127.0.0.1", _free_port())
    switch = None
    to_echo, to_me = echo_addr, me.getsockname()
    if through_switch:
        switch, sw = _start_switch(me.getsockname(), echo_addr)
        to_echo = to_me = sw
    echo = mp.Process(target=_echo, args=(echo_addr[1], to_me, rounds))
    echo.start()
    time.sleep(0.2)
    me.settimeout(2)
    frame = MAC_B + MAC_A + b"\x08\x00" + bytes(50)
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        me.sendto(frame, to_echo)
        me.recvfrom(2048)
        samples.append((time.perf_counter() - t0) * 1e6)
    echo.join()
    if switch is not None:
        switch.terminate()
        switch.join()
    me.close()
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None, help="default 3, quick 1")
    parser.add_argument("--rounds", type=int, default=None, help="default 2000, quick 500")
    benchlib.add_quick(parser)
    args = parser.parse_args()
    args.seconds = args.seconds or (1.0 if args.quick else 3.0)
    args.rounds = args.rounds or (500 if args.quick else 2000)
    benchlib.baseline("the same sender, receiver and echo processes exchanging the same frames"
                      " over UDP directly, without the switch in between")
    base = throughput(args.seconds, False)
    ours = throughput(args.seconds, True)
    mbit = 8 * FRAME / 1e6
    print(
        f"throughput  ours {ours:10.0f} frames/s ({ours * mbit:7.0f} Mbit/s)   "
        f"baseline {base:10.0f} frames/s ({base * mbit:7.0f} Mbit/s)   ratio {ours / base:.2f}"
    )
    benchlib.figure("switch throughput", ours, "frames/s")
    benchlib.figure("switch throughput / direct UDP", ours / base, "x")
    base = rtt(args.rounds, False)
    ours = rtt(args.rounds, True)
    print(f"rtt         ours {ours:10.1f} us   baseline {base:10.1f} us   ratio {ours / base:.2f}")
    benchlib.figure("switch round trip", ours, "us")
    benchlib.figure("switch round trip / direct UDP", ours / base, "x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
