"""The strict qcow2 header check that lets a fetch store a downloaded qcow2 as is: every
field that could make it more than a plain base layer sends it to conversion."""

from __future__ import annotations

import struct

import pytest

from pcocc.repo.qcow2hdr import base_layer_problem, head_size

CLUSTER = 1 << 16


def header(version=3, backing=(0, 0), crypt=0, snapshots=0, incompat=0, autoclear=0,
           exts=(), cluster_bits=16) -> bytes:
    head = struct.pack(">4sIQIIQIIQQIIQ", b"QFI\xfb", version, backing[0], backing[1],
                       cluster_bits, 1 << 20, crypt, 1, 0x30000, 0x10000, 1, snapshots, 0)
    if version == 3:
        head += struct.pack(">QQQII", incompat, 0, autoclear, 4, 112) + bytes(8)
    for kind, data in exts:
        head += struct.pack(">II", kind, len(data)) + data + bytes(-len(data) % 8)
    head += bytes(8)  # end of extensions
    return head + bytes((1 << cluster_bits) - len(head))


@pytest.mark.parametrize("version", [2, 3])
def test_a_plain_base_layer_passes(version):
    assert base_layer_problem(header(version), 10 * CLUSTER) is None
    feature_table = (0x6803F857, bytes(48))
    assert base_layer_problem(header(exts=[feature_table]), 10 * CLUSTER) is None
    assert base_layer_problem(header(incompat=1 << 3), 10 * CLUSTER) is None


@pytest.mark.parametrize("kw, why", [
    ({"backing": (0x200, 10)}, "backing file"),
    ({"backing": (0, 10)}, "backing file"),
    ({"crypt": 2}, "encrypted"),
    ({"snapshots": 1}, "snapshots"),
    ({"incompat": 1}, "incompatible"),          # dirty
    ({"incompat": 2}, "incompatible"),          # corrupt
    ({"incompat": 4}, "incompatible"),          # external data file
    ({"autoclear": 2}, "autoclear"),            # raw external data
    ({"version": 4}, "version"),
    ({"cluster_bits": 30}, "cluster_bits"),
    ({"exts": [(0x44415441, b"/etc/shadow")]}, "external data file name"),
    ({"exts": [(0xE2792ACA, b"qcow2")]}, "backing format"),
    ({"exts": [(0x0537BE77, bytes(16))]}, "encryption"),
    ({"exts": [(0x12345678, b"x")]}, "unknown header extension"),
])
def test_anything_more_is_converted(kw, why):
    problem = base_layer_problem(header(**kw), 10 * CLUSTER)
    assert problem is not None and why in problem


def test_truncated_or_foreign_data():
    good = header()
    assert "not a qcow2" in base_layer_problem(b"\0" * 512, 512)
    assert "not a qcow2" in base_layer_problem(good[:40], 40)
    assert "first cluster" in base_layer_problem(good[:4096], 10 * CLUSTER)
    endless = good[:112] + struct.pack(">II", 0x6803F857, 1 << 20)
    assert "past the first cluster" in base_layer_problem(
        endless + bytes(CLUSTER - len(endless)), 10 * CLUSTER)
    assert head_size(good) == CLUSTER and head_size(b"raw data") == 0
