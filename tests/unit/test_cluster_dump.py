"""pcocc dump without QEMU: the QMP conversation, the checks of QEMU's replies, and the
destination file that appears only once complete (a fake QMP client writes the "memory")."""

from __future__ import annotations

import contextlib
import os
import stat
from types import SimpleNamespace

import pytest

from pcocc.cluster import dump
from pcocc.errors import AlreadyExists, Corrupt, NotFound, PcoccError, UsageError
from pcocc.vm.qmp import QmpError

MEMORY = b"\x7fELF" + b"m" * 1000


class FakeQmp:
    """Answers like QEMU: getfd takes a copy of the descriptor, a detached dump writes it
    while query-dump reports 'active', then the final status."""

    def __init__(self, final="completed", refuse=None, interrupt=False, replies=None):
        self.calls = []
        self.fd = None
        self.final = final
        self.refuse = refuse
        self.interrupt = interrupt
        self.replies = list(replies or [])

    def send_fd(self, fd):
        self.fd = os.dup(fd)
        self.calls.append(("send_fd", None))

    def execute(self, command, arguments=None, **_):
        self.calls.append((command, arguments))
        if command == "dump-guest-memory" and self.refuse:
            raise QmpError(self.refuse)
        if command == "closefd":
            os.close(self.fd)
            return {}
        if command == "query-dump":
            if self.replies:
                return self.replies.pop(0)
            if self.interrupt:
                raise KeyboardInterrupt
            if self.fd is not None:
                os.write(self.fd, MEMORY)
                os.close(self.fd)
                self.fd = None
                return {"status": "active", "completed": 500, "total": len(MEMORY)}
            return {"status": self.final, "completed": len(MEMORY), "total": len(MEMORY)}
        return {}


def _run(qmp, fd=None, progress=None):
    seen = []
    with open(os.devnull, "wb") as null:
        size = dump.dump_guest_memory(qmp, null.fileno() if fd is None else fd, "vm0",
                                      progress or (lambda d, t: seen.append((d, t))),
                                      sleep=lambda _s: None)
    return size, seen


def test_dump_passes_a_descriptor_never_a_path_and_reports_progress():
    qmp = FakeQmp()
    size, seen = _run(qmp)
    assert size == len(MEMORY)
    assert qmp.calls[:3] == [
        ("send_fd", None),
        ("getfd", {"fdname": "pcocc-dump"}),
        ("dump-guest-memory", {"paging": False, "protocol": "fd:pcocc-dump", "detach": True,
                               "format": "elf"}),
    ]
    assert seen == [(500, len(MEMORY)), (len(MEMORY), len(MEMORY))]


def test_refused_dump_gives_the_descriptor_back():
    qmp = FakeQmp(refuse="there is a dump in progress")
    with pytest.raises(QmpError, match="dump in progress"):
        _run(qmp)
    assert qmp.calls[-1] == ("closefd", {"fdname": "pcocc-dump"})


def test_failed_dump_is_an_error():
    with pytest.raises(PcoccError, match="QEMU could not write the memory dump of vm0"):
        _run(FakeQmp(final="failed"))


@pytest.mark.parametrize("reply", [
    None, [], "completed", {"status": "done", "completed": 1, "total": 1},
    {"status": "active", "completed": -1, "total": 1},
    {"status": "active", "completed": True, "total": 1},
    {"status": "active", "completed": 1},
    {"status": "active", "completed": 1, "total": 1, "more": 1},
])
def test_unexpected_query_dump_replies_are_refused(reply):
    with pytest.raises(Corrupt, match="unexpected reply of QEMU to query-dump"):
        _run(FakeQmp(replies=[reply]))


def test_status_none_after_the_start_is_an_error():
    with pytest.raises(PcoccError, match="reports 'none'"):
        _run(FakeQmp(replies=[{"status": "none", "completed": 0, "total": 0}]))


# -- the destination -------------------------------------------------------------------------
class View:
    def vm(self, name):
        return SimpleNamespace(name=name, rank=0)


@pytest.fixture
def fake_qmp(monkeypatch):
    holder = {}

    @contextlib.contextmanager
    def session(view, rec):
        yield holder["qmp"]

    monkeypatch.setattr(dump, "qmp_session", session)
    return holder


def test_dump_vm_writes_a_private_file_that_appears_complete(tmp_path, fake_qmp):
    fake_qmp["qmp"] = FakeQmp()
    dest = tmp_path / "mem.elf"
    assert dump.dump_vm(View(), "vm0", dest) == len(MEMORY)
    assert dest.read_bytes() == MEMORY
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["mem.elf"]


@pytest.mark.parametrize("qmp", [
    FakeQmp(final="failed"), FakeQmp(refuse="no"), FakeQmp(interrupt=True),
], ids=["failed", "refused", "ctrl-c"])
def test_dump_vm_leaves_nothing_on_failure_or_interrupt(tmp_path, fake_qmp, qmp):
    fake_qmp["qmp"] = qmp
    with pytest.raises((PcoccError, KeyboardInterrupt)):
        dump.dump_vm(View(), "vm0", tmp_path / "mem.elf")
    assert os.listdir(tmp_path) == []


def test_dump_vm_refuses_bad_destinations_before_asking_qemu(tmp_path, fake_qmp):
    fake_qmp["qmp"] = None  # never reached
    (tmp_path / "old.elf").write_text("keep")
    with pytest.raises(AlreadyExists, match="old.elf already exists"):
        dump.dump_vm(View(), "vm0", tmp_path / "old.elf")
    with pytest.raises(UsageError, match="is a directory"):
        dump.dump_vm(View(), "vm0", tmp_path)
    with pytest.raises(NotFound, match=f"directory {tmp_path}/nope does not exist"):
        dump.dump_vm(View(), "vm0", tmp_path / "nope" / "mem.elf")
    assert (tmp_path / "old.elf").read_text() == "keep"
    assert sorted(os.listdir(tmp_path)) == ["old.elf"]
