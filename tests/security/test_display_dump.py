"""The remote display and the memory dump of a VM, attacked by another user of the node.

The victim runs a real local-mode cluster of the test VM whose template asks for a VNC
display. Claims (docs/user-guide.md, "Remote display" and "Memory dumps"):
- the display socket and its record (address and password) are the victim's alone: the
  attacker cannot connect to the socket, even knowing the password, nor read the record,
  nor get them from ``pcocc display``; the password is in no process's argv;
- ``pcocc dump`` writes only where its user may: QEMU gets a descriptor the user opened,
  so a dump into a directory the victim cannot write fails, with nothing left there.
The victim still reaches the display with its password afterwards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from tests.fixtures import rfb
from tests.security.clusterlib import victim_cluster

pytestmark = pytest.mark.slow

VICTIM_SCRIPT = """
pcocc display --json vm0 > display.out 2> display.err
pcocc dump vm0 {shared}/mem.elf 2> dump-shared.err; echo $? > dump-shared.rc
touch attack-now
for i in $(seq 600); do [ -e attack-done ] && break; sleep 0.5; done
"""

#: The attacker: connect to the socket and log in with the password; read the record.
ATTACK = """
import json, socket, sys
sock_path, record = sys.argv[1:]
password = sys.stdin.read()  # not in our own argv
out = {}
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(sock_path)
    out["socket"] = "connected:" + s.recv(12).decode(errors="replace")
except OSError as err:
    out["socket"] = "error:" + str(err)
try:
    out["record"] = "read:" + open(record).read()
except OSError as err:
    out["record"] = "error:" + str(err)
leaks = []
import os
for pid in os.listdir("/proc"):
    try:
        if password.encode() in open(f"/proc/{pid}/cmdline", "rb").read():
            leaks.append(pid)
    except OSError:
        pass
out["argv_leaks"] = leaks
print(json.dumps(out))
"""


@pytest.fixture
def vnc_conf(two_users, victim_cluster_conf):
    """``victim_cluster_conf`` with a VNC display in the test VM's template."""
    path = two_users.sysconf / "templates.yaml"
    config = yaml.safe_load(path.read_text())
    config["templates"]["testvm"]["remote-display"] = "vnc"
    path.write_text(yaml.safe_dump(config))
    return victim_cluster_conf


def test_display_and_dump_are_the_victims_alone(two_users, victim, attacker, vnc_conf):
    shared = two_users.shared
    with victim_cluster(victim, vnc_conf, "-E", VICTIM_SCRIPT.format(shared=shared),
                        "testvm:1", files=("display.out",)) as run:
        shown = (victim.home / "display.out").read_text()
        assert shown, (victim.home / "display.err").read_text()
        found = json.loads(shown)
        socket_path, password = found["socket"], found["password"]
        record = str(Path(socket_path).with_name("display.json"))
        assert os.path.exists(socket_path) and os.path.exists(record)

        # the dump into a directory the victim may not write
        assert (victim.home / "dump-shared.rc").read_text().strip() == "1"
        err = (victim.home / "dump-shared.err").read_text()
        assert f"cannot write {shared}/mem.elf: Permission denied" in err, err
        assert not [n for n in os.listdir(shared) if "mem.elf" in n]

        # the attacker, who somehow knows the password
        probe = attacker.run(["/usr/bin/python3", "-c", ATTACK, socket_path, record],
                             input=password, timeout=120)
        assert probe.returncode == 0, probe.stderr
        seen = json.loads(probe.stdout)
        assert seen["socket"].startswith("error:") and "Permission denied" in seen["socket"]
        assert seen["record"].startswith("error:") and "Permission denied" in seen["record"]
        assert seen["argv_leaks"] == []
        job_id = Path(socket_path).parts[-4]
        for args in (("-j", job_id), ("--user", victim.name, "-j", job_id)):
            asked = attacker.pcocc("display", "--json", *args, "vm0")
            assert asked.returncode != 0 and password not in asked.stdout + asked.stderr

        # the victim's display still takes its password
        assert rfb.connect(socket_path, password).width > 0
    assert run.returncode == 0, run.stderr
