"""Helpers of the container tests: run the CLI, list pods."""

from __future__ import annotations

import json

from tests.fixtures.cli import run_pcocc as pcocc


def pods(pcocc_bin, timeout=120) -> list[dict]:
    return json.loads(pcocc(pcocc_bin, "pod", "list", "--json", check=0, timeout=timeout).stdout)
