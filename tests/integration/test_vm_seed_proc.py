"""The cloud-init seed image, built with genisoimage and read back."""

from __future__ import annotations

import shutil

import pytest

from pcocc import proc
from pcocc.vm.seed import SeedSpec, build_seed
from tests.unit.test_vm_seed import KEY


@pytest.mark.skipif(shutil.which("genisoimage") is None, reason="genisoimage not installed")
def test_seed_image_has_cidata_label_and_files(tmp_path):
    dest = tmp_path / "dir, with 'odd' name" / "seed.iso"
    dest.parent.mkdir()
    build_seed(SeedSpec("vm4", "i-4", authorized_keys=("ssh-ed25519 AAAAuser",),
                        host_key=KEY), dest)
    assert dest.stat().st_mode & 0o777 == 0o600
    assert list(dest.parent.iterdir()) == [dest]  # no staging leftovers
    info = proc.run(["isoinfo", "-d", "-i", dest]).stdout
    assert "Volume id: cidata" in info
    listing = proc.run(["isoinfo", "-R", "-f", "-i", dest]).stdout.split()
    assert {"/meta-data", "/user-data", "/vendor-data", "/pcocc/authorized_keys",
            "/pcocc/ssh_host_ed25519_key"} <= set(listing)
    meta = proc.run(["isoinfo", "-R", "-i", dest, "-x", "/meta-data"]).stdout
    assert "local-hostname: vm4" in meta
