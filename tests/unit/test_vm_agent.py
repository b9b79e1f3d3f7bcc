"""The guest agent client against a fake agent on a real unix socket."""

from __future__ import annotations

import base64
import json
import socket
import threading

import pytest

from pcocc.errors import ServiceUnavailable
from pcocc.vm.agent import AgentError, GuestAgent


class FakeAgent:
    """Answers like qemu-ga; ``stale`` bytes are sent first to test resynchronisation."""

    def __init__(self, path, *, silent: bool = False, stale: bytes = b"") -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(4)
        self.silent, self.stale = silent, stale
        self.commands: list[str] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(self.stale)
                buf = b""
                while True:
                    data = conn.recv(4096)
                    if not data:
                        break
                    buf += data
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        self.answer(conn, json.loads(line.lstrip(b"\xff")))

    def answer(self, conn, msg) -> None:
        cmd = msg["execute"]
        self.commands.append(cmd)
        if self.silent:
            return
        if cmd == "guest-sync-delimited":
            conn.sendall(b"\xff" + json.dumps({"return": msg["arguments"]["id"]}).encode() + b"\n")
        elif cmd == "guest-ping":
            conn.sendall(b'{"return": {}}\n')
        elif cmd == "guest-exec":
            conn.sendall(b'{"return": {"pid": 42}}\n')
        elif cmd == "guest-exec-status":
            out = base64.b64encode(b"vm3\n").decode()
            conn.sendall(json.dumps({"return": {"exited": True, "exitcode": 0,
                                                "out-data": out}}).encode() + b"\n")
        else:
            conn.sendall(json.dumps({"error": {"class": "CommandNotFound",
                                               "desc": f"{cmd} unknown"}}).encode() + b"\n")

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def agent_path(tmp_path):
    return tmp_path / "qga.sock"


def test_ping_and_exec(agent_path):
    fake = FakeAgent(agent_path)
    try:
        agent = GuestAgent(agent_path)
        assert agent.ping()
        assert agent.exec("/bin/hostname") == (0, "vm3\n", "")
        assert fake.commands[:2] == ["guest-sync-delimited", "guest-ping"]
    finally:
        fake.close()


def test_stale_replies_before_the_delimiter_are_ignored(agent_path):
    fake = FakeAgent(agent_path, stale=b'{"return": 12345}\n\xff{"return": 999}\n')
    try:
        assert GuestAgent(agent_path).execute("guest-ping") == {}
    finally:
        fake.close()


def test_error_reply_raises_agent_error(agent_path):
    fake = FakeAgent(agent_path)
    try:
        with pytest.raises(AgentError) as info:
            GuestAgent(agent_path).execute("guest-nope")
        assert "CommandNotFound" in str(info.value)
    finally:
        fake.close()


def test_silent_agent_times_out(agent_path):
    fake = FakeAgent(agent_path, silent=True)
    try:
        agent = GuestAgent(agent_path)
        assert agent.ping(timeout_s=0.3) is False
        with pytest.raises(ServiceUnavailable) as info:
            agent.execute("guest-ping", timeout_s=0.3)
        assert "did not answer" in str(info.value)
    finally:
        fake.close()


def test_missing_socket_is_service_unavailable(agent_path):
    with pytest.raises(ServiceUnavailable) as info:
        GuestAgent(agent_path).execute("guest-ping", timeout_s=0.5)
    assert str(agent_path) in str(info.value)


def test_kept_connection_synchronises_once_and_is_released(agent_path):
    fake = FakeAgent(agent_path)
    try:
        agent = GuestAgent(agent_path)
        with agent.kept():
            assert agent.ping()
            with pytest.raises(AgentError):  # an answer: the connection stays in step
                agent.execute("guest-nope")
            assert agent.execute("guest-ping") == {}
            assert fake.commands == ["guest-sync-delimited", "guest-ping", "guest-nope",
                                     "guest-ping"]
            agent.release()  # the next command connects and synchronises again
            agent.execute("guest-ping")
            assert fake.commands[-2:] == ["guest-sync-delimited", "guest-ping"]
        agent.execute("guest-ping")  # outside: one connection per command again
        agent.execute("guest-ping")
        assert fake.commands.count("guest-sync-delimited") == 4
    finally:
        fake.close()


def test_kept_connection_without_answer_is_dropped(agent_path):
    fake = FakeAgent(agent_path, silent=True)
    try:
        agent = GuestAgent(agent_path)
        with agent.kept():
            assert agent.ping(timeout_s=0.3) is False
            assert agent._kept is None  # out of step: not reused
            fake.silent = False
            assert agent.ping(timeout_s=2)
    finally:
        fake.close()
