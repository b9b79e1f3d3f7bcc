"""slirp4netns failures, with a real process that dies."""

from __future__ import annotations

import pytest

from pcocc.ctr.net import NetPlan, PodNetwork
from pcocc.errors import PcoccError


def test_slirp_failure_names_its_log(tmp_path, monkeypatch):
    """A slirp4netns that fails before ready: the error carries the end of its log."""
    exe = tmp_path / "slirp4netns"
    exe.write_text("#!/bin/sh\necho 'cannot join the namespace of pid' >&2\nexit 1\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    network = PodNetwork(NetPlan("slirp"), tmp_path / "g.sock", tmp_path / "slirp.log")
    with pytest.raises(PcoccError, match="cannot join the namespace of pid") as err:
        network._start_slirp(1, timeout_s=10)
    assert str(tmp_path / "slirp.log") in err.value.hint
