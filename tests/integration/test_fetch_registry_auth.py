"""pcocc image fetch docker:// from a local docker-registry that demands basic credentials
(htpasswd): refused clearly without them, fetched with those of auth.json, and the password
never on a command line (of pcocc or of the skopeo it starts)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from helpers.registry import REGISTRY_BIN, local_registry
from tests.fixtures.cli import run_pcocc
from tests.integration.repo_testlib import write_repos

pytestmark = pytest.mark.slow


def _cmdlines() -> list[str]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                out.append((d / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace"))
            except OSError:
                pass
    return out


def _fetch_watching_argv(pcocc_bin, ref):
    """Run the fetch, reading every process's command line until it ends."""
    child = subprocess.Popen([pcocc_bin, "--insecure-options=image", "image", "fetch", ref],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL)
    seen: list[str] = []
    deadline = time.monotonic() + 120
    while child.poll() is None and time.monotonic() < deadline:
        seen += [c for c in _cmdlines() if "skopeo" in c or "pcocc" in c]
    out, err = child.communicate(timeout=60)
    return child.returncode, out, err, seen


def test_docker_fetch_with_credentials_from_auth_json(pcocc_env, pcocc_bin, tmp_path,
                                                      busybox_image):
    bcrypt = pytest.importorskip("bcrypt")
    if not os.path.exists(REGISTRY_BIN):
        pytest.skip("docker-registry not installed (run helpers/setup)")
    password = "pw-" + os.urandom(6).hex()
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:" + bcrypt.hashpw(password.encode(),
                                                 bcrypt.gensalt(rounds=4)).decode() + "\n")
    write_repos(pcocc_env["user"], {"user": tmp_path / "repo"})
    with local_registry(tmp_path / "registry", htpasswd=htpasswd) as reg:
        location = reg.ref("pcocc/bb", "1")
        subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet",
                        "--dest-tls-verify=false", "--dest-creds", f"alice:{password}",
                        busybox_image.ref, f"docker://{location}"], check=True,
                       capture_output=True)
        ref = f"docker://{location}"
        # without credentials: one clear line naming the registry and the file
        code, _, err, _ = _fetch_watching_argv(pcocc_bin, ref)
        assert code == 1, err
        assert f"registry {reg.host} asks for credentials" in err
        assert "auth.json" in err and "Traceback" not in err
        # with them, in the 0600 credentials file
        auth = pcocc_env["user"] / "auth.json"
        auth.write_text(json.dumps({"https": [{"domains": [reg.host], "type": "basic",
                                               "user": "alice", "password": password}]}))
        os.chmod(auth, 0o600)
        code, out, err, seen = _fetch_watching_argv(pcocc_bin, ref)
        assert code == 0, err
        assert out.startswith("sha256-")
        assert seen and not [c for c in seen if password in c]
    listing = run_pcocc(pcocc_bin, "image", "list", check=0).stdout
    assert "bb" in listing
