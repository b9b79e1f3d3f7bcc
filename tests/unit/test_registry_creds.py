"""docker:// credentials of auth.json reach skopeo as a private file, never in its argv."""

from __future__ import annotations

import json
import os
import stat

import pytest

from pcocc.errors import PcoccError, ToolError, UsageError
from pcocc.repo import skopeo
from pcocc.trust import auth, fetch
from pcocc.trust.settings import resolve

SECRET = "pa55-w0rd"


def _security(tmp_path, entries):
    path = tmp_path / auth.FILE_NAME
    path.write_text(json.dumps({"https": entries}))
    os.chmod(path, 0o600)
    return resolve(tmp_path, tmp_path, ("image",), False, str(tmp_path))


BASIC = {"domains": ["127.0.0.1:5000"], "type": "basic", "user": "alice", "password": SECRET}


def test_skopeo_gets_a_private_authfile_and_no_secret_in_argv(tmp_path, monkeypatch):
    seen = []

    def fake_run(argv, **kw):
        argv = [os.fspath(a) for a in argv]
        i = argv.index("--src-authfile")
        path = argv[i + 1]
        seen.append((argv, json.loads(open(path).read()), os.stat(path),
                     os.stat(os.path.dirname(path))))
        raise ToolError("stop here", tool="skopeo")

    monkeypatch.setattr(skopeo.proc, "run", fake_run)

    def fake_import(repos, ref, dest, *, authfile, tls_verify):
        skopeo.copy("docker://127.0.0.1:5000/app:1", "oci:/x:pcocc", src_authfile=authfile)

    monkeypatch.setattr("pcocc.repo.ops.import_image", fake_import)
    sec = _security(tmp_path, [BASIC])
    with pytest.raises(ToolError):
        fetch.fetch(None, fetch.FetchRequest("docker://127.0.0.1:5000/app:1"), sec,
                    lambda: None, lambda m: None)
    (argv, content, st, dir_st), = seen
    assert not any(SECRET in a or "alice" in a for a in argv)
    assert stat.S_IMODE(st.st_mode) == 0o600 and stat.S_IMODE(dir_st.st_mode) == 0o700
    token = content["auths"]["127.0.0.1:5000"]["auth"]
    import base64
    assert base64.b64decode(token).decode() == f"alice:{SECRET}"
    assert not os.path.exists(argv[argv.index("--src-authfile") + 1])  # removed after


def test_no_credentials_no_authfile_and_a_clear_refusal(tmp_path, monkeypatch):
    seen = []

    def fake_import(repos, ref, dest, *, authfile, tls_verify):
        seen.append(authfile)
        raise ToolError("copying: reading manifest: unauthorized: authentication required",
                        tool="skopeo")

    monkeypatch.setattr("pcocc.repo.ops.import_image", fake_import)
    sec = _security(tmp_path, [{**BASIC, "domains": ["other:5000"]}])
    with pytest.raises(PcoccError, match="asks for credentials") as err:
        fetch.fetch(None, fetch.FetchRequest("docker://127.0.0.1:5000/app:1"), sec,
                    lambda: None, lambda m: None)
    assert seen == [None] and "127.0.0.1:5000" in err.value.hint


def test_a_bearer_token_for_a_registry_is_refused(tmp_path):
    creds = auth.Credentials({"reg:5000": "Bearer tok"})
    with pytest.raises(UsageError, match="bearer"):
        with auth.registry_authfile(creds, "reg:5000"):
            pass


def test_inspect_passes_the_authfile(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(skopeo.proc, "run", lambda argv, **kw: seen.append(argv) or
                        type("R", (), {"stdout": "{}"})())
    skopeo.inspect_raw("docker://127.0.0.1:5000/a:1", authfile=tmp_path / "a.json")
    assert ["--authfile", str(tmp_path / "a.json")] == [os.fspath(a) for a in seen[0][-3:-1]]
