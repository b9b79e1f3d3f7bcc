"""A private Docker registry (Debian's docker-registry) for the tests.

Started as a child process on a free loopback port with its storage in a temporary
directory, never as a system service; :func:`local_registry` always stops it.
"""

from __future__ import annotations

import contextlib
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pcocc import proc
from pcocc.daemon import free_port

REGISTRY_BIN = "/usr/bin/docker-registry"


@dataclass
class Registry:
    host: str  #: "127.0.0.1:PORT", what goes after docker://
    root: Path
    log_path: Path

    def ref(self, repo: str, tag: str = "latest") -> str:
        """A docker:// location in this registry, without the transport prefix."""
        return f"{self.host}/{repo}:{tag}"


def _config(root: Path, port: int, htpasswd: Path | None = None) -> str:
    auth = (f"auth:\n  htpasswd:\n    realm: pcocc-test\n    path: {htpasswd}\n"
            if htpasswd is not None else "")
    return (
        "version: 0.1\n"
        "log:\n  level: warn\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {root / 'data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        + auth
    )


def _wait_ready(host: str, child, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(
                f"docker-registry exited with status {child.returncode}: "
                f"{log_path.read_text(errors='replace')[-2000:]}"
            )
        try:
            with urllib.request.urlopen(f"http://{host}/v2/", timeout=1) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as err:
            if err.code == 401:  # up, and asking for credentials (htpasswd)
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"docker-registry did not answer on {host} within {timeout_s} s")


@contextlib.contextmanager
def local_registry(workdir: Path, *, timeout_s: float = 20.0, htpasswd: Path | None = None
                   ) -> Iterator[Registry]:
    """Run a registry on 127.0.0.1 until the block ends (plain HTTP: use tls-verify=false);
    with ``htpasswd`` (bcrypt entries), it asks every client for basic credentials."""
    workdir.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):
        port = free_port()
        cfg = workdir / "config.yml"
        cfg.write_text(_config(workdir, port, htpasswd))
        log_path = workdir / "registry.log"
        child = proc.spawn([REGISTRY_BIN, "serve", cfg], log_path=log_path, cwd=workdir)
        host = f"127.0.0.1:{port}"
        try:
            _wait_ready(host, child, log_path, timeout_s)
        except RuntimeError:
            proc.stop(child)
            if "address already in use" in log_path.read_text(errors="replace"):
                continue  # lost a race for the port; try another one
            raise
        try:
            yield Registry(host, workdir, log_path)
        finally:
            proc.stop(child)
        return
    raise RuntimeError("docker-registry could not find a free port")
