"""pcocc 0.7's configuration files (names at the top level) load like the wrapped form; its
settings this version cannot honour are refused with file:line and a reason; and
``pcocc admin check-config`` lists every problem of a directory at once.

The 0.7 files below are written from the format's description (pcocc 0.7's man pages
templates.yaml(5), resources.yaml(5), networks.yaml(5)), in the shape of its sample confs/.
"""

from __future__ import annotations

import pytest
from pcocc.checkconfig import check_directory
from pcocc.cli.main import run_cli
from pcocc.config import load_config
from pcocc.errors import ConfigError

# templates.yaml as pcocc 0.7 writes it: names at the top level, a mount point as a bare
# path, persistent drives as `PATH: {settings}`; only settings this version has.
TEMPLATES_07 = """\
# Define a template named 'example'
example:
  resource-set: cluster
  image: user:myexample
  disk-model: ide
  persistent-drives:
  - /tmp/first.raw
  - /tmp/second.qcow2:
      cache: unsafe
  description: Example of a template
  mount-points:
    homedir:
      path: /home
      readonly: false
    scratch: /tmp
  custom-args:
    - -cdrom
    - /path/to/my-iso
  qemu-bin: /usr/bin/qemu-system-x86_64
  nic-model: e1000
  instance-id: my-instance
  user-data: "%{homedir}/cloud-init.yaml"

example2:
  inherits: example
  full-node: true
  machine-type: pc
  emulator-cores: 1
  bind-vcpus: true
"""

TEMPLATES_WRAPPED = """\
templates:
  example:
    resource-set: cluster
    image: user:myexample
    disk-model: ide
    persistent-drives:
    - /tmp/first.raw
    - {path: /tmp/second.qcow2, cache: unsafe}
    description: Example of a template
    mount-points:
      homedir: {path: /home, readonly: false}
      scratch: {path: /tmp}
    custom-args: [-cdrom, /path/to/my-iso]
    qemu-bin: /usr/bin/qemu-system-x86_64
    nic-model: e1000
    instance-id: my-instance
    user-data: "%{homedir}/cloud-init.yaml"
  example2:
    inherits: example
    full-node: true
    machine-type: pc
    emulator-cores: 1
    bind-vcpus: true
"""

RESOURCES_07 = """\
# sets of resources which can be used by VM templates
default:
  networks:
    - nat-rssh

cluster:
  networks:
    - nat-rssh
    - pv
"""

RESOURCES_WRAPPED = """\
resource-sets:
  default: {networks: [nat-rssh]}
  cluster: {networks: [nat-rssh, pv]}
"""

# The network names of pcocc 0.7's sample, with types this version has.
NETWORKS_07 = """\
nat-rssh:
  type: user
pv:
  type: private
  mtu: 1400
"""

NETWORKS_WRAPPED = """\
networks:
  nat-rssh: {type: user}
  pv: {type: private, mtu: 1400}
"""


def _write(directory, files):
    for name, text in files.items():
        (directory / f"{name}.yaml").write_text(text)


def _load(pcocc_env):
    return load_config(pcocc_env["system"], pcocc_env["user"])


def test_07_files_load_exactly_like_the_wrapped_form(pcocc_env, tmp_path):
    _write(pcocc_env["system"], {"templates": TEMPLATES_07, "resources": RESOURCES_07,
                                 "networks": NETWORKS_07})
    old = _load(pcocc_env)
    wrapped = tmp_path / "wrapped"
    wrapped.mkdir()
    _write(wrapped, {"templates": TEMPLATES_WRAPPED, "resources": RESOURCES_WRAPPED,
                     "networks": NETWORKS_WRAPPED})
    new = load_config(wrapped, pcocc_env["user"])
    assert old.templates == new.templates
    assert old.resources == new.resources
    assert old.networks == new.networks
    assert old.templates["example"]["persistent-drives"][1] == {
        "path": "/tmp/second.qcow2", "cache": "unsafe"}
    assert old.templates["example"]["mount-points"]["scratch"] == {"path": "/tmp"}
    # positions are those of the 0.7 file itself
    origin = old.origin("templates", "templates", "example2")
    assert (origin.file, origin.line) == (pcocc_env["system"] / "templates.yaml", 24)
    assert old.origin("templates", "templates", "example", "nic-model").line == 20
    assert old.origin("resources", "resource-sets", "cluster").line == 6


def test_07_errors_name_the_line_of_the_07_file(pcocc_env):
    (pcocc_env["system"] / "templates.yaml").write_text(
        "example:\n  image: user:x\n  disk-model: scsi\n")
    with pytest.raises(ConfigError) as exc:
        _load(pcocc_env)
    f = pcocc_env["system"] / "templates.yaml"
    assert str(exc.value).startswith(
        f"{f}:3:15: templates.example.disk-model: expected one of virtio, virtio-scsi, ide")


def test_07_drive_path_errors_point_at_the_path(pcocc_env):
    f = pcocc_env["system"] / "templates.yaml"
    f.write_text("t:\n  persistent-drives:\n  - /tmp/d.raw:\n      cache: sometimes\n")
    with pytest.raises(ConfigError) as exc:
        _load(pcocc_env)
    assert str(exc.value).startswith(
        f"{f}:4:14: templates.t.persistent-drives[0].cache: expected one of")


def test_user_file_in_07_form_adds_templates(pcocc_env):
    _write(pcocc_env["system"], {"templates": "templates:\n  base: {image: user:a}\n"})
    (pcocc_env["user"] / "templates.yaml").write_text("mine:\n  inherits: base\n")
    assert set(_load(pcocc_env).templates) == {"base", "mine"}


# (file, 0.7 text, line:col, key path, words of the reason)
REFUSED = [
    ("templates", "t:\n  image: user:a\n  ispod: true\n", "3:3", "templates.t.ispod",
     "pods of pcocc 0.7"),
    ("templates", "t:\n  disk-cache: unsafe\n", "2:3", "templates.t.disk-cache", "cache mode"),
    ("templates", "t:\n  persistent-drives:\n  - /d.raw:\n      mmp: 'no'\n", "4:7",
     "templates.t.persistent-drives[0].mmp", "multi-mount protection"),
    ("templates", "t:\n  persistent-drives:\n  - {path: /d.raw, mmp: cluster}\n", "3:20",
     "templates.t.persistent-drives[0].mmp", "multi-mount protection"),
    ("templates", "t:\n  image: /path/to/images/myexample\n", "2:10", "templates.t.image",
     "directory of images"),
    ("resources", "default:\n  default: true\n  networks: []\n", "2:3",
     "resource-sets.default.default", "no default resource set"),
    ("networks", "nat-rssh:\n  type: nat\n  settings:\n    nat-network: 10.250.0.0/16\n",
     "2:9", "networks.nat-rssh.type", "network type 'nat'"),
    ("networks", "pv:\n  type: pv\n  settings: {mtu: 1500}\n", "2:9", "networks.pv.type",
     "network type 'pv'"),
    ("networks", "ib:\n  type: ib\n  settings: {host-device: mlx5_0}\n", "2:9",
     "networks.ib.type", "InfiniBand"),
    ("networks", "br:\n  type: bridged\n  settings: {host-bridge: br0}\n", "2:9",
     "networks.br.type", "host bridge"),
    ("networks", "eth:\n  type: ethernet\n  settings: {network-layer: L2}\n", "3:3",
     "networks.eth.settings", "'settings:'"),
]


@pytest.mark.parametrize("name,text,where,path,reason", REFUSED,
                         ids=[r[3] for r in REFUSED])
def test_07_settings_not_supported_are_refused_with_file_line(pcocc_env, name, text, where,
                                                               path, reason):
    f = pcocc_env["system"] / f"{name}.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        _load(pcocc_env)
    message = str(exc.value)
    assert message.startswith(f"{f}:{where}: {path}: ")
    assert reason in message


def test_refused_in_the_wrapped_form_too(pcocc_env):
    f = pcocc_env["system"] / "templates.yaml"
    f.write_text("templates:\n  t:\n    disk-cache: unsafe\n")
    with pytest.raises(ConfigError, match=f"^{f}:3:5: templates.t.disk-cache: "):
        _load(pcocc_env)


def test_mount_point_types_and_instance_id(pcocc_env):
    _write(pcocc_env["system"], {"templates": (
        "t:\n  instance-id: site-%{vm_rank}\n  mount-points:\n"
        "    a: {path: /srv, type: virtio-9p, readonly: true}\n"
        "    b: {path: /srv, type: virtio-fs}\n")})
    tpl = _load(pcocc_env).templates["t"]
    assert tpl["mount-points"]["a"]["type"] == "virtio-9p"
    (pcocc_env["system"] / "templates.yaml").write_text(
        "t:\n  mount-points:\n    a: {path: /srv, type: nfs}\n")
    with pytest.raises(ConfigError, match=r":3:27: templates.t.mount-points.a.type: expected "
                                          r"one of virtio-fs, virtio-9p"):
        _load(pcocc_env)


PROBLEMS = {
    "templates": ("example:\n  image: user:a\n  disk-cache: unsafe\n  frob: 1\n"
                  "other:\n  ispod: true\n"),
    "resources": "default:\n  networks: [nat-rssh]\n  cores: many\n",
    "networks": "nat-rssh:\n  type: nat\n  settings: {mtu: 1500}\n",
}


def test_check_config_lists_every_problem_at_once(tmp_path):
    _write(tmp_path, PROBLEMS)
    (tmp_path / "batch.yaml").write_text("type: [slurm\n")
    report = check_directory(tmp_path)
    lines = [str(p).split(": ", 2)[:2] for p in report.problems]
    assert lines == [
        [f"{tmp_path}/batch.yaml:2:1", "invalid YAML"],
        [f"{tmp_path}/templates.yaml:3:3", "templates.example.disk-cache"],
        [f"{tmp_path}/templates.yaml:6:3", "templates.other.ispod"],
        [f"{tmp_path}/templates.yaml:4:3", "templates.example.frob"],
        [f"{tmp_path}/resources.yaml:3:10", "resource-sets.default.cores"],
        [f"{tmp_path}/networks.yaml:2:9", "networks.nat-rssh.type"],
    ]


def test_check_config_checks_references_once_files_are_valid(tmp_path):
    _write(tmp_path, {"templates": "t:\n  resource-set: nope\n",
                      "resources": "small:\n  networks: []\n"})
    report = check_directory(tmp_path)
    assert len(report.problems) == 1
    assert str(report.problems[0]).startswith(f"{tmp_path}/templates.yaml:2:3: ")
    assert "unknown resource set 'nope'" in str(report.problems[0])


def test_check_config_command(tmp_path, pcocc_env, capsys):
    _write(tmp_path, PROBLEMS)
    assert run_cli(["admin", "check-config", str(tmp_path)]) == 2
    out = capsys.readouterr()
    assert out.out.count(f"{tmp_path}/") == 5
    assert "hint: use 'type: user'" in out.out
    assert "5 problem(s)" in out.err
    good = tmp_path / "good"
    good.mkdir()
    _write(good, {"templates": TEMPLATES_07, "resources": RESOURCES_07,
                  "networks": NETWORKS_07})
    assert run_cli(["admin", "check-config", str(good)]) == 0
    assert capsys.readouterr().out == (
        f"OK: 3 file(s) in {good}: 2 templates, 2 resource sets, 2 networks, 0 repositories\n")
    assert run_cli(["admin", "check-config", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err
