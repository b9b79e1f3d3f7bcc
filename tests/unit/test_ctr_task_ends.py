"""The exit status of a multi-node run: the first task that failed on its own."""

from __future__ import annotations

import json

import pytest

from pcocc.ctr import taskends
from pcocc.ctr.multinode import run_status
from pcocc.ctr.taskends import TaskEnd, first_failure, parse_end


def end(task, status, signalled=False, when=100.0, node=None):
    return TaskEnd(task, node or f"n{task + 1}", status, signalled, when)


def test_the_task_that_failed_on_its_own_wins_over_srun_status():
    said = []
    ends = [end(0, 143, True, 101.0), end(2, 3, False, 100.5), end(1, 143, True, 101.0)]
    assert run_status(143, ends, said.append) == 3
    assert said == ["task 2 on n3 exited with status 3; the other tasks were stopped "
                    "(2 reported)"]


def test_the_earliest_failure_is_reported_when_several_fail():
    ends = [end(1, 5, when=102.0), end(3, 4, when=101.0), end(0, 0, when=100.0)]
    assert first_failure(ends) == ends[1]
    assert run_status(1, ends, lambda m: None) == 4


def test_an_app_killed_by_a_signal_is_a_failure_of_its_own():
    # the app segfaulted (139): its task was not stopped by srun
    assert run_status(143, [end(0, 139), end(1, 143, True, 101.0)], lambda m: None) == 139


def test_success_and_a_run_stopped_as_a_whole_keep_the_launchers_status():
    said = []
    assert run_status(0, [end(0, 0), end(1, 0)], said.append) == 0
    # scancel: every task was signalled, none failed: the run was stopped, 128+15
    assert run_status(143, [end(0, 143, True), end(1, 143, True)], said.append) == 143
    # tasks that could not record anything: the launcher's status is all there is
    assert run_status(1, [], said.append) == 1
    assert said == []


def test_records_round_trip(tmp_path):
    request = tmp_path / "r.json"
    taskends.record_end(request, end(3, 7, when=5.5))
    assert taskends.read_ends(request) == [end(3, 7, when=5.5)]
    taskends.remove_ends(request)
    assert not taskends.ends_dir(request).exists()


GOOD = {"task": 1, "node": "n2", "status": 3, "signalled": False, "when": 1.5}


@pytest.mark.parametrize("bad", [
    "not json", "[]", json.dumps({**GOOD, "extra": 1}), json.dumps({"task": 1}),
    json.dumps({**GOOD, "task": -1}), json.dumps({**GOOD, "task": True}),
    json.dumps({**GOOD, "status": "3"}), json.dumps({**GOOD, "signalled": 1}),
    json.dumps({**GOOD, "node": "n2\nProxyCommand x"}), json.dumps({**GOOD, "node": 7}),
    json.dumps({**GOOD, "node": "n" * 300}), json.dumps({**GOOD, "when": "now"}),
])
def test_malformed_records_are_ignored(bad):
    assert parse_end(bad) is None
    assert parse_end(json.dumps(GOOD)) == TaskEnd(1, "n2", 3, False, 1.5)
