"""The ``pcocc image`` group: lazily loaded subgroups, list and show."""

import sys

from pcocc.cli import image as image_cli
from pcocc.cli.main import run_cli


def test_missing_cache_module_is_a_broken_install(pcocc_env, capsys, monkeypatch):
    """A lazily loaded command that cannot be imported fails loudly, naming the import."""
    monkeypatch.setitem(image_cli.IMAGE_SUBGROUPS, "cache",
                        ("pcocc.cli.no_such_module:cache", "Container cache"))
    assert run_cli(["image", "cache", "list"]) == 1
    err = capsys.readouterr().err
    assert "internal error: ModuleNotFoundError" in err and "no_such_module" in err
    assert "not available" not in err


def test_container_image_list_and_show(pcocc_env, capsys, monkeypatch):
    import hashlib
    import json
    import types
    from pathlib import Path

    from pcocc.repo import drivers
    from pcocc.repo.model import BlobRef, OciImage

    (pcocc_env["user"] / "repos.yaml").write_text(
        f"repos:\n  - name: mine\n    path: {pcocc_env['home'] / 'repo'}\n")

    def import_image(source, fmt, staging, add_blob, progress):
        blobs = []
        for i, data in enumerate([b"config", b"layer"]):
            f = Path(staging) / str(i)
            f.write_bytes(data)
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            blobs.append(BlobRef(add_blob(f, digest), len(data)))
        config = {"config": {"Entrypoint": ["/bin/app"], "Env": ["PATH=/bin", "X=1"],
                             "Labels": {"org.example": "yes"}}}
        return OciImage(blobs[0].digest, {"layers": [{"digest": blobs[1].digest}]}, config,
                        blobs)

    fake = types.ModuleType("fake_ctr_driver")
    fake.import_image = import_image
    monkeypatch.setitem(sys.modules, "fake_ctr_driver", fake)
    monkeypatch.setitem(drivers.DRIVER_MODULES, "oci-archive", "fake_ctr_driver")
    assert run_cli(["image", "import", "oci-archive:/x/app.tar:v1", "app"]) == 0
    capsys.readouterr()
    assert run_cli(["image", "list"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[2].split()[:4] == ["app", "cont", "0", "mine"]
    assert run_cli(["image", "show", "app"]) == 0
    out = capsys.readouterr().out
    assert 'entrypoint:   ["/bin/app"]' in out
    assert "  env:          PATH=/bin\n                X=1\n" in out
    assert "org.example=yes" in out and "source:       oci-archive:/x/app.tar:v1" in out
    assert "sha256:" + hashlib.sha256(b"layer").hexdigest() in out
    assert run_cli(["image", "show", "--json", "mine:app@0"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown[0]["type"] == "cont" and shown[0]["labels"] == {"org.example": "yes"}
