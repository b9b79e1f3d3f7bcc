"""pcocc dump and pcocc display on a real local cluster of the test VM: vm0's template asks
for a VNC display, vm1's for none."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from tests.fixtures import rfb
from tests.fixtures.cluster import Env, assert_nothing_left, pids_matching

pytestmark = pytest.mark.slow

#: the -E script: wait until the test is done with the cluster
HOLD = "for i in $(seq 1200); do [ -e done ] && exit 0; sleep 0.5; done; exit 7"


def add_template(env: Env, name: str, protocol: str) -> None:
    """A template ``name``: the test VM with a remote display over ``protocol``."""
    path = Path(env.env["PCOCC_SYSTEM_CONF_DIR"]) / "templates.yaml"
    config = yaml.safe_load(path.read_text())
    config["templates"][name] = {"inherits": "testvm", "remote-display": protocol}
    path.write_text(yaml.safe_dump(config))


@contextlib.contextmanager
def held_cluster(env: Env, spec: str) -> Iterator[dict]:
    """Run the cluster ``spec``, held open by HOLD; yield vm0's display as ``--json`` shows
    it; then let the cluster end, and check that it ended well and left nothing."""
    alloc = env.start("alloc", "-E", HOLD, spec)
    try:
        env.wait_ps(lambda cs: any(c["running"] == c["vms"] for c in cs), "the VMs to run",
                    proc=alloc)
        shown = env.run("display", "--json", "vm0")
        assert shown.returncode == 0, shown.stderr
        yield json.loads(shown.stdout)
    finally:
        (env.tmp / "done").touch()
        err = alloc.communicate(timeout=180)[1]
    assert alloc.returncode == 0, err
    assert_nothing_left(env)


def test_dump_and_display(local_env):
    env = local_env
    add_template(env, "vnc", "vnc")
    with held_cluster(env, "vnc:1,testvm:1") as found:
        # display: an address a VNC client reaches, with the password, never in argv
        assert found["protocol"] == "vnc" and found["uri"] == f"vnc+unix://{found['socket']}"
        init = rfb.connect(found["socket"], found["password"])
        assert init.width > 0 and init.height > 0
        with pytest.raises(rfb.RfbError, match="authentication failed"):
            wrong = "x" if found["password"] != "x" else "y"
            rfb.connect(found["socket"], wrong)
        assert stat.S_IMODE(os.stat(found["socket"]).st_mode) == 0o600
        text = env.run("display", "vm0")
        assert text.returncode == 0, text.stderr
        assert f"address: {found['uri']}" in text.stdout
        assert f"password: {found['password']}" in text.stdout
        (qemu0,) = [p for p in pids_matching(env, "qemu-system") if b"vnc" in
                    Path(f"/proc/{p}/cmdline").read_bytes()]
        argv = Path(f"/proc/{qemu0}/cmdline").read_bytes().split(b"\0")
        assert b"unix:vnc.sock,password=on" in argv
        assert not any(found["password"].encode() in arg for arg in argv)

        # a VM without remote display, and -p without any viewer installed
        plain = env.run("display", "vm1")
        assert plain.returncode == 1
        assert "vm1 of cluster" in plain.stderr and "has no remote display" in plain.stderr
        assert "remote-display: vnc" in plain.stderr and "Traceback" not in plain.stderr
        path = env.env["PATH"]
        viewers = env.tmp / "viewers"
        viewers.mkdir()
        try:
            env.env["PATH"] = str(viewers)
            none = env.run("display", "-p", "vm0")
            assert none.returncode == 1 and "no VNC viewer is installed" in none.stderr
            fake = viewers / "remote-viewer"
            fake.write_text(f"#!/bin/sh\necho \"$@\" > {env.tmp}/viewer.args\n")
            fake.chmod(0o755)
            opened = env.run("display", "-p", "vm0")
            assert opened.returncode == 0, opened.stderr
            assert (env.tmp / "viewer.args").read_text().split() == [found["uri"]]
            assert found["password"] in opened.stderr
        finally:
            env.env["PATH"] = path

        # dump: an ELF core file readelf accepts, private, with no temporary left
        dest = env.tmp / "dumps"
        dest.mkdir()
        res = env.run("dump", "vm1", str(dest / "mem.elf"))
        assert res.returncode == 0, res.stderr
        header = subprocess.run(["readelf", "-h", dest / "mem.elf"], capture_output=True,
                                text=True, check=True).stdout
        assert "ELF64" in header and "CORE (Core file)" in header
        assert stat.S_IMODE((dest / "mem.elf").stat().st_mode) == 0o600
        assert (dest / "mem.elf").stat().st_size > 200 * 1024 * 1024  # 256 MiB of RAM
        assert os.listdir(dest) == ["mem.elf"]

        # bad destinations: one clear line, nothing left behind
        again = env.run("dump", "vm1", str(dest / "mem.elf"))
        assert again.returncode == 1 and "already exists" in again.stderr
        missing = env.run("dump", "vm0", str(dest / "no" / "mem.elf"))
        assert missing.returncode == 1, missing.stderr
        assert f"directory {dest}/no does not exist" in missing.stderr
        proc_dir = env.run("dump", "vm0", "/proc/mem.elf")
        assert proc_dir.returncode != 0 and "cannot write /proc/mem.elf" in proc_dir.stderr
        for err in (again.stderr, missing.stderr, proc_dir.stderr):
            assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
        assert os.listdir(dest) == ["mem.elf"]


def test_spice_display(local_env):
    """A SPICE display on the QEMU installed here (Debian's has SPICE): its socket listens,
    QEMU requires a ticket (the password), and the record says so."""
    env = local_env
    add_template(env, "spice", "spice")
    with held_cluster(env, "spice:1") as found:
        assert found["protocol"] == "spice" and len(found["password"]) == 24
        assert found["uri"] == f"spice+unix://{found['socket']}"
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(found["socket"])
        spice = env.run("monitor-cmd", "vm0", "query-spice")
        assert spice.returncode == 0, spice.stderr
        assert json.loads(spice.stdout)["auth"] == "spice"
