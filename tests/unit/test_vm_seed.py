"""Seed content (pure) and the real seed image built with genisoimage."""

from __future__ import annotations

import yaml

from pcocc.vm.seed import HostKey, SeedSpec, seed_files

KEY = HostKey(private="-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n",
              public="ssh-ed25519 AAAAhost pcocc")


def test_keys_go_to_vendor_data_and_plain_files():
    files = seed_files(SeedSpec("vm2", "cluster-7-vm2", authorized_keys=("ssh-ed25519 AAAAuser u",),
                                host_key=KEY))
    meta = yaml.safe_load(files["meta-data"])
    assert meta == {"instance-id": "cluster-7-vm2", "local-hostname": "vm2",
                    "public-keys": ["ssh-ed25519 AAAAuser u"]}
    assert files["user-data"] == "#cloud-config\n"
    assert files["vendor-data"].startswith("#cloud-config\n")
    config = yaml.safe_load(files["vendor-data"])
    assert config["hostname"] == "vm2"
    assert config["ssh_authorized_keys"] == ["ssh-ed25519 AAAAuser u"]
    assert config["ssh_keys"] == {"ed25519_private": KEY.private, "ed25519_public": KEY.public}
    assert files["pcocc/authorized_keys"] == "ssh-ed25519 AAAAuser u\n"
    assert files["pcocc/ssh_host_ed25519_key"] == KEY.private
    assert files["pcocc/ssh_host_ed25519_key.pub"] == KEY.public + "\n"


def test_user_data_is_kept_as_given():
    files = seed_files(SeedSpec("vm0", "i", user_data="#!/bin/sh\necho hi\n", host_key=KEY))
    assert files["user-data"] == "#!/bin/sh\necho hi\n"
    assert yaml.safe_load(files["vendor-data"])["ssh_keys"]["ed25519_public"] == KEY.public


def test_without_keys_nothing_about_keys_is_written():
    files = seed_files(SeedSpec("vm0", "i"))
    assert "pcocc/ssh_host_ed25519_key" not in files
    assert files["pcocc/authorized_keys"] == ""
    assert yaml.safe_load(files["vendor-data"]) == {"hostname": "vm0"}
    assert "public-keys" not in yaml.safe_load(files["meta-data"])
    assert "public-keys" not in yaml.safe_load(files["meta-data"])


def test_mounts_go_to_vendor_data_and_the_plain_table():
    files = seed_files(SeedSpec("vm0", "i", mounts=(("pcocc0", "/data"),
                                                    ("pcocc1", "/my scratch"))))
    config = yaml.safe_load(files["vendor-data"])
    assert config["mounts"] == [
        ["pcocc0", "/data", "virtiofs", "defaults,nofail", "0", "0"],
        ["pcocc1", "/my scratch", "virtiofs", "defaults,nofail", "0", "0"],
    ]
    assert files["pcocc/mounts"] == "pcocc0 /data\npcocc1 /my scratch\n"
    assert files["user-data"] == "#cloud-config\n"  # the user's own, untouched
    plain = seed_files(SeedSpec("vm0", "i"))
    assert "mounts" not in yaml.safe_load(plain["vendor-data"])
    assert "pcocc/mounts" not in plain


def test_odd_hostname_survives_yaml():
    files = seed_files(SeedSpec("123", "i"))
    assert yaml.safe_load(files["meta-data"])["local-hostname"] == "123"
