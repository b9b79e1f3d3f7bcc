"""Registration without waiting for the metadata service (no process: the service runs in a
thread): ``pcocc run`` binds the app sockets and hands them over in one write; an app that
connects at once is answered once the service took its socket, never refused."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

from pcocc.ctr import mds, mds_server
from pcocc.ctr.mds import MdsApp, hand_over, parse_adopt, unix_socket
from pcocc.ctr.pods import process_start_ticks

UUID = "0123abcd-0000-4000-8000-000000000001"


@pytest.fixture
def root(tmp_path, monkeypatch):
    d = tmp_path / "xdg"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(d))
    return mds.mds_dir()


def get(path, target="/pcocc/v1/pod/uuid") -> bytes:
    with unix_socket(path, timeout_s=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data


def test_register_does_not_wait_for_a_service_it_starts(root, monkeypatch):
    started = []
    monkeypatch.setattr(mds, "start_service", lambda r, socks: started.append(
        {k: s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) for k, s in socks.items()}))
    t0 = time.monotonic()
    dirs = mds.register_pod(UUID, [MdsApp("web", "img", "sha256:x")], {}, pid=os.getpid(),
                            pid_start=process_start_ticks(os.getpid()))
    assert time.monotonic() - t0 < 1.0
    assert started == [{(UUID, "web"): 1}]  # the socket was listening when handed over
    assert (dirs["web"] / mds.SOCKET_NAME).is_socket()
    rec = json.loads((root / "records" / f"{UUID}.json").read_text())
    assert rec["uuid"] == UUID
    assert (root / "records" / f"{UUID}.json").stat().st_mode & 0o077 == 0


def test_an_app_that_connects_before_the_service_took_its_socket_is_answered(root):
    """The hand-over is queued when the record is written: the service must take it rather
    than bind a new socket over it (which would drop the app's waiting connection)."""
    for sub in ("records", "sockets"):
        (root / sub).mkdir(parents=True, mode=0o700, exist_ok=True)
    svc = mds_server.Service(root)
    svc._bind_control()
    d = mds.socket_dir(root, UUID, "web")
    d.mkdir(parents=True)
    listener = unix_socket(d / mds.SOCKET_NAME, listen=True)
    assert hand_over(root, {(UUID, "web"): listener})
    listener.close()
    rec = mds.MdsRecord(UUID, "00" * 32, [MdsApp("web", "img", "sha256:x")], {},
                        os.getpid(), process_start_ticks(os.getpid()))
    (root / "records" / f"{UUID}.json").write_text(json.dumps(rec.to_json()))
    answers = []
    app = threading.Thread(target=lambda: answers.append(get(d / mds.SOCKET_NAME)))
    app.start()  # connects now: queued on the handed-over socket
    time.sleep(0.1)
    svc.rescan()  # sees the record with the hand-over still queued on the control socket
    assert list(svc.listeners) == [(UUID, "web")]
    serving = threading.Thread(target=svc.run, daemon=True)
    serving.start()
    app.join(10)
    assert answers and answers[0].startswith(b"HTTP/1.1 200") and answers[0].endswith(
        UUID.encode())
    (root / "records" / f"{UUID}.json").unlink()
    serving.join(mds_server.IDLE_EXIT_S + 5)
    assert not serving.is_alive(), "the service outlived its last pod"


def test_hand_over_without_a_service_says_so(root):
    (root).mkdir(parents=True, mode=0o700, exist_ok=True)
    with socket.socket(socket.AF_UNIX) as s:
        assert not hand_over(root, {(UUID, "web"): s})


@pytest.mark.parametrize("text", ["../x:web", f"{UUID}:../web", f"{UUID}", f"{UUID}:-a b"])
def test_adopt_names_are_parsed_strictly(text):
    with pytest.raises(ValueError):
        parse_adopt(text)


def control_message(text: str, fds: list[int]) -> list:
    """What the service adopts from one control message (``text`` with ``fds``)."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        socket.send_fds(ours, [text.encode()], fds)
        got: list = []
        mds_server.read_control(theirs, lambda key, sock: got.append((key, sock)))
    return got


def test_the_service_refuses_what_is_not_a_listening_socket():
    r, w = os.pipe()
    a, b = socket.socketpair()
    with a, b:
        assert control_message(f"adopt {UUID}:web {UUID}:db", [r, a.fileno()]) == []
        with socket.socket(socket.AF_UNIX) as listening:
            listening.bind("\0pcocc-test-" + os.urandom(4).hex())
            listening.listen()
            # two sockets for one name
            assert control_message(f"adopt {UUID}:web", [w, listening.fileno()]) == []
            [(key, sock)] = control_message(f"adopt {UUID}:web", [listening.fileno()])
            assert key == (UUID, "web")
            sock.close()
    os.close(r)
    os.close(w)


def test_a_service_started_for_a_pod_gets_its_sockets_not_its_uuid_in_argv(root, monkeypatch):
    """(With the UUID in its command line, the service looked like a process of the pod.)"""
    from pcocc import proc

    spawned = []
    monkeypatch.setattr(proc, "spawn", lambda argv, **kw: spawned.append(
        (argv, os.dup(kw["pass_fds"][0]))))
    root.mkdir(parents=True, mode=0o700)
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind("\0pcocc-test-" + os.urandom(4).hex())
        listening.listen()
        mds.start_service(root, {(UUID, "web"): listening})
    [(argv, fd)] = spawned
    assert not any(UUID in str(a) for a in argv)
    got: list = []
    with socket.socket(fileno=fd) as conn:
        mds_server.read_control(conn, lambda key, sock: got.append((key, sock)))
    assert [key for key, _ in got] == [(UUID, "web")]
    got[0][1].close()
