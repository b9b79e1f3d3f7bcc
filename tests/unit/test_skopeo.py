"""Pure parts of the skopeo wrapper: references, transport detection."""

from __future__ import annotations

import pytest

from pcocc.errors import ToolError, UsageError
from pcocc.repo import skopeo


def test_image_ref():
    assert skopeo.image_ref("docker", "busybox:latest") == "docker://busybox:latest"
    assert skopeo.image_ref("docker", "//quay.io/x/y:1") == "docker://quay.io/x/y:1"
    assert skopeo.image_ref("docker-archive", "/a b/c.tar") == "docker-archive:/a b/c.tar"
    with pytest.raises(UsageError, match="unknown container image format 'qcow2'") as info:
        skopeo.image_ref("qcow2", "x")
    assert "docker-archive" in info.value.hint


def test_transports_are_read_from_help(monkeypatch):
    skopeo.transports.cache_clear()
    help_text = "usage\n\nSupported transports:\ndir, docker, oci\n\nMore\n"

    class Res:
        stdout = help_text

    monkeypatch.setattr(skopeo.proc, "run", lambda argv, **kw: Res())
    try:
        assert skopeo.transports() == {"dir", "docker", "oci"}
        with pytest.raises(ToolError, match="does not support the 'ostree' transport"):
            skopeo.require_transport("ostree")
        skopeo.require_transport("oci")
    finally:
        skopeo.transports.cache_clear()


def test_unsupported_transport_message_is_recognised(monkeypatch):
    stderr = (
        'time="x" level=fatal msg="Invalid source name ostree:a@/r: '
        'The transport \\"ostree:\\" is not supported in this build"'
    )

    def fail(argv, **kw):
        raise ToolError("copying failed", argv=argv, returncode=1, stderr=stderr)

    monkeypatch.setattr(skopeo.proc, "run", fail)
    with pytest.raises(ToolError, match="^this skopeo does not support the 'ostree' transport"):
        skopeo.copy("ostree:a@/r", "oci:/x:y")


def test_copy_arguments(monkeypatch):
    seen = []
    monkeypatch.setattr(skopeo.proc, "run", lambda argv, **kw: seen.append(argv))
    skopeo.copy("docker://h:5000/a:1", "oci:/l:t", src_tls_verify=False)
    skopeo.copy("oci:/l:t", "docker-archive:/o.tar", dest_tls_verify=False)
    assert seen[0][:2] == ["skopeo", "--insecure-policy"]
    assert "--src-tls-verify=false" in seen[0]
    assert not any("tls" in a for a in seen[1])  # only meaningful for docker://
    assert seen[0][-2:] == ["docker://h:5000/a:1", "oci:/l:t"]
