"""Helpers of the container tests: run the CLI, list pods."""

from __future__ import annotations

import json
import subprocess


def pcocc(pcocc_bin, *args, check=None, timeout=120, **kw) -> subprocess.CompletedProcess:
    """Run the CLI; with ``check``, assert its exit status (and show its output if not)."""
    res = subprocess.run(
        [pcocc_bin, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw
    )
    if check is not None:
        assert res.returncode == check, (res.returncode, res.stdout, res.stderr)
    return res


def pods(pcocc_bin, timeout=120) -> list[dict]:
    return json.loads(pcocc(pcocc_bin, "pod", "list", "--json", check=0, timeout=timeout).stdout)
