"""batch.yaml and containers.yaml come out of the loader as frozen, typed records."""

from __future__ import annotations

import dataclasses

import pytest

from pcocc.config import (
    BatchConfig,
    ContainerModule,
    ContainerSettings,
    EtcdConfig,
    LocalSettings,
    MountConfig,
    SlurmSettings,
)
from pcocc.config.placeholders import user_name
from pcocc.errors import ConfigError
from tests.unit.test_config_merge import _load, _write


def test_defaults_without_any_file(pcocc_env):
    cfg = _load(pcocc_env)
    assert cfg.batch == BatchConfig()
    assert cfg.batch.type == "local"
    assert cfg.batch.etcd == EtcdConfig(
        mode="private", data_dir="%{clusterdir}/etcd", endpoints=(), ca_cert=None, cert=None,
        key=None, user=None, password_file=None, base_dir=None,
    )  # fmt: skip
    assert cfg.batch.slurm == SlurmSettings(None, (), (), None)
    assert cfg.batch.local == LocalSettings(None)
    c = cfg.containers
    assert (c.runtime, dict(c.env), c.mounts, dict(c.modules), c.default_modules) == (
        "auto", {}, (), {}, ()
    )
    assert c.source == "containers.yaml"


def test_every_batch_field_of_an_external_etcd(pcocc_env):
    sysf = _write(
        pcocc_env["system"],
        "batch.yaml",
        "type: slurm\n"
        "etcd:\n"
        "  endpoints: [e1:2379, e2:2380]\n"
        "  ca-cert: ca.pem\n  cert: c.pem\n  key: k.pem\n"
        "  user: '%{user}'\n  password-file: ~/.etcd-pw\n"
        "slurm:\n  partition: vms\n  alloc-args: [--qos=vm]\n  srun-args: [--mpi=none]\n"
        "  bin-dir: /opt/slurm/bin\n"
        "local: {state-dir: /tmp/jobs}\n",
    )
    batch = _load(pcocc_env).batch
    assert batch.type == "slurm"
    assert batch.etcd == EtcdConfig(
        mode="external",
        endpoints=("e1:2379", "e2:2380"),
        ca_cert="ca.pem",
        cert="c.pem",
        key="k.pem",
        user=user_name(),
        password_file="~/.etcd-pw",
        base_dir=sysf.parent,
    )
    assert batch.slurm == SlurmSettings("vms", ("--qos=vm",), ("--mpi=none",), "/opt/slurm/bin")
    assert batch.local == LocalSettings("/tmp/jobs")


def test_private_etcd_data_dir(pcocc_env):
    _write(pcocc_env["system"], "batch.yaml", "etcd:\n  mode: private\n  data-dir: /d/%{clusterdir}\n")
    etcd = _load(pcocc_env).batch.etcd
    assert (etcd.mode, etcd.data_dir, etcd.endpoints) == ("private", "/d/%{clusterdir}", ())


def test_relative_etcd_paths_start_at_the_file_that_set_the_password_file(pcocc_env):
    _write(pcocc_env["system"], "batch.yaml", "etcd: {endpoints: ['h:1'], ca-cert: ca.pem}\n"
           "allow-user-override: [etcd]\n")  # fmt: skip
    userf = _write(pcocc_env["user"], "batch.yaml", "etcd: {endpoints: ['h:1'], password-file: pw}\n")
    assert _load(pcocc_env).batch.etcd.base_dir == userf.parent


def test_a_user_file_overrides_an_allowed_batch_setting(pcocc_env):
    _write(
        pcocc_env["system"],
        "batch.yaml",
        "type: slurm\nslurm: {partition: all}\nallow-user-override: [slurm]\n",
    )
    _write(pcocc_env["user"], "batch.yaml", "slurm: {partition: mine, srun-args: [-v]}\n")
    batch = _load(pcocc_env).batch
    assert batch.type == "slurm"
    assert batch.slurm == SlurmSettings(partition="mine", srun_args=("-v",))
    # not allowed: the user file is refused, the admin's value is never replaced
    _write(pcocc_env["user"], "batch.yaml", "type: local\n")
    with pytest.raises(ConfigError, match="'type' is set by the admin"):
        _load(pcocc_env)


def test_every_containers_field(pcocc_env):
    _write(
        pcocc_env["system"],
        "containers.yaml",
        "runtime: runc\n"
        "env: {A: a}\n"
        "mounts: [{source: /s, target: /t, readonly: true, optional: true}]\n"
        "modules:\n"
        "  mpi:\n    description: MPI\n    mounts: [{source: /opt, target: /opt}]\n"
        "    env: {M: '1'}\n"
        "default-modules: [mpi]\n"
        "allow-user-override: [runtime]\n",
    )
    _write(
        pcocc_env["user"],
        "containers.yaml",
        "runtime: crun\nenv: {B: b}\nmounts: [{source: /u, target: /u}]\n"
        "modules: {mine: {env: {X: x}}}\ndefault-modules: [mine]\n",
    )
    c = _load(pcocc_env).containers
    assert c.runtime == "crun"  # allowed override
    assert c.env == {"A": "a", "B": "b"}
    assert c.mounts == (MountConfig("/s", "/t", True, True), MountConfig("/u", "/u"))
    assert dict(c.modules) == {
        "mpi": ContainerModule("MPI", (MountConfig("/opt", "/opt", False, False),), {"M": "1"}),
        "mine": ContainerModule("", (), {"X": "x"}),
    }
    assert c.default_modules == ("mpi", "mine")


def test_the_records_are_frozen(pcocc_env):
    _write(pcocc_env["system"], "containers.yaml", "env: {A: a}\nmodules: {m: {env: {X: x}}}\n")
    cfg = _load(pcocc_env)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.batch.type = "slurm"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.batch.etcd.endpoints = ("x:1",)  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.containers.env["B"] = "b"  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg.containers.modules["m"].env["Y"] = "y"  # type: ignore[index]


def test_records_rebuilt_from_the_document_cache_are_the_same(pcocc_env):
    _write(pcocc_env["system"], "batch.yaml", "type: slurm\netcd: {endpoints: ['h:1']}\n")
    _write(pcocc_env["system"], "containers.yaml", "env: {A: '%{user}'}\n")
    first = _load(pcocc_env)
    cache = pcocc_env["home"] / ".cache" / "pcocc" / "config-docs"
    assert len(list(cache.iterdir())) == 2  # both documents saved, parsed
    second = _load(pcocc_env)  # from the saved documents
    assert second.batch == first.batch and second.containers == first.containers
    assert "%{" not in second.containers.env["A"]  # placeholders expanded after the cache


def test_from_data_builds_without_a_file():
    assert BatchConfig.from_data({}) == BatchConfig()
    assert BatchConfig.from_data({"etcd": {"endpoints": ["h:1"]}}).etcd.mode == "external"
    assert ContainerSettings.from_data({}) == ContainerSettings()
