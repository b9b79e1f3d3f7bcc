"""The copy tree of a cold ``pcocc run -N`` (pcocc/ctr/fanout.py), the layer stream that
verifies what arrives (pcocc/repo/cachelayers.py), LRU eviction that never removes an entry
in use, and the cache settings (repos.yaml ``cache.max-size``, ``cache.shared``)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import threading
import time

import pytest

from pcocc.config import load_config
from pcocc import errors
from pcocc.ctr import fanout, fanoutnet
from pcocc.errors import Busy, Corrupt, NotFound, TimedOut
from pcocc.repo.cache import ContainerCache
from pcocc.repo.cachelayers import LAYERS_DIR, layer_file, receive_layers, send_layers
from pcocc.repo.model import OciImage

# --- the tree -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, {0: []}),
        (2, {0: [1], 1: []}),
        (3, {0: [1, 2], 1: [], 2: []}),
        (4, {0: [1, 2], 1: [3], 2: [], 3: []}),
        (7, {0: [1, 2], 1: [3, 4], 2: [5, 6], 3: [], 4: [], 5: [], 6: []}),
    ],
)
def test_plan_small(n, expected):
    assert fanout.plan(n) == expected


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 17, 64, 1024])
def test_plan_reaches_every_node_once_with_at_most_two_sends(n):
    plan = fanout.plan(n)
    received = [r for rs in plan.values() for r in rs]
    assert sorted(received) == list(range(1, n))  # each node but 0 gets it exactly once
    assert all(len(rs) <= 2 for rs in plan.values())
    for i in range(1, n):
        assert i in plan[fanout.parent_index(i)]
        assert fanout.parent_index(i) < i  # a sender is served before it sends
    assert fanout.parent_index(0) is None
    assert max(fanout.hops(i) for i in range(n)) == (n.bit_length() - 1)


def test_from_env_only_for_node_local_caches_of_multi_node_steps():
    env = {"SLURM_JOB_ID": "12", "SLURM_NODEID": "2", "SLURM_STEP_NUM_NODES": "4",
           "SLURM_STEP_NODELIST": "n[1-4]"}  # fmt: skip
    fan = fanout.from_env(env)
    assert (fan.job_id, fan.index, fan.count, fan.nodelist) == ("12", 2, 4, "n[1-4]")
    assert fanout.from_env(env, shared=True) is None
    assert fanout.from_env({**env, "SLURM_STEP_NUM_NODES": "1"}) is None
    assert fanout.from_env({k: v for k, v in env.items() if k != "SLURM_JOB_ID"}) is None
    assert fanout.from_env({}) is None


def test_send_argv_targets_one_node_of_the_job_with_the_layers_in_order():
    fan = fanout.Fanout("12", 3, 4, "n[1-4]", ["n1", "n2", "n3", "n4"])
    image = _image([b"a"])
    argv = fanout.send_argv(fan, "n2", "dir", image, [image.manifest["layers"][0]["digest"]])
    assert argv[:7] == ["srun", "--jobid=12", "--overlap", "--nodelist=n2", "--nodes=1", "--ntasks=1",
                        "--ntasks-per-node=1"]  # fmt: skip
    assert argv[-4:] == ["cache-send", "dir", image.manifest_digest,
                         image.manifest["layers"][0]["digest"]]  # fmt: skip


# --- the layer stream -----------------------------------------------------------------------


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _image(blobs: list[bytes]) -> OciImage:
    layers = [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": _digest(b),
               "size": len(b)} for b in blobs]  # fmt: skip
    manifest = {"schemaVersion": 2, "layers": layers}
    return OciImage(_digest(json.dumps(manifest).encode()), manifest, {})


def test_received_layers_are_verified(tmp_path):
    blobs = [b"first layer", b"second layer"]
    image = _image(blobs)
    receive_layers(io.BytesIO(b"".join(blobs)), image, tmp_path / "ok", "test")
    for b in blobs:
        assert layer_file(tmp_path / "ok", _digest(b)).read_bytes() == b
    # same sizes, one byte changed: refused, and the bad blob is not kept
    with pytest.raises(Corrupt, match="another digest"):
        receive_layers(io.BytesIO(b"first layer" + b"Second layer"), image, tmp_path / "bad", "t")
    assert not layer_file(tmp_path / "bad", _digest(blobs[1])).exists()
    with pytest.raises(Corrupt, match="early"):
        receive_layers(io.BytesIO(b"first layer"), image, tmp_path / "short", "t")
    with pytest.raises(Corrupt, match="more data"):
        receive_layers(io.BytesIO(b"".join(blobs) + b"x"), image, tmp_path / "long", "t")


def test_sent_stream_is_what_the_receiver_reads(tmp_path):
    blobs = [b"one", b"two"]
    image = _image(blobs)
    kept = tmp_path / "kept"
    kept.mkdir()
    for b in blobs:
        layer_file(kept, _digest(b)).write_bytes(b)
    out = io.BytesIO()
    assert send_layers([tmp_path / 'none', kept], [_digest(b) for b in blobs], out) == 6
    receive_layers(io.BytesIO(out.getvalue()), image, tmp_path / "got", "test")


def test_serve_waits_for_the_entry_and_refuses_one_without_layers(tmp_path):
    cache = ContainerCache(tmp_path / "cache")
    image = _image([b"x"])
    offer = f"127.0.0.1 9 {'0' * 64}"
    with pytest.raises(TimedOut):
        fanout.serve(cache, "dir", image.manifest_digest, [_digest(b"x")], offer, 0.1)
    entry = _fake_entry(cache, image.manifest_digest, 10, time.time())
    with pytest.raises(NotFound, match="keeps no layer"):
        fanout.serve(cache, "dir", image.manifest_digest, [_digest(b"x")], offer, 1)
    with pytest.raises(Corrupt, match="offer"):
        fanout.serve(cache, "dir", image.manifest_digest, [_digest(b"x")], "1.2.3.4 99", 1)


def _served(tmp_path, blobs: list[bytes]):
    """A cache entry keeping ``blobs`` as layers, and a listener waiting for them."""
    cache = ContainerCache(tmp_path / "cache")
    image = _image(blobs)
    entry = _fake_entry(cache, image.manifest_digest, 10, time.time())
    (entry / LAYERS_DIR).mkdir()
    for b in blobs:
        layer_file(entry / LAYERS_DIR, _digest(b)).write_bytes(b)
    return cache, image, fanoutnet.Listener("127.0.0.1")


def test_layers_go_over_the_token_connection_and_verify(tmp_path):
    blobs = [b"one", b"two"]
    cache, image, listener = _served(tmp_path, blobs)
    sender = threading.Thread(target=fanout.serve, args=(
        cache, "dir", image.manifest_digest, [_digest(b) for b in blobs],
        listener.offer().decode()))  # fmt: skip
    sender.start()
    with listener.accept(lambda: None, 10) as conn, conn.makefile("rb") as stream:
        receive_layers(stream, image, tmp_path / "got", "test")
    sender.join()
    listener.close()
    assert layer_file(tmp_path / "got", _digest(b"two")).read_bytes() == b"two"


def test_a_connection_without_the_token_is_dropped(tmp_path):
    cache, image, listener = _served(tmp_path, [b"one"])
    intruder = socket.create_connection(("127.0.0.1", listener.port))
    intruder.sendall(b"f" * 64 + b"one")  # a wrong token, then data
    sender = threading.Thread(target=fanout.serve, args=(
        cache, "dir", image.manifest_digest, [_digest(b"one")], listener.offer().decode()))
    sender.start()
    with listener.accept(lambda: None, 10) as conn, conn.makefile("rb") as stream:
        receive_layers(stream, image, tmp_path / "got", "test")  # the sender's, not the intruder's
    sender.join()
    try:  # closed on the intruder (reset: its data was never read)
        assert intruder.recv(1) == b""
    except ConnectionResetError:
        pass
    intruder.close()
    with pytest.raises(errors.PcoccError, match="without connecting"):
        listener.accept(lambda: 3, 10)
    listener.close()


# --- LRU eviction and leases ----------------------------------------------------------------


def _fake_entry(cache: ContainerCache, digest: str, size: int, used: float):
    """A complete entry as prepare() leaves it (no unpacking: tests/unit starts nothing)."""
    cache._init()
    entry = cache.entries_dir / f"dir-{digest.split(':')[1]}"
    (entry / "rootfs").mkdir(parents=True)
    (entry / "meta.json").write_text(json.dumps(
        {"digest": digest, "mode": "dir", "size_bytes": size, "created": used}))  # fmt: skip
    (entry / "last-use").touch()
    os.utime(entry / "last-use", (used, used))
    return entry


def test_eviction_is_lru_and_skips_an_entry_in_use(tmp_path):
    cache = ContainerCache(tmp_path / "cache", max_size_bytes=250)
    now = time.time()
    digests = [_digest(bytes([i])) for i in range(4)]
    entries = [_fake_entry(cache, d, 100, now - 100 + i) for i, d in enumerate(digests)]
    with cache.lease(entries[0].name):  # the oldest runs a container
        removed = cache.evict()
        # 400 bytes > 250: the oldest is held, so the next two least recent go
        assert [e.digest for e in removed] == digests[1:3]
        assert entries[0].is_dir() and entries[3].is_dir()
        with pytest.raises(Busy):
            cache.delete(digests[0])
        assert entries[0].is_dir()
    cache.max_size_bytes = 150  # released: the oldest is evictable again
    assert [e.digest for e in cache.evict()] == [digests[0]]


def test_prepare_holds_the_lease_for_as_long_as_asked(tmp_path):
    cache = ContainerCache(tmp_path / "cache", max_size_bytes=1)
    image = _image([b"x"])
    entry = _fake_entry(cache, image.manifest_digest, 100, time.time())
    with contextlib.ExitStack() as pod:
        payload = cache.prepare(image, lambda d: tmp_path / "unused", lease=pod)
        assert payload == entry / "rootfs"
        assert cache.evict() == [] and entry.is_dir()
    assert [e.digest for e in cache.evict()] == [image.manifest_digest]


def test_gc_keeps_the_lock_files_of_an_entry_in_use(tmp_path):
    cache = ContainerCache(tmp_path / "cache")
    cache._init()
    key = "dir-" + "a" * 64  # being received: no entry yet, its lease held
    with cache.lease(key):
        cache.gc()
        assert (cache.locks_dir / f"{key}.use").exists()
    cache.gc()
    assert not (cache.locks_dir / f"{key}.use").exists()


# --- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size", "shared"),
    [
        ("", 20 * 2**30, False),  # no cache section: the defaults
        ("cache: {path: /c}\n", 20 * 2**30, False),
        ("cache: {path: /c, max-size: 5G, shared: true}\n", 5 * 2**30, True),
        ("cache: {path: /c, max-size: 0}\n", None, False),  # 0: no limit
    ],
)
def test_cache_settings(pcocc_env, text, size, shared):
    (pcocc_env["system"] / "repos.yaml").write_text(text)
    cfg = load_config(pcocc_env["system"], pcocc_env["user"])
    assert (cfg.cache.max_size_bytes, cfg.cache.shared) == (size, shared)
    assert ContainerCache.from_config(cfg.cache).max_size_bytes == size


# --- prepare with layers from another node --------------------------------------------------


def _tar_layer(files: dict[str, bytes]) -> bytes:
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _repo(tmp_path, blobs: list[bytes]):
    """Blobs in a directory, and a blob_path that records every blob asked for."""
    store = tmp_path / "repo"
    store.mkdir()
    for b in blobs:
        (store / _digest(b).split(":")[1]).write_bytes(b)
    asked: list[str] = []

    def blob_path(digest: str):
        asked.append(digest)
        return store / digest.split(":")[1]

    return blob_path, asked


def test_received_layers_build_the_entry_without_the_repository(tmp_path):
    layer = _tar_layer({"hello": b"from the parent\n"})
    image = _image([layer])
    blob_path, asked = _repo(tmp_path, [layer])
    cache = ContainerCache(tmp_path / "cache")

    def fetch(dest):
        receive_layers(io.BytesIO(layer), image, dest, "test")
        return True

    rootfs = cache.prepare(image, blob_path, fetch=fetch)
    assert (rootfs / "hello").read_bytes() == b"from the parent\n"
    assert asked == []  # the repository was not read
    kept = rootfs.parent / LAYERS_DIR
    assert layer_file(kept, _digest(layer)).read_bytes() == layer  # it can serve others
    assert not list(cache.tmp_dir.iterdir())


def test_a_node_whose_parent_cannot_send_reads_the_repository(tmp_path):
    layer = _tar_layer({"hello": b"from the repository\n"})
    image = _image([layer])
    blob_path, asked = _repo(tmp_path, [layer])
    cache = ContainerCache(tmp_path / "cache")
    rootfs = cache.prepare(image, blob_path, fetch=lambda dest: False)
    assert (rootfs / "hello").read_bytes() == b"from the repository\n"
    assert asked == [_digest(layer)]
    assert layer_file(rootfs.parent / LAYERS_DIR, _digest(layer)).read_bytes() == layer
    # an entry already there: no fetch, no read
    asked.clear()
    assert cache.prepare(image, blob_path, fetch=lambda dest: pytest.fail("fetched")) == rootfs
    assert asked == []


def test_layers_are_published_before_the_unpack_then_served_from_the_entry(tmp_path, monkeypatch):
    from pcocc.repo import unpack

    layer = _tar_layer({"f": b"data\n"})
    image = _image([layer])
    blob_path, _asked = _repo(tmp_path, [layer])
    cache = ContainerCache(tmp_path / "cache")
    key = f"dir-{image.manifest_digest.split(':')[1]}"
    seen = []
    real = unpack.unpack_image

    def unpack_and_look(*args):
        out = io.BytesIO()  # a sender can serve the layers already
        seen.append(send_layers([cache.staged_layers(key)], [_digest(layer)], out))
        return real(*args)

    monkeypatch.setattr(unpack, "unpack_image", unpack_and_look)
    cache.prepare(image, blob_path, keep_layers=True)
    assert seen == [len(layer)]
    assert not cache.staged_layers(key).exists()  # gone once the entry serves
    out = io.BytesIO()
    offer_ok = fanoutnet.Listener("127.0.0.1")
    sender = threading.Thread(target=fanout.serve, args=(
        cache, "dir", image.manifest_digest, [_digest(layer)], offer_ok.offer().decode()))
    sender.start()
    with offer_ok.accept(lambda: None, 10) as conn, conn.makefile("rb") as stream:
        out.write(stream.read())
    sender.join()
    offer_ok.close()
    assert out.getvalue() == layer


def test_nodes_sharing_a_cache_never_wait_for_each_others_reception(tmp_path):
    # n4 receives from a node that waits for n1's layers; n1 must not wait for n4's pull
    layer = _tar_layer({"f": b"shared\n"})
    image = _image([layer])
    blob_path, _asked = _repo(tmp_path, [layer])
    cache = ContainerCache(tmp_path / "cache")
    key = f"dir-{image.manifest_digest.split(':')[1]}"
    pulling = threading.Event()
    got = []

    def fetch_from_n1(dest):  # as n1's sender does: wait for its layers, then copy them
        pulling.set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for d in (cache.staged_layers(key), cache.entries_dir / key / LAYERS_DIR):
                if layer_file(d, _digest(layer)).is_file():
                    out = io.BytesIO()
                    send_layers([d], [_digest(layer)], out)
                    receive_layers(io.BytesIO(out.getvalue()), image, dest, "test")
                    got.append(True)
                    return True
            time.sleep(0.02)
        return False

    n4 = threading.Thread(target=cache.prepare, args=(image, blob_path),
                          kwargs={"fetch": fetch_from_n1, "node": "n4"})
    n4.start()
    assert pulling.wait(10)
    cache.prepare(image, blob_path, fetch=lambda dest: False, node="n1")  # node 0
    n4.join()
    assert got == [True]
