"""Console logs of failed clusters: kept privately, bounded in number, read after the end."""

from __future__ import annotations

import os

import pytest

from pcocc.cluster import keptlogs
from pcocc.errors import NotFound


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state" / "pcocc" / "failed-clusters"


def test_a_kept_log_is_private_and_read_back(tmp_path, state):
    log = tmp_path / "console.log"
    log.write_text("Linux version 6.1\nkernel panic\n")
    kept = keptlogs.keep("42", 1, log)
    assert kept == state / "42" / "vm1-console.log"
    assert kept.stat().st_mode & 0o777 == 0o600
    assert (state / "42").stat().st_mode & 0o777 == 0o700
    log.unlink()  # the run directory goes with the cluster
    assert keptlogs.read_kept("42", "vm1") == "Linux version 6.1\nkernel panic\n"


def test_only_the_tail_of_a_huge_log_is_kept(tmp_path, state):
    log = tmp_path / "console.log"
    log.write_bytes(b"x" * (keptlogs.MAX_KEPT_BYTES + 10) + b"END")
    kept = keptlogs.keep("7", 0, log)
    data = kept.read_bytes()
    assert len(data) == keptlogs.MAX_KEPT_BYTES and data.endswith(b"END")


def test_the_oldest_clusters_go_first(tmp_path, state, monkeypatch):
    monkeypatch.setattr(keptlogs, "KEEP_CLUSTERS", 3)
    log = tmp_path / "console.log"
    log.write_text("boot\n")
    for n in range(5):
        keptlogs.keep(str(n), 0, log)
        os.utime(state / str(n), (1000 + n, 1000 + n))
    keptlogs.keep("5", 0, log)
    assert sorted(p.name for p in state.iterdir()) == ["3", "4", "5"]


def test_nothing_kept_is_a_clear_not_found(state):
    with pytest.raises(NotFound, match="cluster 9 is not running and no console log of vm0"):
        keptlogs.read_kept("9", "vm0")


def test_a_batch_id_cannot_leave_the_directory(tmp_path, state):
    log = tmp_path / "console.log"
    log.write_text("boot\n")
    assert keptlogs.keep("../../x", 0, log) is None
    assert not (tmp_path / "state" / "x").exists()


def test_a_linked_console_log_is_not_followed(tmp_path, state):
    secret = tmp_path / "secret"
    secret.write_text("not a console log")
    link = tmp_path / "console.log"
    link.symlink_to(secret)
    assert keptlogs.keep("42", 0, link) is None
