"""``pcocc exec`` through fake guest agents (tests/fixtures/qga.py: real unix sockets,
threads, no process): streaming, prefixes, statuses, stdin, agents that fail, Ctrl-C."""

from __future__ import annotations

import _thread
import contextlib
import io
import shlex
import signal
import threading

import pytest

from pcocc.cluster import guestexec
from pcocc.cluster.guestexec import ExecRequest, PrefixedOutput, run_in_vms, wrapper_script
from pcocc.errors import NotFound, UsageError
from pcocc.vm.agent import GuestAgent
from tests.fixtures.qga import FakeQga, wait_for


class Recorder:
    """An Output that keeps what each VM wrote, and when."""

    def __init__(self) -> None:
        self.data: dict[tuple[int, str], bytes] = {}
        self.ended: list[int] = []
        self.first_line = threading.Event()

    def write(self, rank, stream, data):
        self.data[(rank, stream)] = self.data.get((rank, stream), b"") + data
        if b"\n" in data:
            self.first_line.set()

    def end(self, rank):
        self.ended.append(rank)


@pytest.fixture
def fakes(tmp_path):
    made: list[FakeQga] = []

    def make(rank, program=None, **kwargs):
        fake = FakeQga(tmp_path / f"qga{rank}.sock", program, **kwargs)
        made.append(fake)
        return fake

    yield make
    for fake in made:
        fake.close()


def _agents(paths):
    @contextlib.contextmanager
    def agents(rank):
        if rank not in paths:
            raise NotFound(f"vm{rank} has no guest agent socket")
        yield GuestAgent(paths[rank])

    return agents


def _run(fakes_by_rank, request, output, errors=None):
    errors = [] if errors is None else errors
    return run_in_vms(
        _agents({r: f.path for r, f in fakes_by_rank.items()}),
        sorted(fakes_by_rank),
        request,
        output,
        lambda rank, msg, hint: errors.append((rank, msg, hint)),
    )


def test_output_is_streamed_before_the_command_ends(fakes):
    out = Recorder()

    def program(p):
        p.write("out", b"first\n")
        # the command goes on only once the host has shown the first line
        if not out.first_line.wait(5):
            p.write("err", b"not streamed\n")
            return 99
        p.write("out", b"second\n")
        p.write("err", b"warning\n")
        return 3

    fake = fakes(0, program)
    status = _run({0: fake}, ExecRequest.build(["echo", "hi"]), out)
    assert status == 3
    assert out.data[(0, "out")] == b"first\nsecond\n"
    assert out.data[(0, "err")] == b"warning\n"
    assert out.ended == [0]
    # nothing left in the guest: names removed by the wrapper, handles closed
    assert fake.files_by_path == {} and fake.open_handles() == []
    assert fake.processes[max(fake.processes)].command == "echo hi"


def test_several_vms_prefix_lines_and_give_the_worst_status(fakes):
    def program(rank):
        def run(p):
            p.write("out", f"vm{rank} part".encode())
            p.write("out", b" one\nline two\nno newline")
            return {0: 0, 1: 7, 2: 1}[rank]

        return run

    agents = {r: fakes(r, program(r)) for r in range(3)}
    stdout, stderr = io.BytesIO(), io.BytesIO()
    output = PrefixedOutput(stdout, stderr, prefix=True)
    status = run_in_vms(
        _agents({r: f.path for r, f in agents.items()}),
        [0, 1, 2],
        ExecRequest.build(["true"]),
        output,
        lambda *a: pytest.fail(f"unexpected error {a}"),
    )
    assert status == 7
    lines = stdout.getvalue().decode().splitlines()
    for rank in range(3):
        assert [ln for ln in lines if ln.startswith(f"vm{rank}: ")] == [
            f"vm{rank}: vm{rank} part one",
            f"vm{rank}: line two",
            f"vm{rank}: no newline",
        ]
    assert stderr.getvalue() == b""


def test_a_silent_agent_and_a_missing_one_are_named(fakes, monkeypatch):
    monkeypatch.setattr(guestexec, "AGENT_TIMEOUT_S", 0.5)
    good = fakes(0, lambda p: (p.write("out", b"ok\n"), 0)[1])
    silent = fakes(1, silent=True)
    errors: list = []
    out = Recorder()
    paths = {0: good.path, 1: silent.path}
    status = run_in_vms(_agents(paths), [0, 1, 2], ExecRequest.build(["true"]), out,
                        lambda rank, msg, hint: errors.append((rank, msg, hint)))
    assert status == 1
    assert out.data[(0, "out")] == b"ok\n"
    errors.sort()
    assert [e[0] for e in errors] == [1, 2]
    assert errors[0][1].startswith("vm1: ") and "did not answer in time" in errors[0][1]
    assert errors[0][2] == "is qemu-guest-agent running in vm1?"
    assert errors[1][1] == "vm2: vm2 has no guest agent socket"
    assert all("\n" not in e[1] for e in errors)


def test_stdin_goes_as_input_data(fakes):
    seen = []
    fake = fakes(0, lambda p: (seen.append(p.stdin), 0)[1])
    assert _run({0: fake}, ExecRequest.build(["cat"], stdin=b"\x00data\n"), Recorder()) == 0
    assert seen == [b"\x00data\n"]


def test_a_refused_exec_removes_the_files(fakes):
    fake = fakes(0, refuse_exec=True)
    errors: list = []
    assert _run({0: fake}, ExecRequest.build(["true"]), Recorder(), errors) == 1
    assert "no such file" in errors[0][1]
    assert fake.files_by_path == {} and fake.open_handles() == []
    assert fake.helpers and fake.helpers[0][:2] == ["rm", "-f"]


def test_a_signal_gives_128_plus_its_number(fakes):
    def program(p):
        p.killed.set()
        return 0

    fake = fakes(0, program)
    assert _run({0: fake}, ExecRequest.build(["true"]), Recorder()) == 128 + 15


@pytest.fixture
def sigint_raises():
    """A shell starts background commands with SIGINT ignored, and interrupt_main() then
    does nothing: give SIGINT Python's own handler for the test."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_waiting_and_kills_the_guest_processes(fakes, sigint_raises):
    started = threading.Event()

    def program(p):
        started.set()
        p.killed.wait(30)
        return 0

    fake = fakes(0, program)
    threading.Thread(target=lambda: (started.wait(10), _thread.interrupt_main()),
                     daemon=True).start()
    status = _run({0: fake}, ExecRequest.build(["sleep", "100"]), Recorder())
    assert status == guestexec.INTERRUPTED
    [kill] = fake.helpers
    assert kill[2] == guestexec._KILL_TREE and kill[4] == str(min(
        pid for pid, p in fake.processes.items() if p is not None))
    assert wait_for(lambda: fake.open_handles() == [])


# -- the wrapper and the request (pure) -------------------------------------------------
HOSTILE = "'; rm -rf / #\n$(reboot) `halt` \"x"


def test_wrapper_quotes_everything_from_the_user():
    req = ExecRequest.build([HOSTILE], env=["A=" + HOSTILE, "B="])
    text = wrapper_script(req, "/tmp/o", "/tmp/e")
    lines = shlex.split(text, comments=False, posix=True)
    assert lines[:8] == ["exec", ">>/tmp/o", "2>>/tmp/e", "||", "exit", "125", "rm", "-f"]
    # every user string is one word for the shell
    assert HOSTILE in lines and f"A={HOSTILE}" in lines and "B=" in lines
    assert text.endswith(f"\neval {shlex.quote(HOSTILE)}\n")


def test_wrapper_runs_other_users_through_su():
    req = ExecRequest.build(["id", "-u"], user="bob", env=["K=v w"])
    words = shlex.split(wrapper_script(req, "/tmp/o", "/tmp/e"))
    last = words[words.index("su") - 1:]
    assert len(last) == 7 and last[:6] == ["exec", "su", "-s", "/bin/sh", "bob", "-c"]
    assert last[6] == "export K='v w'\neval 'id -u'\n"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"words": []}, "no command given"),
        ({"words": ["  "]}, "no command given"),
        ({"words": ["a\0b"]}, "NUL"),
        ({"words": ["id"], "user": "-rf"}, "is not a user name"),
        ({"words": ["id"], "user": "a b"}, "is not a user name"),
        ({"words": ["id"], "user": "x" * 40}, "is not a user name"),
        ({"words": ["id"], "env": ["1X=2"]}, "is not NAME=VALUE"),
        ({"words": ["id"], "env": ["NOVALUE"]}, "is not NAME=VALUE"),
        ({"words": ["id"], "stdin": b"x" * (guestexec.MAX_STDIN_BYTES + 1)}, "larger than"),
    ],
)
def test_bad_requests_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError) as err:
        ExecRequest.build(**kwargs)
    assert message in str(err.value)


def test_script_request_passes_the_script_as_stdin():
    req = guestexec.script_request(b"#!/bin/sh\nexit 4\n", user="bob")
    assert req.stdin == b"#!/bin/sh\nexit 4\n" and req.user == "bob"
    assert 'cat > "$t"' in req.command and 'rm -f "$t"' in req.command


def test_prefixed_output_without_prefix_writes_through():
    out, err = io.BytesIO(), io.BytesIO()
    sink = PrefixedOutput(out, err, prefix=False)
    sink.write(0, "out", b"par")
    sink.write(0, "err", b"e")
    assert out.getvalue() == b"par" and err.getvalue() == b"e"
    sink.end(0)
    assert out.getvalue() == b"par"


def test_prefixed_output_ends_a_partial_line():
    out, err = io.BytesIO(), io.BytesIO()
    sink = PrefixedOutput(out, err, prefix=True)
    sink.write(3, "out", b"a\nb")
    sink.write(4, "out", b"c")
    assert out.getvalue() == b"vm3: a\n"
    sink.end(4)
    sink.end(3)
    assert out.getvalue() == b"vm3: a\nvm4: c\nvm3: b\n"


def test_an_agent_that_stops_answering_is_not_waited_for_again(fakes, monkeypatch):
    monkeypatch.setattr(guestexec, "AGENT_TIMEOUT_S", 0.3)
    holder = {}

    def program(p):
        holder["fake"].silent = True  # e.g. kill -STOP $(pidof qemu-ga)
        return 0

    fake = holder["fake"] = fakes(0, program)
    errors: list = []
    assert _run({0: fake}, ExecRequest.build(["true"]), Recorder(), errors) == 1
    assert "did not answer in time" in errors[0][1]
    # one command went unanswered: no new session was opened to close the files
    assert len(fake.unanswered) == 1, fake.unanswered
