"""Pure parts of detached multi-node pods: the group record and its strict parser, how the
supervisor gathers the tasks' start reports, the listing, the prefixed logs, the stop step."""

from __future__ import annotations

import json
import os
import signal

import pytest

from pcocc.batch import slurm
from pcocc.ctr.detach import Reporter, parse_report
from pcocc.ctr.podgroup import TaskReporter, _collect_starts, group_logs
from pcocc.ctr.pods import AppRecord, PodRecord, PodStore, process_start_ticks
from pcocc.errors import Corrupt, PcoccError

M1 = "11111111-2222-4333-8444-555555555555"
M2 = "66666666-7777-4888-9999-aaaaaaaaaaaa"


@pytest.fixture
def store(tmp_path):
    return PodStore(tmp_path / "pods")


def group_record(store, **fields):
    rec = store.create([AppRecord("busy", "busy", ["true"])], job_id="42", detached=True)
    rec.pid, rec.pid_start = os.getpid(), process_start_ticks(os.getpid())  # we supervise
    for k, v in fields.items():
        setattr(rec, k, v)
    store.save(rec)
    return rec


def test_a_group_record_reads_back(store):
    rec = group_record(store, nodes=["n1", "n2"], members=[M1, M2], state="running")
    back = PodRecord.from_json(json.loads((store.pod_dir(rec.uuid) / "pod.json").read_text()),
                               "pod.json")
    assert (back.nodes, back.members, back.job_id) == (["n1", "n2"], [M1, M2], "42")


@pytest.mark.parametrize("fields", [
    {"nodes": ["n1", "-w/etc"], "members": [M1, M2]},   # an option, not a node name
    {"nodes": ["n1,n9"], "members": [M1]},               # two nodes in one
    {"nodes": ["n1", "n2"], "members": [M1]},            # a member missing
    {"nodes": ["n1"], "members": ["../other"]},
    {"nodes": ["n1"], "members": [M1], "job_id": "42 --uid=0"},
    {"nodes": ["n1"], "members": [M1], "job_id": ""},
    {"nodes": "n1", "members": [M1]},
    {"group": "not-a-uuid"},
    {"task_node": "n1 n2"},
])
def test_group_fields_are_parsed_strictly(store, fields):
    """They reach srun's argv at ``pod stop``: a record that was tampered with is refused."""
    rec = group_record(store)
    data = {**rec.to_json(), **fields}
    with pytest.raises(Corrupt, match="bad pod record"):
        PodRecord.from_json(data, "pod.json")


def test_srun_on_nodes_overlaps_the_running_step():
    assert slurm.srun_on_nodes_argv("42", ["n1", "n3"], ["pcocc", "x"], ["--mpi=none"]) == [
        "srun", "--jobid=42", "--overlap", "--nodelist=n1,n3", "--nodes=2", "--ntasks=2",
        "--ntasks-per-node=1", "--mpi=none", "--", "pcocc", "x",
    ]


class FakeLauncher:
    def __init__(self):
        self.signals: list[int] = []

    def poll(self):
        return None if not self.signals else -15

    def send_signal(self, sig):
        self.signals.append(sig)

    def wait(self, timeout=None):
        return -15


def reports(*msgs):
    return [json.dumps(m).encode() + b"\n" for m in msgs]


def read_all(fd):
    with os.fdopen(fd, "rb") as f:
        return [parse_report(line) for line in f]


def test_the_group_is_reported_started_once_every_task_is(store, tmp_path):
    group = group_record(store)
    r, w = os.pipe()
    launcher = FakeLauncher()
    _collect_starts(group, store, Reporter(w), reports(
        {"say": "importing busy", "node": "n2"},
        {"started": M1, "node": "n2"},
        {"started": M2, "node": "n1"},
    ), 2, launcher, tmp_path / "log")
    assert read_all(r) == [{"say": "n2: importing busy"}, {"started": group.uuid}]
    saved = store.load(group.uuid)
    assert (saved.state, saved.nodes, saved.members) == ("running", ["n2", "n1"], [M1, M2])
    assert launcher.signals == []


def test_the_first_error_fails_the_run_and_stops_the_tasks(store, tmp_path):
    group = group_record(store)
    r, w = os.pipe()
    launcher = FakeLauncher()
    with pytest.raises(PcoccError, match="on node n3: app busy failed"):
        _collect_starts(group, store, Reporter(w), reports(
            {"started": M1, "node": "n1"},
            {"error": "app busy failed to start", "hint": "see logs", "status": 4, "node": "n3"},
            {"error": "a later one", "node": "n4"},
        ), 4, launcher, tmp_path / "log")
    assert read_all(r) == [{"error": "on node n3: app busy failed to start",
                            "hint": "see logs", "status": 4}]
    assert launcher.signals == [signal.SIGTERM]
    assert store.load(group.uuid).state != "running"


def test_tasks_that_end_without_a_report_fail_the_run_with_the_launcher_message(
    store, tmp_path
):
    group = group_record(store)
    (tmp_path / "log").write_text("srun: error: Unable to create step\n")
    r, w = os.pipe()
    with pytest.raises(PcoccError, match="Unable to create step"):
        _collect_starts(group, store, Reporter(w), reports({"started": M1, "node": "n1"}), 2,
                        FakeLauncher(), tmp_path / "log")
    assert "Unable to create step" in read_all(r)[0]["error"]


def test_a_task_names_its_node_and_marks_its_pod_as_a_member(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    member = PodStore().create([AppRecord("busy", "busy", [])])
    r, w = os.pipe()
    rep = TaskReporter(w, "n3", M1)
    rep.say("slow")
    rep.started(member)
    assert read_all(r) == [{"say": "slow", "node": "n3"}, {"started": member.uuid, "node": "n3"}]
    saved = PodStore().load(member.uuid)
    assert (saved.group, saved.task_node) == (M1, "n3")


def test_group_logs_prefix_each_line_with_its_node(store):
    members = []
    for node, text in (("n1", b"a\nb\n"), ("n2", b"c")):
        m = store.create([AppRecord("busy", "busy", [])])
        store.log_path(m.uuid, "busy").write_bytes(text)
        members.append(m.uuid)
    group = group_record(store, nodes=["n1", "n2", "n3"],
                         members=[*members, "00000000-0000-4000-8000-000000000000"])
    out = group_logs(store, group, None).decode()
    assert out.splitlines() == ["n1: a", "n1: b", "n2: c",
                                "n3: (the pod's record is not readable here)"]


def test_pod_list_shows_a_group_once_with_its_nodes(store, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    store = PodStore()
    members = [store.create([AppRecord("busy", "busy", [])]) for _ in range(2)]
    group = group_record(store, nodes=["n1", "n2"], members=[m.uuid for m in members])
    for m, node in zip(members, ("n1", "n2")):
        m.group, m.task_node = group.uuid, node
        store.save(m)
    from pcocc.cli.main import run_cli

    assert run_cli(["pod", "list", "--full"]) == 0
    out = capsys.readouterr().out
    assert group.uuid in out and "n1,n2" in out
    assert not any(m.uuid in out for m in members)


def test_enter_refuses_a_multi_node_pod(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    group = group_record(PodStore(), nodes=["n1", "n2"], members=[M1, M2], state="running")
    from pcocc.cli.main import run_cli

    assert run_cli(["pod", "enter", group.uuid]) == 2
    assert "runs on 2 nodes" in capsys.readouterr().err
    assert run_cli(["pod", "status", group.uuid[:8]]) == 0
    out = capsys.readouterr().out
    assert "node=n1,n2" in out and f"member=n2:{M2}" in out


def test_removing_a_multi_node_pod_removes_its_members(store):
    members = [store.create([AppRecord("busy", "busy", [])]) for _ in range(2)]
    for m in members:
        m.state = "exited"
        store.save(m)
    group = group_record(store, nodes=["n1", "n2"], members=[m.uuid for m in members])
    from pcocc.ctr.podgroup import remove_pod

    with pytest.raises(PcoccError, match="is prepared"):  # its supervisor (we) still runs
        remove_pod(store, store.load(group.uuid))
    assert len(store.uuids()) == 3
    group.state = "exited"
    store.save(group)
    remove_pod(store, store.load(group.uuid))
    assert store.uuids() == []


def test_follow_reads_every_node_until_the_pod_ended(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    store = PodStore()
    members = []
    for text in (b"one\n", b"two\n"):
        m = store.create([AppRecord("busy", "busy", [])])
        store.log_path(m.uuid, "busy").write_bytes(text)
        members.append(m.uuid)
    group = group_record(store, nodes=["n1", "n2"], members=members, state="exited")
    from pcocc.cli.main import run_cli

    assert run_cli(["pod", "logs", "--follow", group.uuid]) == 0
    assert capsys.readouterr().out == "==> n1 <==\none\n==> n2 <==\ntwo\n"


@pytest.mark.parametrize("argv", [
    ["internal", "ctr-task", "--group", M1, "req.json"],
    ["internal", "ctr-detached", "--report-fd", "9", "--nodes", "2", "req.json"],
])
def test_a_member_or_group_that_ends_well_runs_nothing_else(argv, monkeypatch, pcocc_env):
    """(A member that ended 0 went on to run the request as a plain task, which failed
    once the request was gone, and srun stopped the other nodes' pods with it.)"""
    from pcocc.cli.main import run_cli
    from pcocc.ctr import detach, multinode, podgroup

    monkeypatch.setattr(podgroup, "run_member", lambda *a, **k: 0)
    monkeypatch.setattr(podgroup, "supervise_group", lambda *a, **k: 0)
    for mod, name in ((multinode, "run_task"), (detach, "supervise")):
        monkeypatch.setattr(mod, name, lambda *a, **k: pytest.fail("ran on"))
    assert run_cli(argv) == 0
