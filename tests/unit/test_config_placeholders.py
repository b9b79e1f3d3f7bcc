"""%{...} placeholders: load-time expansion, run-time expansion, errors."""

import os
import pwd

import pytest

from pcocc.config import expand_runtime, load_config
from pcocc.config.placeholders import PlaceholderError, expand_load, user_name
from pcocc.errors import ConfigError


def test_load_time_placeholders(monkeypatch):
    monkeypatch.setenv("HOME", "/home/ann")
    monkeypatch.setenv("USER", "not-trusted")
    env = {"SCRATCH": "/scratch/ann"}
    me = pwd.getpwuid(os.getuid()).pw_name
    assert expand_load("%{homedir}/x-%{user}", env) == f"/home/ann/x-{me}"
    assert expand_load("%{env:SCRATCH}/img", env) == "/scratch/ann/img"


def test_run_time_placeholders_are_kept_at_load():
    assert expand_load("%{clusterdir}/vm%{vm_rank}.log", {}) == "%{clusterdir}/vm%{vm_rank}.log"


def test_escaped_percent_survives_until_run_time():
    kept = expand_load("100%%{user}", {})
    assert kept == "100%%{user}"
    assert expand_runtime(kept, clusterdir="/c") == "100%{user}"


@pytest.mark.parametrize(
    "value, message",
    [
        ("%{homdir}/x", "unknown placeholder '%{homdir}', did you mean '%{homedir}'?"),
        (
            "%{nothing_like_it}",
            (
                "unknown placeholder '%{nothing_like_it}' (known: %{user}, %{homedir}, "
                "%{env:VAR}, %{clusterdir}, %{vm_rank})"
            ),
        ),
        (
            "%{env:PCOCC_UNSET_VAR}",
            "environment variable PCOCC_UNSET_VAR in '%{env:PCOCC_UNSET_VAR}' is not set",
        ),
    ],
)
def test_bad_placeholders(value, message):
    with pytest.raises(PlaceholderError) as exc:
        expand_load(value, {})
    assert str(exc.value) == message


def test_expand_runtime_walks_lists_and_dicts():
    value = {"args": ["-serial", "file:%{clusterdir}/vm%{vm_rank}.log"], "n": 3}
    out = expand_runtime(value, clusterdir="/run/c1", vm_rank=2)
    assert out == {"args": ["-serial", "file:/run/c1/vm2.log"], "n": 3}
    assert value["args"][1] == "file:%{clusterdir}/vm%{vm_rank}.log"  # a copy


def test_vm_rank_without_rank_is_config_error():
    with pytest.raises(ConfigError, match="only valid in per-VM settings"):
        expand_runtime("vm%{vm_rank}", clusterdir="/c")


def test_unknown_placeholder_in_file_names_file_line_and_key(pcocc_env):
    f = pcocc_env["system"] / "repos.yaml"
    f.write_text("repos:\n  - name: g\n    path: /x\n  - name: h\n    path: '%{homedir}/%{hom}'\n")
    with pytest.raises(ConfigError) as exc:
        load_config(pcocc_env["system"], pcocc_env["user"])
    assert str(exc.value) == (
        f"{f}:5:11: repos[1].path: unknown placeholder '%{{hom}}', did you mean '%{{homedir}}'?"
    )


def test_placeholders_expanded_in_loaded_config(pcocc_env, monkeypatch):
    monkeypatch.setenv("PCOCC_TEST_SITE", "siteA")
    (pcocc_env["system"] / "repos.yaml").write_text(
        "repos:\n  - name: g\n    path: /img/%{env:PCOCC_TEST_SITE}/%{user}\n"
        "cache: {path: '%{homedir}/c'}\n"
    )
    (pcocc_env["system"] / "templates.yaml").write_text(
        "templates:\n  t:\n    custom-args: ['%{clusterdir}/%{vm_rank}', '%{user}']\n"
    )
    cfg = load_config(pcocc_env["system"], pcocc_env["user"])
    assert str(cfg.repos[0].path) == f"/img/siteA/{user_name()}"
    assert cfg.cache.path == pcocc_env["home"] / "c"
    assert cfg.templates["t"]["custom-args"] == ["%{clusterdir}/%{vm_rank}", user_name()]
