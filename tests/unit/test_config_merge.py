"""System then user, drop-in directories, the admin override rule, built-in defaults."""

from pathlib import Path

import pytest

from pcocc.config import (
    BatchConfig,
    ContainerSettings,
    EtcdConfig,
    SlurmSettings,
    load_config,
    parse_size,
)
from pcocc.config.sizes import format_size
from pcocc.errors import ConfigError


def _write(directory: Path, rel: str, text: str) -> Path:
    path = directory / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _load(env):
    return load_config(env["system"], env["user"])


def test_defaults_when_no_file_exists(pcocc_env):
    cfg = _load(pcocc_env)
    home = pcocc_env["home"]
    assert [(r.name, r.path, r.origin) for r in cfg.repos] == [
        ("user", home / ".pcocc" / "repo", "default")
    ]
    assert cfg.cache.path == home / ".cache" / "pcocc"
    assert cfg.cache.max_size_bytes == 20 * 2**30 and cfg.cache.mode == "dir"
    assert cfg.cache.shared is False
    assert cfg.batch == BatchConfig("local", EtcdConfig("private"))
    assert cfg.containers == ContainerSettings()
    assert cfg.templates == {} and cfg.resources == {} and cfg.networks == {}
    assert str(cfg.origin("batch", "type")) == "built-in default"


def test_nonexistent_directories_are_fine(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config(tmp_path / "nope", tmp_path / "nope2")
    assert cfg.repos[0].name == "user"


def test_system_repos_come_first_and_keep_their_origin(pcocc_env):
    _write(pcocc_env["system"], "repos.yaml", "repos: [{name: global, path: /g}]\n")
    _write(pcocc_env["user"], "repos.yaml", "repos: [{name: mine, path: rel/repo}]\n")
    cfg = _load(pcocc_env)
    assert [(r.name, r.origin) for r in cfg.repos] == [("global", "system"), ("mine", "user")]
    # A relative path is relative to the file that names it.
    assert cfg.repos[1].path == pcocc_env["user"] / "rel" / "repo"


def test_user_may_not_redefine_admin_template(pcocc_env):
    sysf = _write(pcocc_env["system"], "templates.yaml", "templates:\n  compute: {image: a}\n")
    userf = _write(pcocc_env["user"], "templates.yaml", "templates:\n  compute: {image: b}\n")
    with pytest.raises(ConfigError) as exc:
        _load(pcocc_env)
    assert str(exc.value) == (
        f"{userf}:2:3: templates.compute: template 'compute' is set by the admin in "
        f"{sysf}:2 and may not be redefined"
    )
    assert exc.value.hint == (
        "use another name with 'inherits: compute', "
        "or ask the admin to list it in allow-user-override"
    )


def test_user_may_not_redefine_admin_repo(pcocc_env):
    _write(pcocc_env["system"], "repos.yaml", "repos: [{name: global, path: /g}]\n")
    userf = _write(pcocc_env["user"], "repos.yaml", "repos: [{name: global, path: /mine}]\n")
    with pytest.raises(ConfigError, match=rf"^{userf}:1:9: repos\[0\]: repository 'global'"):
        _load(pcocc_env)


@pytest.mark.parametrize("allow", ["true", "[compute]"])
def test_admin_may_allow_redefinition(pcocc_env, allow):
    _write(
        pcocc_env["system"],
        "templates.yaml",
        f"templates:\n  compute: {{image: a}}\n  other: {{image: o}}\nallow-user-override: {allow}\n",
    )
    userf = _write(pcocc_env["user"], "templates.yaml", "templates:\n  compute: {image: b}\n")
    cfg = _load(pcocc_env)
    assert cfg.templates["compute"] == {"image": "b"}
    origin = cfg.origin("templates", "templates", "compute")
    assert (origin.level, origin.file, origin.line) == ("user", userf, 2)


def test_allow_list_allows_only_listed_names(pcocc_env):
    _write(
        pcocc_env["system"],
        "templates.yaml",
        "templates:\n  a: {image: a}\n  b: {image: b}\nallow-user-override: [a]\n",
    )
    _write(pcocc_env["user"], "templates.yaml", "templates:\n  b: {image: mine}\n")
    with pytest.raises(ConfigError, match="template 'b' is set by the admin"):
        _load(pcocc_env)


def test_allow_user_override_is_refused_in_user_files(pcocc_env):
    userf = _write(pcocc_env["user"], "templates.yaml", "allow-user-override: true\n")
    with pytest.raises(ConfigError) as exc:
        _load(pcocc_env)
    assert str(exc.value) == (
        f"{userf}:1:1: allow-user-override: only allowed in the system configuration"
    )


def test_user_settings_fill_what_the_admin_left_unset(pcocc_env):
    _write(pcocc_env["system"], "batch.yaml", "type: slurm\n")
    _write(pcocc_env["user"], "batch.yaml", "slurm: {partition: mine}\n")
    cfg = _load(pcocc_env)
    assert cfg.batch.type == "slurm" and cfg.batch.slurm == SlurmSettings(partition="mine")


def test_user_may_not_change_admin_setting_unless_allowed(pcocc_env):
    sysf = _write(pcocc_env["system"], "batch.yaml", "type: slurm\n")
    userf = _write(pcocc_env["user"], "batch.yaml", "type: local\n")
    with pytest.raises(ConfigError) as exc:
        _load(pcocc_env)
    assert str(exc.value) == (
        f"{userf}:1:1: type: 'type' is set by the admin in {sysf}:1 and may not be redefined"
    )
    _write(pcocc_env["system"], "batch.yaml", "type: slurm\nallow-user-override: [type]\n")
    assert _load(pcocc_env).batch.type == "local"


def test_drop_in_directory_merges_after_main_file(pcocc_env):
    _write(pcocc_env["system"], "templates.yaml", "templates:\n  a: {image: a}\n")
    _write(pcocc_env["system"], "templates.d/20-b.yaml", "templates:\n  b: {image: b}\n")
    _write(pcocc_env["system"], "templates.d/10-c.yaml", "templates:\n  c: {image: c}\n")
    _write(pcocc_env["system"], "templates.d/ignored.txt", "not yaml: [\n")
    _write(pcocc_env["user"], "templates.d/mine.yaml", "templates:\n  d: {inherits: a}\n")
    _write(pcocc_env["system"], "batch.yaml", "type: local\n")
    _write(pcocc_env["system"], "batch.d/site.yaml", "type: slurm\n")  # drop-in wins
    cfg = _load(pcocc_env)
    assert list(cfg.templates) == ["a", "c", "b", "d"]
    assert cfg.origin("templates", "templates", "d").level == "user"
    assert cfg.batch.type == "slurm"


def test_same_name_twice_in_one_level_is_an_error(pcocc_env):
    first = _write(pcocc_env["system"], "templates.yaml", "templates:\n  a: {image: a}\n")
    second = _write(pcocc_env["system"], "templates.d/x.yaml", "templates:\n  a: {image: b}\n")
    with pytest.raises(ConfigError) as exc:
        _load(pcocc_env)
    assert (
        str(exc.value) == f"{second}:2:3: templates.a: template 'a' is already defined in {first}:2"
    )


def test_each_drop_in_file_is_validated_on_its_own(pcocc_env):
    _write(pcocc_env["system"], "templates.yaml", "templates:\n  a: {image: a}\n")
    bad = _write(pcocc_env["system"], "templates.d/x.yaml", "templates:\n  b:\n    imag: b\n")
    with pytest.raises(ConfigError, match=rf"^{bad}:3:5: templates.b.imag: unknown key"):
        _load(pcocc_env)


def test_users_may_not_define_ethernet_networks(pcocc_env):
    userf = _write(
        pcocc_env["user"], "networks.yaml", "networks:\n  e: {type: ethernet, cidr: 10.0.0.0/8}\n"
    )
    with pytest.raises(ConfigError) as exc:
        _load(pcocc_env)
    assert str(exc.value) == (
        f"{userf}:2:13: networks.e.type: only the admin may define ethernet networks"
    )
    _write(pcocc_env["user"], "networks.yaml", "networks:\n  n: {type: user}\n")
    assert _load(pcocc_env).networks == {"n": {"type": "user"}}
    _write(pcocc_env["user"], "networks.yaml", "networks:\n  p: {type: private}\n")
    assert _load(pcocc_env).networks == {"p": {"type": "private"}}


def test_containers_lists_append_and_env_merges(pcocc_env):
    _write(
        pcocc_env["system"],
        "containers.yaml",
        "env: {A: a}\nmounts: [{source: /s, target: /s}]\nmodules: {m: {env: {X: x}}}\n",
    )
    _write(
        pcocc_env["user"],
        "containers.yaml",
        "env: {B: b}\nmounts: [{source: /u, target: /u}]\ndefault-modules: [m]\n",
    )
    c = _load(pcocc_env).containers
    assert c.env == {"A": "a", "B": "b"}
    assert [m.source for m in c.mounts] == ["/s", "/u"]
    assert c.default_modules == ("m",) and c.runtime == "auto"


def test_resource_set_network_must_exist(pcocc_env):
    _write(pcocc_env["system"], "networks.yaml", "networks:\n  nat: {type: user}\n")
    f = _write(pcocc_env["system"], "resources.yaml", "resource-sets:\n  r:\n    networks: [nta]\n")
    with pytest.raises(ConfigError) as exc:
        _load(pcocc_env)
    assert str(exc.value) == (
        f"{f}:3:5: resource-sets.r.networks[0]: unknown network 'nta', did you mean 'nat'?"
    )


def test_unknown_default_module(pcocc_env):
    _write(pcocc_env["system"], "containers.yaml", "default-modules: [home]\n")
    with pytest.raises(ConfigError, match=r"default-modules\[0\]: unknown module 'home'"):
        _load(pcocc_env)


@pytest.mark.parametrize(
    "text, size_bytes",
    [
        ("20G", 20 * 2**30),
        ("512M", 512 * 2**20),
        ("1.5T", int(1.5 * 2**40)),
        ("10GiB", 10 * 2**30),
        ("4096", 4096),
        (123, 123),
        ("7k", 7 * 1024),
    ],
)
def test_parse_size(text, size_bytes):
    assert parse_size(text) == size_bytes


@pytest.mark.parametrize("text", ["", "G", "-1", "1.2.3G", "12Q", True])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_format_size():
    assert format_size(20 * 2**30) == "20G"
    assert format_size(1000) == "1000"


def test_unreadable_directory_is_config_error(pcocc_env, monkeypatch):
    # Running as root in CI, permissions cannot deny us: simulate what a user sees when
    # /etc/pcocc is 0700 (is_file() raises PermissionError there).
    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_file", denied)
    with pytest.raises(ConfigError) as exc:
        _load(pcocc_env)
    assert str(exc.value) == (
        f"{pcocc_env['system'] / 'batch.yaml'}: cannot read: Permission denied"
    )
    assert exc.value.hint == "check the permissions of the configuration directory"


def test_escaped_placeholder_in_repo_path(pcocc_env):
    _write(pcocc_env["system"], "repos.yaml", "repos: [{name: g, path: '/x/%%{user}'}]\n")
    assert str(_load(pcocc_env).repos[0].path) == "/x/%{user}"


def test_collection_with_every_entry_commented_out_is_empty(pcocc_env):
    _write(pcocc_env["system"], "templates.yaml", "templates:\n#  a: {image: x}\n")
    _write(pcocc_env["system"], "containers.yaml", "mounts:\nmodules:\n")
    cfg = _load(pcocc_env)
    assert cfg.templates == {} and cfg.containers.mounts == ()
    _write(pcocc_env["system"], "batch.yaml", "type:\n")  # a setting left empty stays an error
    with pytest.raises(ConfigError, match="type: expected one of local, slurm, got nothing"):
        _load(pcocc_env)
