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
import subprocess
from pathlib import Path

import pytest
import yaml
from tests.fixtures import rfb
from tests.fixtures.cluster import release, wait_for_marker

pytestmark = pytest.mark.slow

BOOT_TIMEOUT_S = 240

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
def vnc_conf(two_users, testvm_artifacts):
    """A system configuration with a test VM template that has a VNC display; the kernel,
    the initrd and a pcocc wrapper in the shared dir."""
    shared = two_users.shared
    boot = shared / "testvm-vnc"
    boot.mkdir(exist_ok=True)
    for src in (testvm_artifacts.kernel, testvm_artifacts.initrd):
        (boot / src.name).write_bytes(src.read_bytes())
        (boot / src.name).chmod(0o644)
    (boot / "pcocc").write_text('#!/bin/sh\nexec /usr/bin/python3 -m pcocc.cli.main "$@"\n')
    (boot / "pcocc").chmod(0o755)
    template = {"kernel": str(boot / testvm_artifacts.kernel.name),
                "initrd": str(boot / testvm_artifacts.initrd.name),
                "append": testvm_artifacts.append, "accel": "tcg", "remote-display": "vnc"}
    files = {"templates.yaml": {"templates": {"testvm": template}},
             "batch.yaml": {"type": "local", "etcd": {"mode": "private"}}}
    for name, content in files.items():
        (two_users.sysconf / name).write_text(yaml.safe_dump(content))
        (two_users.sysconf / name).chmod(0o644)
    yield boot
    for name in files:
        (two_users.sysconf / name).unlink(missing_ok=True)


def test_display_and_dump_are_the_victims_alone(two_users, victim, attacker, vnc_conf):
    shared = two_users.shared
    env = {"PATH": f"{vnc_conf}:{victim.base_env['PATH']}",
           "PCOCC_BOOT_TIMEOUT": str(BOOT_TIMEOUT_S), "PCOCC_ACCEL": "tcg"}
    for name in ("attack-now", "attack-done", "display.out"):
        (victim.home / name).unlink(missing_ok=True)
    alloc = victim.popen(["/usr/bin/python3", "-m", "pcocc.cli.main", "alloc", "-E",
                          VICTIM_SCRIPT.format(shared=shared), "testvm:1"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        wait_for_marker(alloc, victim.home / "attack-now", BOOT_TIMEOUT_S + 120,
                        "the victim's cluster")
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
        asked = attacker.pcocc("display", "--json", "-j", job_id, "vm0")
        assert asked.returncode != 0 and password not in asked.stdout + asked.stderr

        # the victim's display still takes its password
        assert rfb.connect(socket_path, password).width > 0
    finally:
        err = release(alloc, victim.home / "attack-done")
    assert alloc.returncode == 0, err
