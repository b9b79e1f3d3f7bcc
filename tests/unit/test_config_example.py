"""The example configuration in confs/ is complete and valid."""

from pathlib import Path

import pytest

from pcocc.config import EtcdConfig, load_config
from pcocc.config.validate import FILES
from pcocc.templates import resolve_all

CONFS = Path(__file__).resolve().parents[2] / "confs"


def test_every_file_is_there():
    assert sorted(p.stem for p in CONFS.glob("*.yaml")) == sorted(FILES)


def test_example_loads_and_resolves(pcocc_env):
    cfg = load_config(CONFS, pcocc_env["user"])
    home = pcocc_env["home"]
    assert [(r.name, r.origin) for r in cfg.repos] == [("global", "system"), ("user", "system")]
    assert cfg.repos[1].path == home / ".pcocc" / "repo"
    assert cfg.cache.path == home / ".cache" / "pcocc"
    assert cfg.cache.max_size_bytes == 20 * 2**30
    assert cfg.batch.type == "slurm" and cfg.batch.etcd == EtcdConfig(base_dir=CONFS)
    assert cfg.containers.runtime == "auto"
    templates = resolve_all(cfg)
    assert templates["bigmem"].chain == ["bigmem", "compute", "debian"]
    assert templates["compute"].resources["networks"] == ["nat", "cluster"]
    assert templates["compute"].get("mount-points")["home"]["path"] == str(home)


@pytest.mark.parametrize("name", FILES)
def test_every_file_has_comments(name):
    text = (CONFS / f"{name}.yaml").read_text()
    assert text.startswith(f"# {name}.yaml: ")
