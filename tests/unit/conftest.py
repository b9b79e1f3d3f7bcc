"""Unit tests start no process: a test that tries fails at once, naming the call.

Tests that need a real program belong in tests/integration/ (see docs/architecture.md,
"Test lanes").
"""

from __future__ import annotations

import os
import subprocess

import pytest


class ProcessStarted(AssertionError):
    """A unit test tried to start a process."""


def _refuse(what: str):
    def refuse(*args, **kwargs):
        raise ProcessStarted(f"unit tests start no process ({what} called); "
                             "move this test to tests/integration/")

    return refuse


@pytest.fixture(autouse=True)
def no_processes(monkeypatch):
    """Make every way of starting a process raise during the test."""
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("subprocess.Popen"))
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system", "execv", "execve",
                 "execvp", "execvpe", "spawnv", "spawnve", "spawnvp", "spawnvpe"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, _refuse(f"os.{name}"))
