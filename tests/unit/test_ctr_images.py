"""Image references that are directories; run requests for multi-node runs."""

from __future__ import annotations

import json

import pytest

from pcocc.ctr.images import image_config_from, resolve_rootfs
from pcocc.ctr.launch import RunOptions
from pcocc.ctr.multinode import read_request, write_request
from pcocc.errors import Corrupt, NotFound


def test_bundle_like_directory(tmp_path):
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "config.json").write_text(
        json.dumps(
            {"architecture": "amd64", "config": {"Env": ["A=1"], "Cmd": ["sh"], "Labels": {}}}
        )
    )
    rootfs, cfg = resolve_rootfs(None, str(tmp_path))
    assert rootfs == tmp_path / "rootfs" and cfg == {"Env": ["A=1"], "Cmd": ["sh"]}


def test_plain_rootfs_with_sibling_config(tmp_path):
    root = tmp_path / "fs"
    root.mkdir()
    rootfs, cfg = resolve_rootfs(None, str(root))
    assert rootfs == root and cfg == {}
    (tmp_path / "config.json").write_text(json.dumps({"Entrypoint": ["/e"]}))
    assert resolve_rootfs(None, str(root))[1] == {"Entrypoint": ["/e"]}


def test_runtime_spec_as_config():
    spec = {"process": {"args": ["/bin/x"], "env": ["A=1"], "cwd": "/w"}}
    assert image_config_from(spec, "x") == {"Env": ["A=1"], "Cmd": ["/bin/x"], "WorkingDir": "/w"}


def test_unknown_image_and_bad_config(tmp_path):
    with pytest.raises(NotFound, match="image 'nope:img' not found"):
        resolve_rootfs(None, "nope:img")
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(Corrupt, match="invalid JSON"):
        resolve_rootfs(None, str(tmp_path))


def test_run_request_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    opts = RunOptions(
        runtime="runc",
        set_env=["A=1"],
        volumes=["v,kind=empty"],
        mounts=["volume=v,target=/v"],
        private_net=True,
    )
    path = write_request([("img", ["-c", "x"]), ("img2", [])], opts)
    apps, back = read_request(path)
    assert apps == [("img", ["-c", "x"]), ("img2", [])]
    assert back.runtime == "runc" and list(back.set_env) == ["A=1"] and back.private_net
