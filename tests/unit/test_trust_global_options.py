"""The global security options reach what they name: pcocc run gets the run-side values."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pcocc.cli.app import cli


@pytest.fixture
def captured(monkeypatch, pcocc_env):
    seen = []
    import pcocc.ctr.pod as pod

    monkeypatch.setattr(pod, "run_request", lambda req, cfg, notify: seen.append(req) or 0)
    return seen


def _run(*args):
    return CliRunner().invoke(cli, list(args), standalone_mode=False, catch_exceptions=False)


def test_run_side_values_reach_pcocc_run(captured):
    _run("--insecure-options", "seccomp,image", "run", "img")
    assert set(captured[-1].options.insecure) == {"seccomp"}
    _run("--insecure-options", "all-run", "run", "--insecure-options", "paths", "img")
    assert set(captured[-1].options.insecure) == {"capabilities", "paths", "seccomp"}
    _run("--insecure-options", "all-fetch", "run", "img")
    assert set(captured[-1].options.insecure) == set()
