"""Template inheritance, origins of settings, and the errors of broken chains."""

from pathlib import Path

import pytest

from pcocc.config import load_config
from pcocc.errors import ConfigError, NotFound
from pcocc.templates import TEMPLATE_DEFAULTS, resolve_all, resolve_template

SMALL = "resource-sets:\n  small: {cores: 2}\n"


def _setup(env, system: str = "", user: str = "", resources: str = SMALL):
    if system:
        (env["system"] / "templates.yaml").write_text(system)
    if user:
        (env["user"] / "templates.yaml").write_text(user)
    if resources:
        (env["system"] / "resources.yaml").write_text(resources)
    return load_config(env["system"], env["user"])


SYSTEM = """\
templates:
  base:
    description: the base
    image: global:debian@2
    accel: tcg
    custom-args: [-a]
  mid:
    inherits: base
    custom-args: [-b]
    resource-set: small
  leaf:
    inherits: mid
    image: global:debian@3
"""


def test_chain_resolves_key_by_key(pcocc_env):
    cfg = _setup(pcocc_env, SYSTEM)
    t = resolve_template(cfg, "leaf")
    assert t.chain == ["leaf", "mid", "base"] and t.parent == "mid"
    assert t.image == "global:debian@3"
    assert t.get("custom-args") == ["-b"]  # replaced whole, not appended
    assert t.get("accel") == "tcg" and t.description == "the base"
    assert t.get("full-node") is False  # built-in default
    assert {k: (s.template, s.origin.line) for k, s in t.settings.items() if s.template} == {
        "image": ("leaf", 13),
        "custom-args": ("mid", 9),
        "resource-set": ("mid", 10),
        "description": ("base", 3),
        "accel": ("base", 5),
    }
    assert t.settings["mount-points"].template is None
    assert t.settings["image"].origin.file == pcocc_env["system"] / "templates.yaml"
    assert t.resources == {"cores": 2, "memory": "1G", "networks": []}
    assert t.memory_bytes == 2**30
    assert "inherits" not in t.settings


def test_defaults_for_a_bare_template(pcocc_env):
    cfg = _setup(pcocc_env, "templates:\n  bare: {}\n")
    t = resolve_template(cfg, "bare")
    assert {k: s.value for k, s in t.settings.items()} == TEMPLATE_DEFAULTS
    assert t.image is None and t.resource_set is None and t.level == "system"


def test_user_template_inherits_system_one(pcocc_env):
    cfg = _setup(pcocc_env, SYSTEM, "templates:\n  mine:\n    inherits: base\n    accel: kvm\n")
    t = resolve_template(cfg, "mine")
    assert t.level == "user" and t.get("accel") == "kvm" and t.image == "global:debian@2"
    assert t.settings["accel"].origin.file == pcocc_env["user"] / "templates.yaml"
    assert list(resolve_all(cfg)) == ["base", "mid", "leaf", "mine"]


@pytest.mark.parametrize(
    "text, line, key, cycle",
    [
        ("templates:\n  a: {inherits: a}\n", 2, "a", "a -> a"),
        (
            "templates:\n  a: {inherits: b}\n  b: {inherits: c}\n  c: {inherits: a}\n",
            4,
            "c",
            "a -> b -> c -> a",
        ),
    ],
)
def test_cycles_are_config_errors(pcocc_env, text, line, key, cycle):
    cfg = _setup(pcocc_env, text)
    f = pcocc_env["system"] / "templates.yaml"
    with pytest.raises(ConfigError) as exc:
        resolve_template(cfg, "a")
    assert str(exc.value) == (f"{f}:{line}:7: templates.{key}.inherits: inheritance cycle {cycle}")


def test_missing_parent(pcocc_env):
    cfg = _setup(pcocc_env, "templates:\n  base: {}\n  child:\n    inherits: bsae\n")
    f = pcocc_env["system"] / "templates.yaml"
    with pytest.raises(ConfigError) as exc:
        resolve_all(cfg)
    assert str(exc.value) == (
        f"{f}:4:5: templates.child.inherits: unknown template 'bsae', did you mean 'base'?"
    )


def test_unknown_resource_set_is_reported_where_it_is_set(pcocc_env):
    cfg = _setup(
        pcocc_env,
        "templates:\n  base: {resource-set: smal}\n  child: {inherits: base}\n",
        resources="resource-sets:\n  small: {}\n",
    )
    f = pcocc_env["system"] / "templates.yaml"
    with pytest.raises(ConfigError) as exc:
        resolve_template(cfg, "child")
    assert str(exc.value) == (
        f"{f}:2:10: templates.base.resource-set: unknown resource set 'smal', did you mean 'small'?"
    )


def test_unknown_template_is_not_found(pcocc_env):
    cfg = _setup(pcocc_env, SYSTEM)
    with pytest.raises(NotFound) as exc:
        resolve_template(cfg, "lef")
    assert str(exc.value) == "template 'lef' not found, did you mean 'leaf'?"


def test_to_json_names_origins(pcocc_env):
    cfg = _setup(pcocc_env, SYSTEM)
    data = resolve_template(cfg, "mid").to_json()
    assert data["inherits"] == "base" and data["level"] == "system"
    assert data["settings"]["image"] == {
        "value": "global:debian@2",
        "template": "base",
        "file": str(Path(pcocc_env["system"]) / "templates.yaml"),
        "line": 4,
    }
    assert data["settings"]["accel"]["template"] == "base"
    assert data["settings"]["full-node"]["template"] is None
