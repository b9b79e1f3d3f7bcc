"""Every record pcocc reads back from etcd goes through a strict parser: hostile, malformed,
oversized and wrong-typed values are refused with a message naming the key and the field;
what pcocc writes reads back unchanged."""

from __future__ import annotations

import base64
import json
import os
import socket as socketlib

import pytest

from pcocc import fields
from pcocc.cluster import rundir
from pcocc.cluster.definition import ClusterDefinition, build_definition
from pcocc.cluster.lookup import clusters_of
from pcocc.cluster.stored import check_settings
from tests.fixtures.memkv import MemoryKv
from pcocc.cluster.record import ClusterRecord
from pcocc.cluster.sshkeys import known_hosts_text, ssh_config_text
from pcocc.cluster.state import ClusterState
from pcocc.cluster.vmstate import VmRecord, parse_forward
from pcocc.errors import ConfigError, Corrupt
from pcocc.kv import keys
from pcocc.net.private import parse_switch_record
from pcocc.net.switch import parse_port_record

KEY = "/pcocc/users/bob/clusters/7/vms/0/state"


def fake_key(seed: int = 1, kind: str = "ssh-ed25519") -> str:
    blob = len(kind).to_bytes(4, "big") + kind.encode() + b"\0\0\0\x20" + bytes([seed]) * 32
    return f"{kind} {base64.b64encode(blob).decode()}"


VM = {
    "rank": 0, "host": "node-1.example", "status": "running", "node_pid": 100, "pid": 101,
    "ssh_port": 2222, "qmp_socket": "/run/user/1/pcocc/7/vm0/qemu/qmp.sock",
    "console_socket": "/run/user/1/pcocc/7/vm0/qemu/console.sock",
    "console_log": "/run/user/1/pcocc/7/vm0/qemu/console.log", "host_key": fake_key(),
    "error": None, "address": "10.0.0.2", "extra": {"accel": "tcg", "forwards": {"22": 2222}},
}


def _vm(**changes):
    data = {**VM, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not ...})


# -- VM state records --------------------------------------------------------------------
def test_vm_record_round_trips():
    rec = VmRecord.from_json(_vm(), KEY, rank=0)
    assert VmRecord.from_json(rec.to_json()) == rec
    assert rec.address == "10.0.0.2" and rec.ssh_port == 2222


def test_writer_makes_free_text_readable():
    rec = VmRecord(rank=1, host="n1", status="failed", node_pid=5, error="qemu:\nboom\x1b[2J",
                   extra={"console_tail": "login:\x07 \x00"})
    again = VmRecord.from_json(rec.to_json())
    assert again.error == "qemu: boom [2J" and "\x07" not in again.extra["console_tail"]


@pytest.mark.parametrize(
    "field, value",
    [
        ("address", "127.0.0.1\n    ProxyCommand touch /tmp/pwned"),
        ("address", "::1%\nProxyCommand x"),
        ("address", "fe80::1%eth0"),
        ("address", "-oProxyCommand=x"),
        ("address", 167772162),
        ("host", "n1\nProxyCommand x"),
        ("host", "-oProxyCommand=x"),
        ("node", "n1\nProxyCommand x"),
        ("node", "n1 n2"),
        ("node", 7),
        ("host", ""),
        ("host_key", fake_key() + "\npcocc-7-vm1 ssh-ed25519 AAAA"),
        ("host_key", 'command="sh" ' + fake_key()),
        ("host_key", "ssh-dss AAAAB3NzaC1kc3MAAAA="),
        ("host_key", "ssh-ed25519 !!!notbase64"),
        ("host_key", "ssh-ed25519 " + base64.b64encode(b"\0\0\0\x07ssh-rsa" + b"x" * 40).decode()),
        ("host_key", "ssh-ed25519 AAAA" + "A" * 20000),
        ("ssh_port", 0),
        ("ssh_port", 65536),
        ("ssh_port", "22"),
        ("ssh_port", True),
        ("ssh_port", 22.0),
        ("pid", -1),
        ("pid", 0),
        ("pid", True),
        ("node_pid", "100"),
        ("rank", -1),
        ("rank", 1),  # the key says vm0
        ("status", "pwned"),
        ("qmp_socket", "relative/qmp.sock"),
        ("console_socket", "/run/user/1/pcocc/7/vm0/\0x"),
        ("console_log", "/run/user/1/pcocc/../../../etc/shadow"),
        ("error", "line one\nline two"),
        ("error", "x" * 100_000),
        ("extra", {"note": "\x1b]0;pwned\x07"}),
        ("extra", {"bad key": 1}),
        ("extra", []),
        ("surprise", "field"),
    ],
)
def test_vm_record_refuses(field, value):
    with pytest.raises(Corrupt) as info:
        VmRecord.from_json(_vm(**{field: value}), KEY, rank=0)
    assert KEY in info.value.message
    assert f"field '{field}" in info.value.message or "(record)" in info.value.message


@pytest.mark.parametrize("field", ["rank", "host", "status", "node_pid"])
def test_vm_record_refuses_a_missing_field(field):
    with pytest.raises(Corrupt, match=f"field '{field}': missing"):
        VmRecord.from_json(_vm(**{field: ...}), KEY)


@pytest.mark.parametrize(
    "raw",
    ["", "{not json", "[]", '"text"', "42", "null", b"\xff\xfe", "{\"rank\": NaN}",
     json.dumps({**VM, "error": "y" * 70_000})],
)
def test_vm_record_refuses_what_is_not_a_small_json_object(raw):
    with pytest.raises(Corrupt, match=r"field '\(record\)'|field 'error'"):
        VmRecord.from_json(raw, KEY)


# -- forwarded ports, switch and NIC records ---------------------------------------------
@pytest.mark.parametrize("parse", [parse_forward, parse_switch_record])
def test_host_port_records(parse):
    assert parse("10.0.0.1:2222", "/k") == ("10.0.0.1", 2222)
    for bad in ("10.0.0.1:0", "10.0.0.1:65536", "10.0.0.1", "10.0.0.1:22\nx", ":22",
                "10.0.0.1:+22", "10.0.0.1:٢٢", "-oX=y:22", b"\xff:22", "a" * 400 + ":22"):
        with pytest.raises(Corrupt, match="at etcd key /k"):
            parse(bad, "/k")


def test_switch_record_wants_an_ipv4_address():
    with pytest.raises(Corrupt):
        parse_switch_record("node1:4000", "/k")
    assert parse_forward("node1:4000") == ("node1", 4000)


@pytest.mark.parametrize(
    "change",
    [{"host": "node1"}, {"host": "10.0.0.1\n"}, {"port": True}, {"port": "4000"},
     {"port": 0}, {"mac": "02:00:00:00:00"}, {"mac": "zz:00:00:00:00:00"}, {"extra": 1}],
)
def test_port_record_refuses(change):
    good = {"host": "10.0.0.1", "port": 4000, "mac": "02:00:00:00:00:01"}
    assert parse_port_record(json.dumps(good)) == (("10.0.0.1", 4000), "02:00:00:00:00:01")
    field = next(iter(change))
    with pytest.raises(Corrupt, match=f"at etcd key /p: field '{field}'"):
        parse_port_record(json.dumps({**good, **change}), "/p")


# -- cluster records and definitions -----------------------------------------------------
TEMPLATES = {"tpl": {"kernel": "/k", "custom-args": ["-m", "64"], "user-data": "a\nb\n"}}


def _record(batchid: str = "7") -> dict:
    d = build_definition("tpl:2", TEMPLATES, owner="bob", ssh_authorized_keys=[fake_key()])
    rec = ClusterRecord(batchid, d, ClusterState.RUNNING, "n1", 123, batch="slurm")
    return json.loads(rec.to_json())


def test_cluster_record_round_trips():
    data = _record()
    rec = ClusterRecord.from_json(json.dumps(data), "/d", batchid="7")
    assert json.loads(rec.to_json()) == data
    check_settings(rec.definition)


@pytest.mark.parametrize(
    "path, value, field",
    [
        (("batchid",), "8", "batchid"),
        (("batchid",), "../..", "batchid"),
        (("launcher_pid",), 0, "launcher_pid"),
        (("host",), "n1\nx", "host"),
        (("state",), "owned", "state"),
        (("error",), "\x1b[31m", "error"),
        (("updated",), "now", "updated"),
        (("extra",), 1, "extra"),
        (("definition", "version"), 2, "definition.version"),
        (("definition", "cores"), True, "definition.cores"),
        (("definition", "owner"), "bob\n", "definition.owner"),
        (("definition", "spec"), "tpl:2\0", "definition.spec"),
        (("definition", "boot_timeout_s"), -1, "definition.boot_timeout_s"),
        (("definition", "ssh_authorized_keys"), ["ssh-ed25519 AAAA\nx"],
         "definition.ssh_authorized_keys[0]"),
        (("definition", "mounts"), [{"source": "rel", "target": "/m"}],
         "definition.mounts[0].source"),
        (("definition", "networks"), {"n": {"type": "private", "cidr": "10.0.0.0/33", "mtu": 1450}},
         "definition.networks.n.cidr"),
        (("definition", "vms", 1, "rank"), 0, "definition.vms[1].rank"),
        (("definition", "vms", 0, "name"), "vm0; rm -rf /", "definition.vms[0].name"),
        (("definition", "vms", 0, "template"), "../tpl", "definition.vms[0].template"),
        (("definition", "vms", 0, "address"), "10.252.0.1\n", "definition.vms[0].address"),
        (("definition", "vms", 0, "image"), "-o x", "definition.vms[0].image"),
        (("definition", "vms", 0, "settings", "append"), "console=ttyS0\nx",
         "definition.vms[0].settings.append"),
        (("definition", "vms", 0, "settings", "custom-args"), ["-m", "64\0"],
         "definition.vms[0].settings.custom-args[1]"),
        (("definition", "vms", 0, "surprise"), 1, "definition.vms[0].surprise"),
    ],
)
def test_cluster_record_refuses(path, value, field):
    data = _record()
    target = data
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    with pytest.raises(Corrupt) as info:
        ClusterRecord.from_json(json.dumps(data), "/pcocc/users/bob/clusters/7/definition",
                                batchid="7")
    assert "/pcocc/users/bob/clusters/7/definition" in info.value.message
    assert f"field '{field}'" in info.value.message, info.value.message


def test_oversized_definition_is_refused():
    data = _record()
    data["definition"]["user_data"] = "x" * (2 << 20)
    with pytest.raises(Corrupt, match=r"field '\(record\)': .* more than"):
        ClusterRecord.from_json(json.dumps(data), "/d")


@pytest.mark.parametrize(
    "setting, value",
    [("qemu-bin", 5), ("accel", "fast"), ("surprise", "x"), ("custom-args", "-x"),
     ("resources", {"cores": 0})],
)
def test_node_settings_pass_the_configuration_schemas(setting, value):
    d = ClusterDefinition.from_json(json.dumps(_record()["definition"]))
    d.vms[1].settings[setting] = value
    with pytest.raises(Corrupt, match=r"vm1 \(template tpl\)"):
        check_settings(d)


def test_a_definition_the_nodes_would_refuse_is_refused_when_built():
    with pytest.raises(ConfigError, match="settings.append"):
        build_definition("tpl:1", {"tpl": {"kernel": "/k", "append": "a\nb"}})


# -- lookup: what the user commands see ---------------------------------------------------
def test_lookup_keeps_refusals_for_the_vm_and_skips_bad_keys():
    kv = MemoryKv()
    kv.put(keys.cluster_definition("bob", "7"), json.dumps(_record("7")))
    kv.put(keys.vm_state("bob", "7", 0), _vm(address="1.2.3.4\nProxyCommand x"))
    kv.put(keys.vm_state("bob", "7", 1), _vm(rank=1))
    kv.put(keys.rnat("bob", "7", 1, 22), "n1:2222\nx")
    kv.put(keys.rnat("bob", "7", 1, 80), "n1:8080")
    kv.put("/pcocc/users/bob/clusters/../definition", json.dumps(_record("..")))
    kv.put(keys.cluster_definition("bob", "9"), json.dumps(_record("10")))
    views = clusters_of(kv, "bob")
    assert [v.batchid for v in views] == ["7"]
    view = views[0]
    with pytest.raises(Corrupt, match="field 'address'"):
        view.vm("vm0")
    assert view.vm("vm1").rank == 1
    assert view.rnat == {(1, 80): ("n1", 8080)}


# -- the ssh_config writer refuses on its own ---------------------------------------------
@pytest.mark.parametrize(
    "change",
    [{"address": "10.0.0.1\nProxyCommand x"}, {"host": "n1 x", "address": None},
     {"ssh_port": 0}, {"host_key": fake_key() + "\nx y"}],
)
def test_ssh_files_refuse_values_that_break_a_line(change):
    rec = VmRecord(**{**json.loads(_vm()), **change})
    with pytest.raises(Corrupt, match="ssh_config|known"):
        ssh_config_text("7", {0: rec}, "/k", "/i")
        known_hosts_text("7", {0: rec})


@pytest.mark.parametrize("path", ['/home/a"b/k', "/home/a\nb/k", "/home/${X}/k"])
def test_ssh_config_refuses_unquotable_paths(path):
    with pytest.raises(Corrupt, match="path"):
        ssh_config_text("7", {}, path, "/i")


def test_ssh_config_escapes_percent():
    assert 'UserKnownHostsFile "/home/100%%/k"' in ssh_config_text("7", {}, "/home/100%/k", "/i")


# -- paths a record names -----------------------------------------------------------------
def test_sockets_and_logs_must_be_ours_inside_the_vm_run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PCOCC_RUN_DIR", str(tmp_path / "run"))
    vm_dir = tmp_path / "run" / "7" / "vm0"
    vm_dir.mkdir(parents=True)
    log = vm_dir / "console.log"
    log.write_text("boot\n")
    sock = socketlib.socket(socketlib.AF_UNIX)
    sock.bind(str(vm_dir / "c.sock"))
    try:
        assert rundir.vm_run_file(str(log), "7", 0, socket=False) == str(log)
        assert rundir.vm_run_file(str(vm_dir / "c.sock"), "7", 0, socket=True)
        outside = tmp_path / "elsewhere.log"
        outside.write_text("secret")
        (vm_dir / "link.log").symlink_to(outside)
        for path, is_socket in ((str(outside), False), ("/etc/passwd", False),
                                (str(vm_dir / "link.log"), False), (str(log), True),
                                (f"{vm_dir}/../../7/vm0/console.log", False),
                                (str(tmp_path / "run" / "7" / "vm1" / "c.sock"), True)):
            with pytest.raises(Corrupt):
                rundir.vm_run_file(path, "7", 0, socket=is_socket)
    finally:
        sock.close()


def test_field_checks_are_strict_about_types():
    with pytest.raises(fields.BadField):
        fields.integer(True, "n")
    with pytest.raises(fields.BadField):
        fields.number(float("nan"), "n")
    assert fields.ip_address("::ffff:10.0.0.1", "a") == "::ffff:a00:1"
    assert os.path.isabs(fields.abs_path("/a/b", "p"))
