"""rkt-style --volume/--mount, containers.yaml mounts and modules."""

from __future__ import annotations

import pytest

from pcocc.ctr.volumes import (
    Mount,
    Volume,
    parse_mount,
    parse_volume,
    resolve_mounts,
    select_modules,
)
from pcocc.config import ContainerModule, MountConfig
from pcocc.errors import ConfigError, UsageError


def test_parse_host_and_empty_volumes(tmp_path):
    assert parse_volume(f"work,kind=host,source={tmp_path},readOnly=true") == Volume(
        "work", "host", str(tmp_path), True
    )
    assert parse_volume("scratch,kind=empty") == Volume("scratch", "empty", None, False)
    assert parse_volume(f"w,source={tmp_path}").kind == "host"


@pytest.mark.parametrize(
    "text,msg",
    [
        ("", "expected NAME"),
        ("w,kind=nfs,source=/x", "kind must be one of"),
        ("w,kind=host", "needs source=PATH"),
        ("w,kind=empty,source=/x", "takes no source"),
        ("w,kind=host,source=/x,readOnly=maybe", "readOnly must be true or false"),
        ("w,kind=host,source=/x,color=red", "unknown key 'color'"),
    ],
)
def test_bad_volume_specs(text, msg):
    with pytest.raises(UsageError, match=msg):
        parse_volume(text)


def test_parse_mount():
    assert parse_mount("volume=work,target=/data") == ("work", "/data")
    for bad in ("volume=work", "target=/x", "volume=w,target=rel", "w,/x"):
        with pytest.raises(UsageError, match="--mount"):
            parse_mount(bad)


def test_resolve_mounts_host_empty_and_config(tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    conf_src = tmp_path / "conf"
    conf_src.mkdir()
    mounts = resolve_mounts(
        [Volume("h", "host", str(host), True), Volume("e", "empty")],
        [("h", "/h"), ("e", "/e"), ("h", "/h2")],
        empty_dir=tmp_path / "pod" / "volumes",
        config_mounts=[
            MountConfig(str(conf_src), "/conf", readonly=True),
            MountConfig(str(tmp_path / "absent"), "/absent", optional=True),
        ],
    )
    assert mounts == [
        Mount(str(conf_src), "/conf", True),
        Mount(str(host), "/h", True),
        Mount(str(tmp_path / "pod" / "volumes" / "e"), "/e", False),
        Mount(str(host), "/h2", True),
    ]
    assert (tmp_path / "pod" / "volumes" / "e").is_dir()


def test_missing_sources_are_named(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(UsageError, match=f"source '{missing}' does not exist"):
        resolve_mounts([Volume("v", "host", str(missing))], [("v", "/v")], empty_dir=tmp_path)
    with pytest.raises(ConfigError, match=f"site.yaml: mount source '{missing}' does not"):
        resolve_mounts(
            [],
            [],
            empty_dir=tmp_path,
            config_name="site.yaml",
            config_mounts=[MountConfig(str(missing), "/m")],
        )


def test_unknown_and_unmounted_volumes(tmp_path):
    with pytest.raises(UsageError, match="no volume named 'x'"):
        resolve_mounts([], [("x", "/x")], empty_dir=tmp_path)
    with pytest.raises(UsageError, match="declared but not mounted"):
        resolve_mounts([Volume("e", "empty")], [], empty_dir=tmp_path)
    with pytest.raises(UsageError, match="declared twice"):
        resolve_mounts([Volume("e", "empty"), Volume("e", "empty")], [], empty_dir=tmp_path)


def test_select_modules():
    modules = {
        "mpi": ContainerModule(mounts=(MountConfig("/opt/mpi", "/mpi"),), env={"MPI": "1"}),
        "gpu": ContainerModule(env={"CUDA": "1", "MPI": "2"}),
    }
    mounts, env = select_modules(modules, ["mpi", "gpu"])
    assert mounts == [MountConfig("/opt/mpi", "/mpi")] and env == {"MPI": "2", "CUDA": "1"}
    with pytest.raises(UsageError, match="unknown module 'x'"):
        select_modules(modules, ["x"])
