"""The TCP port a node of a cold ``pcocc run -N`` listens on while it receives an image from
another node (pcocc/ctr/fanoutnet.py): another local user who finds the port can neither
feed the victim data nor read anything from it, and the victim's own sender still gets
through."""

from __future__ import annotations

import json
import subprocess
import time

from tests.nonroot import SYSTEM_PYTHON

VICTIM = r'''
import json, sys, threading, time
from pathlib import Path
from pcocc.ctr.fanoutnet import Listener, connect

shared = Path(sys.argv[1])
listener = Listener("127.0.0.1")
(shared / "port").write_text(str(listener.port))

def sender():  # the victim's own sender (token handed through srun), once the attack is over
    deadline = time.monotonic() + 60
    while not (shared / "attacked").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    with connect("127.0.0.1", listener.port, listener.token) as s:
        s.sendall(b"the victim's layers")

threading.Thread(target=sender).start()
with listener.accept(lambda: None, 60) as conn, conn.makefile("rb") as stream:
    got = stream.read()
print(json.dumps({"got": got.decode(errors="replace")}))
'''

ATTACKER = r'''
import json, socket, sys
from pathlib import Path

shared = Path(sys.argv[1])
port = int((shared / "port").read_text())
results = []
for token in (b"0" * 64, b"f" * 64, b""):  # guesses, and no token at all
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(token + b"evil layers")
        s.shutdown(socket.SHUT_WR)
        try:
            results.append(s.recv(4096).decode(errors="replace"))
        except ConnectionResetError:  # closed with our bytes unread
            results.append("")
    finally:
        s.close()
(shared / "attacked").touch()
print(json.dumps({"read": results}))
'''


def test_another_user_cannot_feed_or_read_the_receivers_port(victim, attacker, two_users):
    shared = two_users.shared / "fanout"
    shared.mkdir()
    shared.chmod(0o777)
    receiver = victim.popen([SYSTEM_PYTHON, "-c", VICTIM, str(shared)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (shared / "port").exists():
            assert receiver.poll() is None, receiver.communicate()
            assert time.monotonic() < deadline, "the victim's receiver did not start"
            time.sleep(0.05)
        attack = attacker.run([SYSTEM_PYTHON, "-c", ATTACKER, str(shared)], timeout=60)
        assert attack.returncode == 0, attack.stderr
        out, err = receiver.communicate(timeout=60)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    assert receiver.returncode == 0, err
    assert json.loads(attack.stdout)["read"] == ["", "", ""]  # nothing read from the port
    assert json.loads(out)["got"] == "the victim's layers"  # only its own sender's bytes
