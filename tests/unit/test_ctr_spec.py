"""OCI runtime spec builder: golden files, and what each insecure option relaxes."""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import pytest

from pcocc.ctr import seccomp
from pcocc.ctr.spec import (
    DEFAULT_CAPABILITIES,
    Identity,
    SpecRequest,
    app_args,
    build_spec,
    parse_insecure_options,
)
from pcocc.ctr.volumes import Mount
from pcocc.errors import UsageError

DATA = Path(__file__).parent / "data"


def _request(**kw) -> SpecRequest:
    base = {
        "rootfs": "/cache/rootfs dir;'x",
        "args": ["/bin/sh", "-c", "echo hi"],
        "env": {"PATH": "/bin", "A": "1"},
        "identity": Identity(1000, 1000, (1000, 27)),
        "cwd": "/work",
        "hostname": "pcocc-1234abcd",
        "mounts": [Mount("/scratch", "/scratch"), Mount("/opt/ro", "/opt/ro", readonly=True)],
    }
    base.update(kw)
    return SpecRequest(**base)


def check_golden(name: str, data: dict) -> None:
    path = DATA / name
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    if os.environ.get("PCOCC_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    expected = path.read_text()
    if text != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(True), text.splitlines(True), str(path), "built"
            )
        )
        pytest.fail(f"spec differs from {path} (PCOCC_UPDATE_GOLDEN=1 to refresh):\n{diff}")


def test_default_spec_matches_golden():
    check_golden("ctr_spec_default.json", build_spec(_request()))


def test_private_net_all_insecure_matches_golden():
    req = _request(private_net=True, insecure=parse_insecure_options(["all"]))
    check_golden("ctr_spec_private_insecure.json", build_spec(req))


def test_identity_maps_caller_to_itself_without_new_privileges():
    spec = build_spec(_request())
    assert spec["linux"]["uidMappings"] == [{"containerID": 1000, "hostID": 1000, "size": 1}]
    assert spec["process"]["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [27]}
    assert spec["process"]["noNewPrivileges"] is True
    assert "resources" not in spec["linux"]


def test_as_root_maps_root_to_the_caller():
    spec = build_spec(_request(identity=Identity(1000, 100, as_root=True)))
    assert spec["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 1000, "size": 1}]
    assert spec["linux"]["gidMappings"] == [{"containerID": 0, "hostID": 100, "size": 1}]
    assert spec["process"]["user"] == {"uid": 0, "gid": 0}


@pytest.mark.parametrize("option", ["capabilities", "paths", "seccomp"])
def test_each_insecure_option_relaxes_only_itself(option):
    strict = build_spec(_request())
    loose = build_spec(_request(insecure=parse_insecure_options([option])))
    caps_relaxed = loose["process"]["capabilities"] != strict["process"]["capabilities"]
    paths_relaxed = "maskedPaths" not in loose["linux"] and "readonlyPaths" not in loose["linux"]
    seccomp_relaxed = "seccomp" not in loose["linux"]
    assert (caps_relaxed, paths_relaxed, seccomp_relaxed) == (
        option == "capabilities",
        option == "paths",
        option == "seccomp",
    )
    assert strict["process"]["capabilities"]["bounding"] == list(DEFAULT_CAPABILITIES)


def test_seccomp_profile_denies_host_administration():
    prof = build_spec(_request())["linux"]["seccomp"]
    assert prof["defaultAction"] == "SCMP_ACT_ALLOW"
    denied = prof["syscalls"][0]["names"]
    for call in ("kexec_load", "init_module", "reboot", "mount", "bpf"):
        assert call in denied
    assert "ptrace" not in denied  # debuggers keep working
    assert denied == sorted(set(seccomp.DENIED_SYSCALLS)), "keep the deny list sorted, unique"


def test_private_net_adds_a_network_namespace_and_mounts_sysfs():
    host = build_spec(_request())
    private = build_spec(_request(private_net=True))
    types = lambda s: [n["type"] for n in s["linux"]["namespaces"]]
    assert "network" not in types(host) and "network" in types(private)
    sys_of = lambda s: next(m for m in s["mounts"] if m["destination"] == "/sys")
    assert sys_of(host)["type"] == "bind" and sys_of(private)["type"] == "sysfs"


def test_readonly_mount_option():
    mounts = {m["destination"]: m for m in build_spec(_request())["mounts"]}
    assert "ro" in mounts["/opt/ro"]["options"] and "rw" in mounts["/scratch"]["options"]


def test_parse_insecure_options():
    assert parse_insecure_options(["paths,seccomp", "capabilities"]) == {
        "paths",
        "seccomp",
        "capabilities",
    }
    with pytest.raises(UsageError, match="unknown value 'image'"):
        parse_insecure_options(["image"])


def test_app_args_follow_entrypoint_and_cmd():
    cfg = {"Entrypoint": ["/entry"], "Cmd": ["default"]}
    assert app_args(cfg, [], "img") == ["/entry", "default"]
    assert app_args(cfg, ["x", "y"], "img") == ["/entry", "x", "y"]
    assert app_args({"Cmd": ["/bin/sh"]}, ["ls"], "img") == ["ls"]
    with pytest.raises(UsageError, match="image 'img' defines no command"):
        app_args({}, [], "img")
