"""Image references (directories, sources to import), settings, multi-node run requests."""

from __future__ import annotations

import json
import tarfile

import pytest

from pcocc.config import BatchConfig, ContainerSettings, LocalSettings, MountConfig
from pcocc.ctr.images import (
    file_format,
    image_config_from,
    import_source,
    imported_name,
    resolve_rootfs,
)
from pcocc.ctr.launch import RunOptions
from pcocc.ctr.multinode import read_request, task_hostname, write_request
from pcocc.ctr.pod import RunRequest
from pcocc.ctr.settings import load_settings
from pcocc.errors import ConfigError, Corrupt, NotFound, UsageError


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
    path = write_request(RunRequest([("img", ["-c", "x"]), ("img2", [])], opts))
    back = read_request(path)
    assert back.apps == [("img", ["-c", "x"]), ("img2", [])]
    back = back.options
    assert back.runtime == "runc" and list(back.set_env) == ["A=1"] and back.private_net


# -- image sources that pcocc run imports ---------------------------------------------------


def _tar(path, names):
    with tarfile.open(path, "w") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            tar.addfile(info)
    return path


def test_transport_prefixes_are_sources_unless_a_repo_has_that_name():
    assert import_source("docker://reg:5000/a/b:1", []) == "docker://reg:5000/a/b:1"
    assert import_source("oci-archive:/x.tar", []) == "oci-archive:/x.tar"
    assert import_source("user:busy@2", ["user"]) is None
    assert import_source("oci:layout", ["oci"]) is None  # a repository named oci wins
    assert import_source("busy", []) is None


def test_image_files_by_extension_and_tarball_content(tmp_path):
    assert file_format(tmp_path / "a.sif") == "sif"
    oci = _tar(tmp_path / "o.tar", ["blobs/", "index.json", "oci-layout"])
    docker = _tar(tmp_path / "d.tar", ["abc/layer.tar", "manifest.json"])
    assert file_format(oci) == "oci-archive"
    assert file_format(docker) == "docker-archive"
    assert import_source(str(docker), []) == f"docker-archive:{docker}"
    with pytest.raises(UsageError, match="neither an oci-archive nor a docker-archive"):
        file_format(_tar(tmp_path / "x.tar", ["hello"]))
    (tmp_path / "junk").write_text("not a tarball")
    with pytest.raises(UsageError, match="not an image file"):
        file_format(tmp_path / "junk")


def test_imported_names_are_valid_stable_and_change_with_the_file(tmp_path):
    from pcocc.repo.uri import ImageUri

    ref = "docker://127.0.0.1:5000/pcocc/busy box:1"
    name = imported_name(ref)
    assert name == imported_name(ref) and name.startswith("run-busy-box-1-")
    assert ImageUri.parse(name).name == name
    f = tmp_path / "img.tar"
    f.write_text("one")
    before = imported_name(f"oci-archive:{f}")
    f.write_text("two, longer")
    assert imported_name(f"oci-archive:{f}") != before


def test_task_hostname_is_the_slurm_node_name():
    assert task_hostname({"SLURMD_NODENAME": "n3"}) == "n3"
    assert task_hostname({}) != ""


def test_settings_come_from_the_config_loader(pcocc_env):
    (pcocc_env["system"] / "containers.yaml").write_text(
        "runtime: runc\nenv: {A: '1'}\nmodules:\n  mpi:\n    description: MPI\n"
        "    mounts: [{source: /opt, target: /opt, readonly: true}]\n"
    )
    (pcocc_env["user"] / "containers.yaml").write_text("env: {B: '2'}\n")
    s = load_settings(pcocc_env["system"], pcocc_env["user"])
    assert s.runtime == "runc" and s.env == {"A": "1", "B": "2"}
    assert s.modules["mpi"].mounts[0] == MountConfig("/opt", "/opt", readonly=True)
    preloaded = ContainerSettings(runtime="crun")
    assert load_settings("/nonexistent", "/nonexistent", preloaded=preloaded) is preloaded


def test_a_bad_containers_yaml_names_file_and_key(pcocc_env):
    (pcocc_env["user"] / "containers.yaml").write_text("runtime: docker\n")
    with pytest.raises(ConfigError, match=r"containers.yaml:1.*runtime"):
        load_settings(pcocc_env["system"], pcocc_env["user"])


def test_multinode_run_never_allocates_twice(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from pcocc.ctr.multinode import ALLOCATED_VAR, run_tasks

    config = SimpleNamespace(batch=BatchConfig("local", local=LocalSettings(str(tmp_path))))
    request = RunRequest([("img", [])])
    monkeypatch.delenv("PCOCC_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv(ALLOCATED_VAR, "1")
    with pytest.raises(UsageError, match="must run inside an allocation"):
        run_tasks(request, config, nodes=2, tasks=None, rerun_argv=["x"])
    with pytest.raises(UsageError, match="-N 3 needs at least as many tasks"):
        run_tasks(request, config, nodes=3, tasks=2, rerun_argv=["x"])


def test_a_bare_name_is_an_image_even_beside_a_directory_of_that_name(tmp_path, monkeypatch):
    (tmp_path / "big" / "rootfs").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotFound) as err:
        resolve_rootfs(None, "big")
    assert "image 'big' not found" in err.value.message
    # a path says it is the directory
    for ref in ("./big", str(tmp_path / "big"), "big/"):
        rootfs, _ = resolve_rootfs(None, ref)
        assert rootfs == tmp_path / "big" / "rootfs"


def test_the_hint_names_the_directory_when_no_image_has_that_name(pcocc_env, tmp_path,
                                                                  monkeypatch):
    from pcocc.config import load_config

    (tmp_path / "big").mkdir()
    monkeypatch.chdir(tmp_path)
    config = load_config(str(pcocc_env["system"]), str(pcocc_env["user"]))
    with pytest.raises(NotFound) as err:
        resolve_rootfs(config, "big")
    assert err.value.hint == "to run the directory big of the current directory, write ./big"
