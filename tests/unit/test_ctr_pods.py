"""Pod records: atomic records, UUID prefixes, dead supervisors, gc grace periods."""

from __future__ import annotations

import json
import os

import pytest

from pcocc.ctr.pods import AppRecord, PodStore, parse_duration, process_start_ticks
from pcocc.errors import Corrupt, NotFound, PcoccError, UsageError


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir(mode=0o700)
    return PodStore(tmp_path / "pods")


def _exited(store, when, name="a"):
    rec = store.create([AppRecord(name, "img", [])], runtime="crun")
    rec.state, rec.exited = "exited", when
    store.save(rec)
    return rec


def test_create_save_load_roundtrip(store):
    rec = store.create(
        [AppRecord("a", "img", ["x"]), AppRecord("b", "img2", [])], runtime="runc", hostname="h"
    )
    loaded = store.load(rec.uuid)
    assert loaded == rec
    assert store.app_dir(rec.uuid, "b").is_dir()
    mode = (store.pod_dir(rec.uuid) / "pod.json").stat().st_mode & 0o777
    assert mode == 0o600


def test_running_pod_of_a_live_process_stays_running(store):
    rec = store.create([AppRecord("a", "img", [])])
    rec.state, rec.pid, rec.pid_start = "running", os.getpid(), process_start_ticks(os.getpid())
    store.save(rec)
    assert store.load(rec.uuid).state == "running"


def test_running_pod_whose_supervisor_died_shows_exited(store):
    rec = store.create([AppRecord("a", "img", [])])
    # same pid, different start time: the pid was reused by another process
    rec.state, rec.pid, rec.pid_start = "running", os.getpid(), 1
    rec.started = 123.0
    store.save(rec)
    loaded = store.load(rec.uuid)
    assert loaded.state == "exited" and loaded.exited == 123.0
    rec.pid_start, rec.boot_id = process_start_ticks(os.getpid()), "another-boot"
    store.save(rec)
    assert store.load(rec.uuid).state == "exited"


def test_resolve_by_prefix(store):
    a = store.create([AppRecord("a", "img", [])])
    assert store.resolve(a.uuid[:6]).uuid == a.uuid
    with pytest.raises(NotFound, match="no pod with UUID 'zzz'"):
        store.resolve("zzz")
    # 17 pods: two of them share their first hex digit
    firsts = [store.create([AppRecord("a", "img", [])]).uuid[0] for _ in range(16)] + [a.uuid[0]]
    shared = next(c for c in firsts if firsts.count(c) > 1)
    with pytest.raises(UsageError, match="ambiguous"):
        store.resolve(shared)


def test_gc_moves_to_garbage_then_removes_after_grace(store):
    old = _exited(store, 1000.0)
    young = _exited(store, 1900.0)
    assert store.gc(600, now=2000.0) == [("garbage", old.uuid)]
    assert store.load(old.uuid).state == "garbage"
    assert store.load(young.uuid).state == "exited"
    assert store.gc(600, now=2100.0) == []  # garbage for only 100 s
    assert sorted(store.gc(600, now=2700.0)) == sorted(
        [("removed", old.uuid), ("garbage", young.uuid)]
    )
    assert store.uuids() == [young.uuid]


def test_gc_with_zero_grace(store):
    rec = _exited(store, 1000.0)
    assert store.gc(0, now=1000.0) == [("garbage", rec.uuid)]
    assert store.gc(0, now=1000.0) == [("removed", rec.uuid)]
    assert not store.pod_dir(rec.uuid).exists()


def test_running_pods_are_never_collected_or_removed(store):
    rec = store.create([AppRecord("a", "img", [])])
    rec.state, rec.pid, rec.pid_start = "running", os.getpid(), process_start_ticks(os.getpid())
    store.save(rec)
    assert store.gc(0, now=1e12) == []
    with pytest.raises(PcoccError, match="is running"):
        store.remove(store.load(rec.uuid))


def test_corrupt_record_is_reported_and_skipped_by_list(store):
    rec = store.create([AppRecord("a", "img", [])])
    (store.pod_dir(rec.uuid) / "pod.json").write_text(json.dumps({"version": 99}))
    with pytest.raises(Corrupt, match="not a pod record"):
        store.load(rec.uuid)
    assert list(store.list()) == []


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("0s", 0),
        ("30m", 1800),
        ("30m0s", 1800),
        ("1h30m", 5400),
        ("90", 90),
        ("500ms", 0.5),
        ("2d", 172800),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "m", "10x", "1h-3m", "ten"])
def test_parse_duration_rejects(bad):
    with pytest.raises(UsageError, match="invalid duration"):
        parse_duration(bad)


def test_gc_removes_directories_of_runs_that_never_recorded(store):
    rec = store.create([AppRecord("a", "img", [])], save=False)
    d = store.pod_dir(rec.uuid)
    assert store.gc(0, now=d.stat().st_mtime + 1) == []  # maybe still starting
    assert d.exists()
    store.gc(0, now=d.stat().st_mtime + 61)
    assert not d.exists()


def test_ambiguous_prefix_lists_the_candidates(store):
    recs = [store.create([AppRecord("a", "img", [])]) for _ in range(17)]
    first = [r.uuid[0] for r in recs]
    shared = next(c for c in first if first.count(c) > 1)
    candidates = sorted(r.uuid for r in recs if r.uuid.startswith(shared))
    with pytest.raises(UsageError) as err:
        store.resolve(shared)
    for uuid in candidates:
        assert uuid in str(err.value)
    assert err.value.exit_status == 2


def test_resolve_all_fails_before_any_pod_is_returned(store):
    a = store.create([AppRecord("a", "img", [])])
    assert [r.uuid for r in store.resolve_all([a.uuid[:8]])] == [a.uuid]
    with pytest.raises(NotFound, match="no pod with UUID 'nope'"):
        store.resolve_all([a.uuid[:8], "nope"])
    with pytest.raises(UsageError, match="twice"):
        store.resolve_all([a.uuid[:8], a.uuid])
