"""The QMP steps of a disk copy (pcocc.vm.blockjobs) and the guest freeze around its start
(pcocc.vm.fsfreeze), against fakes that record what they were asked."""

from __future__ import annotations

import pytest

from pcocc.errors import PcoccError, ServiceUnavailable
from pcocc.vm import blockjobs, fsfreeze
from pcocc.vm.agent import AgentError
from pcocc.vm.blockjobs import BlockJobError, parse_disk, parse_jobs


class FakeQmp:
    """Answers the commands of a backup; the job runs for ``polls`` queries, then ends."""

    def __init__(self, *, polls: int = 2, error: str | None = None,
                 refuse: str | None = None, interrupt_at: int | None = None):
        self.calls: list[tuple[str, dict | None]] = []
        self.polls, self.error, self.refuse = polls, error, refuse
        self.interrupt_at = interrupt_at
        self.queries = 0
        self.cancelled = False
        self.job: str | None = None

    def execute(self, command, arguments=None, *, timeout_s=None):
        self.calls.append((command, arguments))
        if command == self.refuse:
            raise PcoccError(f"QMP {command} failed: GenericError: no")
        if command == "blockdev-backup":
            self.job = arguments["job-id"]
        if command == "job-cancel":
            self.cancelled = True
        if command == "query-jobs":
            self.queries += 1
            if self.queries == self.interrupt_at:
                raise KeyboardInterrupt
            done = self.cancelled or self.queries > self.polls
            entry = {"id": self.job, "type": "backup",
                     "status": "concluded" if done else "running",
                     "current-progress": min(self.queries, self.polls) * 10,
                     "total-progress": self.polls * 10}
            if done and self.error:
                entry["error"] = self.error
            return [entry]
        return {}

    def names(self) -> list[str]:
        return [c for c, _ in self.calls]


class Quiesce:
    """A quiesce context that records when it was entered and left."""

    def __init__(self, qmp: FakeQmp):
        self.qmp, self.log = qmp, []

    def __enter__(self):
        self.log.append(("enter", len(self.qmp.calls)))

    def __exit__(self, *exc):
        self.log.append(("exit", len(self.qmp.calls)))


def run_backup(qmp: FakeQmp, tmp_path, **kwargs):
    seen = []
    blockjobs.backup(qmp, "disk0", tmp_path / "t.qcow2", sync="top", sleep=lambda _s: None,
                     progress=lambda d, t: seen.append((d, t)), **kwargs)
    return seen


def test_backup_adds_the_target_copies_and_always_removes_job_and_node(tmp_path):
    qmp = FakeQmp()
    quiesce = Quiesce(qmp)
    seen = run_backup(qmp, tmp_path, quiesce=quiesce)
    assert qmp.names() == ["blockdev-add", "blockdev-backup", "query-jobs", "query-jobs",
                           "query-jobs", "job-dismiss", "blockdev-del"]
    add = qmp.calls[0][1]
    assert add["backing"] is None and add["file"]["filename"] == str(tmp_path / "t.qcow2")
    backup = qmp.calls[1][1]
    assert backup["device"] == "disk0" and backup["target"] == add["node-name"]
    assert backup["sync"] == "top" and backup["auto-dismiss"] is False
    # frozen only around the start of the job: entered after the add, left after the backup
    assert quiesce.log == [("enter", 1), ("exit", 2)]
    assert seen[-1] == (20, 20)
    assert qmp.calls[-1][1] == {"node-name": add["node-name"]}


def test_a_failed_job_is_an_error_and_is_cleaned_up(tmp_path):
    qmp = FakeQmp(error="No space left on device")
    with pytest.raises(BlockJobError, match="No space left on device"):
        run_backup(qmp, tmp_path)
    assert qmp.names()[-2:] == ["job-dismiss", "blockdev-del"]
    assert "job-cancel" not in qmp.names()


def test_ctrl_c_cancels_the_running_job(tmp_path):
    qmp = FakeQmp(polls=5, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        run_backup(qmp, tmp_path)
    names = qmp.names()
    assert names.index("job-cancel") < names.index("job-dismiss") < names.index("blockdev-del")


def test_a_refused_backup_thaws_and_removes_the_node(tmp_path):
    qmp = FakeQmp(refuse="blockdev-backup")
    quiesce = Quiesce(qmp)
    with pytest.raises(PcoccError, match="blockdev-backup"):
        run_backup(qmp, tmp_path, quiesce=quiesce)
    assert [e for e, _ in quiesce.log] == ["enter", "exit"]
    assert qmp.names()[-1] == "blockdev-del"
    assert "job-dismiss" not in qmp.names()


def test_unknown_sync_mode_is_refused(tmp_path):
    with pytest.raises(ValueError):
        blockjobs.backup(FakeQmp(), "disk0", tmp_path / "t", sync="incremental")


def test_parse_jobs_is_strict():
    jobs = parse_jobs([{"id": "j", "status": "running", "current-progress": 1,
                        "total-progress": 4, "type": "backup"}])
    assert jobs["j"].done_bytes == 1 and not jobs["j"].is_concluded
    for bad in ({"a": 1}, [{"id": "j", "status": "running"}],
                [{"id": 3, "status": "x", "current-progress": 0, "total-progress": 0}]):
        with pytest.raises(BlockJobError):
            parse_jobs(bad)


def test_parse_disk_finds_the_backing_file():
    reply = [{"device": "seed"},
             {"device": "disk0", "inserted": {"image": {
                 "filename": "disk0.qcow2", "virtual-size": 4194304,
                 "backing-image": {"filename": "/r/data/ab/ab12"}}}}]
    disk = parse_disk(reply, "disk0")
    assert (disk.filename, disk.virtual_size, disk.backing_filename) == (
        "disk0.qcow2", 4194304, "/r/data/ab/ab12")
    with pytest.raises(BlockJobError, match="no disk 'disk1'"):
        parse_disk(reply, "disk1")
    with pytest.raises(BlockJobError):
        parse_disk([{"device": "disk0", "inserted": {"image": {"filename": 3}}}], "disk0")


class FakeAgent:
    def __init__(self, fail: set[str] = frozenset(), thaw_failures: int = 0):
        self.calls: list[str] = []
        self.fail, self.thaw_failures = fail, thaw_failures

    def execute(self, command, arguments=None, *, timeout_s=5.0):
        self.calls.append(command)
        if command in self.fail:
            raise ServiceUnavailable(f"{command} timed out")
        if command == "guest-fsfreeze-thaw" and self.thaw_failures:
            self.thaw_failures -= 1
            raise ServiceUnavailable("thaw timed out")
        return 1


def test_frozen_thaws_after_the_block_even_on_ctrl_c():
    agent = FakeAgent()
    with fsfreeze.frozen(agent, "vm0", sleep=lambda _s: None):
        assert agent.calls == ["guest-fsfreeze-freeze"]
    assert agent.calls[-1] == "guest-fsfreeze-thaw"
    agent = FakeAgent()
    with pytest.raises(KeyboardInterrupt), fsfreeze.frozen(agent, "vm0", sleep=lambda _s: None):
        raise KeyboardInterrupt
    assert agent.calls == ["guest-fsfreeze-freeze", "guest-fsfreeze-thaw"]


def test_a_failed_freeze_is_reported_and_thawed():
    agent = FakeAgent(fail={"guest-fsfreeze-freeze"})
    with pytest.raises(fsfreeze.FreezeError, match="cannot freeze .* vm0") as exc:
        with fsfreeze.frozen(agent, "vm0", sleep=lambda _s: None):
            pytest.fail("the body ran")
    assert "-s" in exc.value.hint
    assert agent.calls == ["guest-fsfreeze-freeze", "guest-fsfreeze-thaw"]


def test_a_refused_freeze_does_not_thaw_another_saves_freeze():
    class Refusing(FakeAgent):
        def execute(self, command, arguments=None, *, timeout_s=5.0):
            self.calls.append(command)
            if command == "guest-fsfreeze-freeze":
                raise AgentError("guest agent guest-fsfreeze-freeze: GenericError: disabled")
            return 0

    agent = Refusing()
    with pytest.raises(fsfreeze.FreezeError, match="disabled"):
        with fsfreeze.frozen(agent, "vm0", sleep=lambda _s: None):
            pytest.fail("the body ran")
    assert agent.calls == ["guest-fsfreeze-freeze"]


def test_thaw_is_retried_and_a_lasting_failure_says_so():
    agent = FakeAgent(thaw_failures=1)
    with fsfreeze.frozen(agent, "vm0", sleep=lambda _s: None):
        pass
    assert agent.calls.count("guest-fsfreeze-thaw") == 2
    agent = FakeAgent(fail={"guest-fsfreeze-thaw"})
    with pytest.raises(fsfreeze.FreezeError, match="may still be frozen"):
        with fsfreeze.frozen(agent, "vm0", sleep=lambda _s: None):
            pass
    assert agent.calls.count("guest-fsfreeze-thaw") == fsfreeze.THAW_ATTEMPTS
