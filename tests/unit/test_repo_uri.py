"""Image URIs and [FORMAT:]SOURCE parsing."""

import pytest

from pcocc.errors import UsageError
from pcocc.repo import drivers
from pcocc.repo.uri import ImageUri


@pytest.mark.parametrize("text, expected", [
    ("centos", ImageUri("centos")),
    ("user:centos", ImageUri("centos", "user")),
    ("global:cloud-centos.7@12", ImageUri("cloud-centos.7", "global", 12)),
    ("img_1@0", ImageUri("img_1", None, 0)),
])
def test_parse_valid_uris(text, expected):
    uri = ImageUri.parse(text)
    assert uri == expected
    assert str(uri) == text


@pytest.mark.parametrize("text", [
    "", ":x", "repo:", "a:b:c", "name@", "name@x", "name@-1", "name@01", "-name", "na me",
    "repo:na/me", "name@1@2", "x" * 129,
])
def test_parse_invalid_uris_is_usage_error(text):
    with pytest.raises(UsageError) as exc:
        ImageUri.parse(text)
    assert exc.value.exit_status == 2
    assert "invalid" in str(exc.value)


@pytest.mark.parametrize("text, opt, fmt, loc, origin", [
    ("raw:./x", None, "raw", "./x", "prefix"),
    ("./x.qcow2", None, "qcow2", "./x.qcow2", "extension"),
    ("./x.VMDK", None, "vmdk", "./x.VMDK", "extension"),
    ("./x", "vdi", "vdi", "./x", "option"),
    ("qed:./x.qed", "qed", "qed", "./x.qed", "option"),
    ("docker://busybox:latest", None, "docker", "//busybox:latest", "prefix"),
    ("oci-archive:/a/b.tar:tag", None, "oci-archive", "/a/b.tar:tag", "prefix"),
    ("lolcow.simg", None, "simg", "lolcow.simg", "extension"),
    ("./noext", None, None, "./noext", ""),
])
def test_parse_format(text, opt, fmt, loc, origin):
    spec = drivers.parse_format(text, opt)
    assert (spec.fmt, spec.location, spec.origin) == (fmt, loc, origin)


def test_prefix_of_an_existing_file_name_is_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "disk:1").write_bytes(b"x")
    assert drivers.parse_format("disk:1").location == "disk:1"


@pytest.mark.parametrize("text, opt, message", [
    ("foo:bar", None, "unknown image format 'foo'"),
    ("./x", "iso", "unknown image format 'iso'"),
    ("raw:./x", "qcow2", "conflicts"),
    ("raw:", None, "nothing after"),
])
def test_parse_format_errors(text, opt, message):
    with pytest.raises(UsageError, match=message):
        drivers.parse_format(text, opt)
