"""helpers/setup stops only the daemons its own package install started."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

DAEMONS = Path(__file__).resolve().parents[2] / "helpers" / "daemons.sh"


def _fake_daemon(tmp_path: Path, name: str) -> subprocess.Popen:
    """A process whose name (comm) is ``name``: a copy of sleep."""
    exe = tmp_path / name
    if not exe.exists():
        shutil.copy("/bin/sleep", exe)
    return subprocess.Popen([str(exe), "300"])


def _alive(p: subprocess.Popen) -> bool:
    return p.poll() is None


@pytest.mark.parametrize("name", ["munged", "etcd", "slurmctld"])
def test_a_daemon_running_before_the_install_is_left_alone(tmp_path, name):
    site = _fake_daemon(tmp_path, name)  # the site's own daemon, running before setup
    try:
        script = (f'source "{DAEMONS}"; before=$(daemon_pids); '
                  f'"{tmp_path / name}" 300 & new=$!; '  # a daemon the install started
                  'sleep 0.2; stop_new_daemons "$before"; wait $new; echo "new:$?"')
        res = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                             timeout=30, check=False)
        time.sleep(0.1)
        assert _alive(site), "setup stopped a daemon that was running before the install"
        assert "new:143" in res.stdout, (res.stdout, res.stderr)  # the new one got SIGTERM
        assert f"stopping {name} (pid" in res.stderr
        assert res.stderr.count("stopping") == 1
    finally:
        site.kill()
        site.wait()


def test_setup_never_kills_by_name():
    text = (DAEMONS.parent / "setup").read_text()
    assert "pkill" not in text and "killall" not in text
