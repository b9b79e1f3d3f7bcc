import base64
import json

import pytest

from pcocc.cluster.definition import (
    ClusterDefinition,
    build_definition,
    parse_image_overrides,
    parse_mount,
    parse_spec,
)
from pcocc.cluster.stored import Mount
from pcocc.errors import ConfigError, Corrupt, NotFound, UsageError

TEMPLATES = {
    "compute": {"image": "global:centos@2", "resource-set": "small"},
    "login": {"image": "user:login"},
    "testvm": {"kernel": "/boot/vmlinuz", "initrd": "/boot/initrd", "accel": "tcg"},
    "noimage": {"resource-set": "small"},
}


def fake_key(seed: int, comment: str = "") -> str:
    """An OpenSSH ed25519 public key line (well formed; no private key behind it)."""
    blob = b"\0\0\0\x0bssh-ed25519\0\0\0\x20" + bytes([seed]) * 32
    return f"ssh-ed25519 {base64.b64encode(blob).decode()}" + (f" {comment}" if comment else "")


def test_parse_spec_pairs_and_bare_name():
    assert parse_spec("compute:4,login:1") == [("compute", 4), ("login", 1)]
    assert parse_spec("login") == [("login", 1)]


@pytest.mark.parametrize(
    "spec", ["", "compute:0", "compute:-1", "compute:x", "compute:2,", ":2", "a b:1", "c:1,c:2"]
)
def test_parse_spec_rejects(spec):
    with pytest.raises(UsageError) as exc:
        parse_spec(spec)
    assert exc.value.exit_status == 2


def test_build_gives_one_entry_per_rank_in_order():
    d = build_definition("compute:2,login:1", TEMPLATES, cores=3, owner="alice")
    assert [(v.rank, v.name, v.template, v.cores) for v in d.vms] == [
        (0, "vm0", "compute", 3),
        (1, "vm1", "compute", 3),
        (2, "vm2", "login", 3),
    ]
    assert d.vms[0].image == "global:centos@2" and d.vms[2].image == "user:login"
    assert len(set(d.hosts_entries().values())) == 3
    assert d.hosts_entries()["vm2"] == d.vms[2].address


def test_unknown_template_names_known_ones():
    with pytest.raises(UsageError) as exc:
        build_definition("nosuch:2", TEMPLATES)
    assert "unknown template 'nosuch'" in str(exc.value)
    assert "compute" in exc.value.hint


def test_template_without_image_or_kernel_is_config_error():
    with pytest.raises(ConfigError) as exc:
        build_definition("noimage:1", TEMPLATES)
    assert "template 'noimage' has no image" in str(exc.value)
    # an --image override makes it runnable
    d = build_definition("noimage:1", TEMPLATES, images=["noimage=user:x"])
    assert d.vms[0].image == "user:x"


def test_kernel_templates_need_no_image():
    d = build_definition("testvm:2", TEMPLATES)
    assert d.vms[1].image is None and d.vms[1].settings["kernel"] == "/boot/vmlinuz"


def test_image_overrides():
    assert parse_image_overrides(["img"], ["a", "b"]) == {"a": "img", "b": "img"}
    assert parse_image_overrides(["a=img", "b=x"], ["a", "b"]) == {"a": "img", "b": "x"}
    with pytest.raises(UsageError, match="template 'nosuch' is not in the cluster definition"):
        parse_image_overrides(["nosuch=img"], ["a"])
    with pytest.raises(UsageError, match="no image"):
        parse_image_overrides(["a="], ["a"])
    d = build_definition("compute:1,login:1", TEMPLATES, images=["login=user:other"])
    assert [v.image for v in d.vms] == ["global:centos@2", "user:other"]


def test_missing_image_is_usage_error_before_allocation():
    def check(uri):
        if uri != "global:centos@2":
            raise NotFound(f"image '{uri}' not found", hint="run 'pcocc image list'")

    build_definition("compute:1", TEMPLATES, check_image=check)
    with pytest.raises(UsageError, match="template 'login': image 'user:login' not found"):
        build_definition("compute:1,login:1", TEMPLATES, check_image=check)


def test_mounts(tmp_path):
    m = parse_mount(f"{tmp_path}:/data")
    assert (m.source, m.target) == (str(tmp_path), "/data")
    assert parse_mount(f"{tmp_path}/.:/data/x/../y/").target == "/data/y"
    (tmp_path / "file").write_text("x")
    for bad, why in [
        (f"{tmp_path}", "expected SRC:DST"),
        (f"{tmp_path}:data", "must be an absolute path"),
        (f"{tmp_path}/nope:/data", "does not exist"),
        (f"{tmp_path}/file:/data", "is not a directory"),
        (f"{tmp_path}:/", "root of the VM"),
        (":/x", "expected SRC:DST"),
    ]:
        with pytest.raises(UsageError, match=why) as err:
            parse_mount(bad)
        assert f"--mount '{bad}'" in err.value.message


def test_two_mounts_on_one_target_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(UsageError, match="target '/data' is already the target") as err:
        build_definition("compute:1", TEMPLATES,
                         mounts=[f"{tmp_path}:/data", f"{tmp_path}/a:/data/"])
    assert f"--mount '{tmp_path}/a:/data/'" in err.value.message
    d = build_definition("compute:1", TEMPLATES, mounts=[f"{tmp_path}:/a", f"{tmp_path}:/b"])
    assert [m.target for m in d.mounts] == ["/a", "/b"]


def test_cores_default_to_the_resource_set():
    tpls = {"big": {"image": "x", "resources": {"cores": 4}}, "small": {"image": "y"}}
    d = build_definition("big:1,small:1", tpls)
    assert [v.cores for v in d.vms] == [4, 1] and d.cores == 4
    d = build_definition("big:1,small:1", tpls, cores=2)
    assert [v.cores for v in d.vms] == [2, 2] and d.cores == 2


def test_user_data_and_cores(tmp_path):
    ud = tmp_path / "ud.yaml"
    ud.write_text("#cloud-config\nruncmd: [touch /x]\n")
    d = build_definition("login:1", TEMPLATES, user_data_file=str(ud))
    assert d.user_data.startswith("#cloud-config")
    with pytest.raises(UsageError, match="--user-data"):
        build_definition("login:1", TEMPLATES, user_data_file=str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="at least 1"):
        build_definition("login:1", TEMPLATES, cores=0)


def test_json_round_trip_and_corrupt(tmp_path):
    d = build_definition(
        "compute:2", TEMPLATES, mounts=[f"{tmp_path}:/m"], ssh_authorized_keys=[fake_key(1, "u")]
    )
    again = ClusterDefinition.from_json(d.to_json())
    assert again == d
    data = json.loads(d.to_json())
    data["version"] = 99
    with pytest.raises(Corrupt, match="format version"):
        ClusterDefinition.from_json(json.dumps(data))
    with pytest.raises(Corrupt):
        ClusterDefinition.from_json("{not json")
    data = json.loads(d.to_json())
    data["vms"][1]["rank"] = 5
    with pytest.raises(Corrupt):
        ClusterDefinition.from_json(json.dumps(data))


def test_vm_lookup_out_of_range():
    d = build_definition("compute:2", TEMPLATES)
    assert d.vm(1).name == "vm1"
    with pytest.raises(NotFound, match="vm0 to vm1"):
        d.vm(2)


def test_mounts_of_pcocc_07_by_tag(tmp_path):
    m = parse_mount(f"data={tmp_path}")
    assert m == Mount(str(tmp_path), None, tag="data")
    m = parse_mount(f"data={tmp_path},type=virtio-9p,readonly")
    assert m == Mount(str(tmp_path), None, tag="data", readonly=True, type="virtio-9p")
    m = parse_mount(f"d.2={tmp_path}/.,readonly,type=virtio-fs")
    assert m == Mount(str(tmp_path), None, tag="d.2", readonly=True)
    comma = tmp_path / "a,b"
    comma.mkdir()
    assert parse_mount(f"t={comma}").source == str(comma)
    for bad, why in [
        (f"data={tmp_path},type=nfs", "unknown option 'type=nfs'"),
        (f"data={tmp_path},ro", "unknown option 'ro'"),
        (f"data={tmp_path}/nope,readonly", "does not exist"),
        (f"{'x' * 37}={tmp_path}", "expected SRC:DST or TAG=PATH"),
    ]:
        with pytest.raises(UsageError, match=why) as err:
            parse_mount(bad)
        assert f"--mount '{bad}'" in err.value.message


def test_two_mounts_with_one_tag_are_refused(tmp_path):
    with pytest.raises(UsageError, match="tag 'data' is already the tag of --mount 'data="):
        build_definition("compute:1", TEMPLATES,
                         mounts=[f"data={tmp_path}", f"data={tmp_path},readonly"])


def test_tagged_mounts_survive_the_stored_definition(tmp_path):
    d = build_definition("compute:1", TEMPLATES,
                         mounts=[f"{tmp_path}:/m", f"t={tmp_path},type=virtio-9p,readonly"])
    assert ClusterDefinition.from_json(d.to_json()) == d
    data = json.loads(d.to_json())
    data["mounts"][1]["type"] = "nfs"
    with pytest.raises(Corrupt, match=r"mounts\[1\].type"):
        ClusterDefinition.from_json(json.dumps(data))
    data["mounts"][1]["type"] = "virtio-9p"
    data["mounts"][1]["tag"] = "a b"
    with pytest.raises(Corrupt, match=r"mounts\[1\].tag"):
        ClusterDefinition.from_json(json.dumps(data))


def test_a_checker_may_give_the_local_image_a_template_image_became():
    seen = []

    def check(uri):
        seen.append(uri)
        return "user:app@0" if uri.startswith("https://") else None

    tpls = {**TEMPLATES, "remote": {"image": "https://h.org/app.qcow2"}}
    d = build_definition("remote:2,compute:1", tpls, check_image=check)
    assert [v.image for v in d.vms] == ["user:app@0", "user:app@0", "global:centos@2"]
    assert seen == ["https://h.org/app.qcow2", "global:centos@2"]  # once per image
