"""Helpers of the container tests: run the CLI, list pods."""

from __future__ import annotations

import json

from tests.fixtures.cli import run_pcocc as pcocc


def pods(pcocc_bin, timeout=120) -> list[dict]:
    return json.loads(pcocc(pcocc_bin, "pod", "list", "--json", check=0, timeout=timeout).stdout)


def run_image(pcocc_bin, runtime, image, *args, **kwargs):
    """``pcocc run --runtime RUNTIME IMAGE [-- ARGS...]``: the test image with one runtime."""
    argv = ["run", "--runtime", runtime, str(image)]
    if args:
        argv += ["--", *args]
    return pcocc(pcocc_bin, *argv, **kwargs)
