"""Every schema: a good file loads, bad files give one exact, located message."""

import json
from importlib import resources

import pytest

from pcocc.config import ContainerModule, MountConfig, load_config
from pcocc.config.validate import FILES
from pcocc.errors import ConfigError

GOOD = {
    "batch": """\
type: slurm
etcd:
  endpoints: [etcd1:2379, 10.0.0.2:2379]
  user: "%{user}"
slurm:
  partition: vms
  alloc-args: [--qos=vm]
""",
    "repos": """\
repos:
  - name: global
    path: /var/lib/pcocc/images
    description: admins
cache: {path: /tmp/cache, max-size: 1.5G, mode: squashfs}
""",
    "templates": """\
templates:
  base:
    image: global:debian@3
    accel: tcg
    persistent-drives: [/tmp/a.qcow2, {path: /tmp/b.qcow2, cache: none}]
    mount-points: {home: {path: /home, readonly: true}}
    custom-args: [-name, "vm%{vm_rank}"]
""",
    "resources": """\
resource-sets:
  small: {cores: 2, memory: 2G, networks: []}
""",
    "networks": """\
networks:
  nat: {type: user, forwards: [80]}
  eth: {type: ethernet, cidr: 10.1.0.0/16, mtu: 9000}
  priv: {type: private, cidr: 10.2.0.0/24, mtu: 1400, description: between the VMs}
""",
    "containers": """\
runtime: crun
env: {LANG: C.UTF-8}
mounts: [{source: /etc/hosts, target: /etc/hosts, readonly: true}]
modules:
  home: {mounts: [{source: "%{homedir}", target: "%{homedir}"}], env: {A: "1"}}
default-modules: [home]
""",
}

# (file, content, expected message after "<path of file>:")
BAD = [
    (
        "batch",
        "type: slurmm\n",
        "1:7: type: expected one of local, slurm, got 'slurmm', did you mean 'slurm'?",
    ),
    ("batch", "typ: slurm\n", "1:1: typ: unknown key 'typ', did you mean 'type'?"),
    (
        "batch",
        "etcd: {mode: private, endpoints: [a:1]}\n",
        "1:23: etcd.endpoints: unknown key 'endpoints'",
    ),
    (
        "batch",
        "etcd: {endpoints: [localhost]}\n",
        "1:20: etcd.endpoints[0]: expected host:port, got 'localhost'",
    ),
    (
        "batch",
        "etcd: {mode: privat}\n",
        "1:7: etcd: expected {mode: private} or {endpoints: [host:port, ...]}, got a mapping",
    ),
    (
        "batch",
        "slurm: {alloc-args: --qos=vm}\n",
        "1:21: slurm.alloc-args: expected a list of strings, got '--qos=vm'",
    ),
    ("repos", "repos:\n  - name: g\n", "2:5: repos[0]: missing required key 'path'"),
    (
        "repos",
        "repos:\n  - name: g\n    path: 42\n",
        "3:11: repos[0].path: expected a directory path, got 42",
    ),
    (
        "repos",
        "repos:\n  - name: g\n    path: /x\n    descripton: y\n",
        "4:5: repos[0].descripton: unknown key 'descripton', did you mean 'description'?",
    ),
    (
        "repos",
        "cache: {path: /c, max-size: 20X}\n",
        "1:29: cache.max-size: expected a size like 512M, 20G or a number of bytes, got '20X'",
    ),
    (
        "repos",
        "cache: {path: /c, max_size: 20G}\n",
        "1:19: cache.max_size: unknown key 'max_size', did you mean 'max-size'?",
    ),
    (
        "repos",
        "repos:\n  - name: 'a b'\n    path: /x\n",
        "2:11: repos[0].name: expected a repository name (letters, digits, '.', '_', '-'), got 'a b'",
    ),
    (
        "templates",
        "templates:\n  compute:\n    image: 'bad uri!'\n",
        "3:12: templates.compute.image: expected a string like [repo:]name[@rev], https://..., "
        "file://... or host/name[:version], got 'bad uri!'",
    ),
    (
        "templates",
        "templates:\n  compute:\n    imgae: x\n",
        "3:5: templates.compute.imgae: unknown key 'imgae', did you mean 'image'?",
    ),
    (
        "templates",
        "templates:\n  c:\n    accel: kmv\n",
        "3:12: templates.c.accel: expected one of auto, kvm, tcg, got 'kmv', did you mean 'kvm'?",
    ),
    (
        "templates",
        "templates:\n  c:\n    full-node: 'yes'\n",
        "3:16: templates.c.full-node: expected true or false, got 'yes'",
    ),
    (
        "templates",
        "templates:\n  c:\n    persistent-drives:\n      - {path: x, cahce: none}\n",
        "4:19: templates.c.persistent-drives[0].cahce: unknown key 'cahce', did you mean 'cache'?",
    ),
    (
        "templates",
        "templates:\n  c:\n    persistent-drives: [42]\n",
        "3:25: templates.c.persistent-drives[0]: expected a path or {path, format, cache, readonly}, got 42",
    ),
    (
        "templates",
        "templates:\n  'a b': {}\n",
        "2:3: templates.a b: bad name 'a b': expected a template name (letters, digits, '.', '_', '-')",
    ),
    (
        "templates",
        "templates:\n  c: 3\n",
        "2:6: templates.c: expected a mapping of template settings, got 3",
    ),
    (
        "resources",
        "resource-sets:\n  r: {cores: 0}\n",
        "2:14: resource-sets.r.cores: expected a number at least 1, got 0",
    ),
    (
        "resources",
        "resource-sets:\n  r: {memory: lots}\n",
        "2:15: resource-sets.r.memory: expected a size like 512M or 4G, got 'lots'",
    ),
    (
        "resources",
        "resource-sets:\n  r: {core: 2}\n",
        "2:7: resource-sets.r.core: unknown key 'core', did you mean 'cores'?",
    ),
    (
        "networks",
        "networks:\n  n: {type: user, forward: [22]}\n",
        "2:19: networks.n.forward: unknown key 'forward', did you mean 'forwards'?",
    ),
    (
        "networks",
        "networks:\n  n: {type: ethernet}\n",
        "2:6: networks.n: missing required key 'cidr'",
    ),
    (
        "networks",
        "networks:\n  n: {type: bridge}\n",
        "2:6: networks.n: expected a network with type: user, type: private or type: ethernet,"
        " got a mapping",
    ),
    (
        "networks",
        "networks:\n  p: {type: private, mtu: 100}\n",
        "2:27: networks.p.mtu: expected a number at least 576, got 100",
    ),
    (
        "networks",
        "networks:\n  p: {type: private, bridge-prefix: br}\n",
        "2:22: networks.p.bridge-prefix: unknown key 'bridge-prefix'",
    ),
    (
        "networks",
        "networks:\n  n: {type: user, forwards: [70000]}\n",
        "2:30: networks.n.forwards[0]: expected a number at most 65535, got 70000",
    ),
    (
        "containers",
        "runtime: docker\n",
        "1:10: runtime: expected one of auto, crun, runc, unshare, vm, got 'docker'",
    ),
    ("containers", "env: {A: 1}\n", "1:10: env.A: expected a string (quote numbers), got 1"),
    (
        "containers",
        "env: {1A: x}\n",
        "1:7: env.1A: bad name '1A': expected an environment variable name",
    ),
    (
        "containers",
        "mounts: [{source: /a, target: relative}]\n",
        "1:31: mounts[0].target: expected an absolute path, got 'relative'",
    ),
    (
        "containers",
        "modules:\n  m: {mount: []}\n",
        "2:7: modules.m.mount: unknown key 'mount', did you mean 'mounts'?",
    ),
]


@pytest.mark.parametrize("name", FILES)
def test_good_file_loads(pcocc_env, name):
    (pcocc_env["system"] / f"{name}.yaml").write_text(GOOD[name])
    cfg = load_config(pcocc_env["system"], pcocc_env["user"])
    home = str(pcocc_env["home"])
    loaded = {
        "batch": lambda: (cfg.batch.type, cfg.batch.etcd.endpoints[1]),
        "repos": lambda: (cfg.repos[0].name, cfg.repos[0].origin, cfg.cache.max_size_bytes),
        "templates": lambda: (cfg.templates["base"]["image"], cfg.templates["base"]["custom-args"]),
        "resources": lambda: (cfg.resources["small"]["cores"], cfg.resources["small"]["memory"]),
        "networks": lambda: (cfg.networks["eth"]["mtu"], cfg.networks["nat"]["type"]),
        "containers": lambda: (cfg.containers.runtime, cfg.containers.modules["home"]),
    }[name]()
    expected = {
        "batch": ("slurm", "10.0.0.2:2379"),
        "repos": ("global", "system", 3 * 2**29),
        "templates": ("global:debian@3", ["-name", "vm%{vm_rank}"]),
        "resources": (2, "2G"),
        "networks": (9000, "user"),
        "containers": (
            "crun",
            ContainerModule("", (MountConfig(home, home),), {"A": "1"}),
        ),
    }[name]
    assert loaded == expected
    assert cfg.origin(name, *next(k for k in cfg.origins if k[0] == name)[1:]).level == "system"


@pytest.mark.parametrize("name, text, message", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_file_gives_located_message(pcocc_env, name, text, message):
    f = pcocc_env["system"] / f"{name}.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(pcocc_env["system"], pcocc_env["user"])
    assert str(exc.value) == f"{f}:{message}"


def test_every_schema_file_is_covered_by_good_and_bad_cases():
    assert set(GOOD) == set(FILES)
    assert {b[0] for b in BAD} == set(FILES)


def test_unknown_key_hint_lists_allowed_keys(pcocc_env):
    (pcocc_env["system"] / "batch.yaml").write_text("typ: local\n")
    with pytest.raises(ConfigError) as exc:
        load_config(pcocc_env["system"], pcocc_env["user"])
    assert exc.value.hint == "allowed keys: allow-user-override, etcd, local, slurm, type"


def _objects(schema, path="$"):
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            yield path, schema
        for key, sub in schema.items():
            yield from _objects(sub, f"{path}.{key}")
    elif isinstance(schema, list):
        for i, sub in enumerate(schema):
            yield from _objects(sub, f"{path}[{i}]")


@pytest.mark.parametrize("name", FILES)
def test_schema_is_draft_2020_12_and_closed(name):
    from jsonschema import Draft202012Validator

    text = resources.files("pcocc.config").joinpath("schemas", f"{name}.json").read_text()
    schema = json.loads(text)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    for path, obj in _objects(schema):
        # Closed objects, or maps of named entries whose values are themselves checked.
        assert "additionalProperties" in obj, f"{name}.json {path}: no additionalProperties"
        assert obj["additionalProperties"] is False or isinstance(
            obj["additionalProperties"], dict
        ), path


def test_entry_at_top_level_gets_a_hint(pcocc_env):
    # names at the top level alone are pcocc 0.7's form (tests/unit/test_config_legacy.py);
    # next to 'templates:' they are a mistake
    f = pcocc_env["system"] / "templates.yaml"
    f.write_text("templates:\n  a: {image: x}\ncompute:\n  image: x\n")
    with pytest.raises(ConfigError) as exc:
        load_config(pcocc_env["system"], pcocc_env["user"])
    assert str(exc.value) == f"{f}:3:1: compute: unknown key 'compute'"
    assert exc.value.hint == "if 'compute' is a template, put it under 'templates:'"
