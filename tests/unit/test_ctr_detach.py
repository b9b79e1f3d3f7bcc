"""Pure parts of detached pods: the supervisor's reports, following logs, stop checks."""

from __future__ import annotations

import os

import pytest

from pcocc.ctr.detach import Reporter, parse_report
from pcocc.ctr.podctl import check_stoppable, follow_logs
from pcocc.ctr.pods import AppRecord, PodStore, process_start_ticks
from pcocc.errors import PcoccError, UsageError


@pytest.fixture
def store(tmp_path):
    return PodStore(tmp_path / "pods")


def test_reporter_reports_started_once_then_closes(tmp_path):
    r, w = os.pipe()
    rep = Reporter(w)
    rep.say("importing")
    rec = PodStore(tmp_path / "p").create([AppRecord("a", "img", [])])
    rep.started(rec)
    assert rep.done
    rep.error(PcoccError("too late"))  # ignored: the command has its answer
    with os.fdopen(r, "rb") as f:
        lines = [parse_report(ln) for ln in f]
    assert lines == [{"say": "importing"}, {"started": rec.uuid}]


def test_reporter_error_carries_hint_and_status():
    r, w = os.pipe()
    Reporter(w).error(UsageError("bad volume", hint="fix it"))
    with os.fdopen(r, "rb") as f:
        assert parse_report(f.readline()) == {"error": "bad volume", "hint": "fix it", "status": 2}


@pytest.mark.parametrize("line", [b"not json\n", b"[1]\n"])
def test_an_unreadable_report_is_an_error(line):
    assert "unreadable report" in parse_report(line)["error"]


def test_stopping_a_pod_that_does_not_run_is_refused(store):
    rec = store.create([AppRecord("a", "img", [])])
    rec.state = "exited"
    with pytest.raises(PcoccError, match="is exited, not running: nothing to stop"):
        check_stoppable(rec)
    rec.state, rec.node = "running", "elsewhere"
    with pytest.raises(PcoccError, match="runs on node elsewhere"):
        check_stoppable(rec)


def test_follow_copies_new_data_until_the_pod_ended_and_the_logs_are_read(store):
    rec = store.create([AppRecord("a", "img", []), AppRecord("b", "img", [])])
    rec.state = "running"
    rec.pid, rec.pid_start = os.getpid(), process_start_ticks(os.getpid())
    store.save(rec)
    log_a, log_b = store.log_path(rec.uuid, "a"), store.log_path(rec.uuid, "b")
    log_a.write_bytes(b"a1\n")
    got: list[tuple[str, bytes]] = []
    # the "app" writes between polls; the pod ends after its last line
    steps = [
        lambda: log_b.write_bytes(b"b1\n"),
        lambda: log_a.open("ab").write(b"a2\n"),
        lambda: _end(store, rec.uuid, log_b),
    ]

    def sleep(_s):
        if not steps:
            pytest.fail("still following after the pod ended")
        steps.pop(0)()

    follow_logs(store, rec, ["a", "b"], lambda n, d: got.append((n, d)), sleep=sleep)
    assert got == [("a", b"a1\n"), ("b", b"b1\n"), ("a", b"a2\n"), ("b", b"last\n")]


def _end(store, uuid, log):
    log.open("ab").write(b"last\n")  # written just before the pod is recorded exited
    rec = store.load(uuid)
    rec.state = "exited"
    store.save(rec)


def test_a_start_nobody_waits_for_any_more_stops_the_pod(tmp_path):
    """The command was interrupted (Ctrl-C) before the apps ran: nobody got the UUID, so
    the supervisor must not leave the pod running unknown (start_pod stops it on the error)."""
    r, w = os.pipe()
    os.close(r)
    rec = PodStore(tmp_path / "p").create([AppRecord("a", "img", [])])
    with pytest.raises(PcoccError, match="stopping the pod"):
        Reporter(w).started(rec)


@pytest.mark.parametrize(("opts", "error"), [
    # a detached multi-node pod lives in an allocation: it cannot make one for itself
    (["-N", "2"], "--detach must run inside an allocation"),
    (["-i"], "--detach and --interactive cannot go together"),
])
def test_detach_refuses_what_it_cannot_do(opts, error, capsys, pcocc_env):
    from pcocc.cli.main import run_cli

    assert run_cli(["run", "--detach", *opts, "img"]) == 2
    assert error in capsys.readouterr().err
