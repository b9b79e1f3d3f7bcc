"""The metadata service without processes: tokens, request parsing, answers, records."""

from __future__ import annotations

import json
import os

import pytest

from pcocc.ctr import mds
from pcocc.ctr.mds import MdsApp, MdsRecord, sign_token, verify_identity, verify_token
from pcocc.ctr.mds_server import MAX_REQUEST, handle, parse_request, remove_orphan_temps
from pcocc.errors import Corrupt, PcoccError, UsageError

UUID = "0123abcd-0000-4000-8000-000000000001"
OTHER = "0123abcd-0000-4000-8000-000000000002"


def record(uuid: str = UUID, key: bytes = b"k" * 32) -> MdsRecord:
    return MdsRecord(
        uuid, key.hex(), [MdsApp("web", "img", "sha256:abc", {"org.label": "x"})],
        {"team": "hpc"}, pid=1, pid_start=1,
    )  # fmt: skip


# -- tokens -------------------------------------------------------------------------------
def test_token_round_trip_and_tampering():
    tok = sign_token(b"k" * 32, UUID, "web", now=1000)
    assert verify_token(b"k" * 32, tok) == {"uuid": UUID, "app": "web", "iat": 1000}
    assert verify_token(b"x" * 32, tok) is None  # another pod's key
    head, sig = tok.split(".")
    forged = sign_token(b"k" * 32, OTHER, "web", now=1000).split(".")[0]
    assert verify_token(b"k" * 32, f"{forged}.{sig}") is None  # claims changed
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    assert verify_token(b"k" * 32, f"{head}.{flipped}") is None
    assert verify_token(b"k" * 32, f"{head}.") is None
    assert verify_token(b"k" * 32, f"{head}.{sig}!!") is None


def test_verify_identity_uses_the_pods_key(tmp_path):
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / f"{UUID}.json").write_text(json.dumps(record().to_json()))
    tok = sign_token(b"k" * 32, UUID, "web")
    assert verify_identity(tok, tmp_path)["uuid"] == UUID
    with pytest.raises(PcoccError, match="bad signature"):
        verify_identity(sign_token(b"z" * 32, UUID, "web"), tmp_path)
    with pytest.raises(PcoccError, match="bad signature"):  # signed, but no such app
        verify_identity(sign_token(b"k" * 32, UUID, "db"), tmp_path)
    with pytest.raises(PcoccError, match="not registered"):
        verify_identity(sign_token(b"k" * 32, OTHER, "web"), tmp_path)
    for junk in ("", "abc", "!!!.!!!", "eyJ1dWlkIjogIi4uLyJ9.x"):  # last: uuid "../"
        with pytest.raises(UsageError, match="not a pcocc identity token"):
            verify_identity(junk, tmp_path)


# -- requests -----------------------------------------------------------------------------
def test_parse_request_refuses_hostile_input():
    assert parse_request(b"GET /pcocc/v1/pod HTTP/1.1\r\nHost: x\r\n\r\n") == (
        "GET", "/pcocc/v1/pod")
    assert parse_request(b"GET /pcocc/v1/pod HTTP/1.1\r\n") == 400  # head not finished
    assert parse_request(b"x" * MAX_REQUEST) == 431
    assert parse_request(b"GET pcocc HTTP/1.1\r\n\r\n") == 400
    assert parse_request(b"GET /a b HTTP/1.1\r\n\r\n") == 400
    assert parse_request(b"GET /\xff HTTP/1.1\r\n\r\n") == 400
    assert parse_request(b"GET / SPDY\r\n\r\n") == 400


def test_answers_only_about_the_callers_pod():
    rec = record()
    assert handle(rec, "web", "GET", "/pcocc/v1/pod/uuid") == (200, "text/plain", UUID)
    assert handle(rec, "web", "GET", "/pcocc/v1/app/name")[2] == "web"
    assert handle(rec, "web", "GET", "/pcocc/v1/app/image/id")[2] == "sha256:abc"
    assert json.loads(handle(rec, "web", "GET", "/pcocc/v1/pod/annotations")[2]) == {
        "team": "hpc"}
    assert handle(rec, "web", "GET", "/pcocc/v1/pod/annotations/team")[2] == "hpc"
    assert handle(rec, "web", "GET", "/pcocc/v1/app/annotations/org.label")[2] == "x"
    body = handle(rec, "web", "GET", f"/pcocc/v1/pods/{UUID}")[2]
    assert json.loads(body)["uuid"] == UUID and rec.key not in body
    assert handle(rec, "web", "GET", f"/pcocc/v1/pods/{OTHER}")[0] == 403
    tok = handle(rec, "web", "GET", "/pcocc/v1/pod/identity")[2]
    assert verify_token(b"k" * 32, tok)["uuid"] == UUID


@pytest.mark.parametrize("method,target,status", [
    ("POST", "/pcocc/v1/pod/uuid", 405),
    ("GET", "/pcocc/v1/pods/../pods/" + OTHER, 404),
    ("GET", "/pcocc/v1/pod/annotations/../../pods/" + OTHER, 404),
    ("GET", "/pcocc/v1//pod", 404),
    ("GET", "/pcocc/v1/pod/annotations/nope", 404),
    ("GET", "/pcocc/v1/pod/key", 404),
    ("GET", "/etc/passwd", 404),
    ("GET", "/pcocc/v1/pods/" + OTHER + "/../" + UUID, 404),
])
def test_hostile_paths_are_refused(method, target, status):
    code, _, body = handle(record(), "web", method, target)
    assert code == status and OTHER not in body and record().key not in body


def test_an_app_not_of_the_record_gets_nothing():
    assert handle(record(), "db", "GET", "/pcocc/v1/pod/uuid")[0] == 404


# -- records and options ------------------------------------------------------------------
def test_record_round_trip_and_bad_records():
    rec = record()
    assert MdsRecord.from_json(json.dumps(rec.to_json()), "f") == rec
    bad = [
        "", "[]", "{}", '{"uuid": "x"}',
        json.dumps({**rec.to_json(), "key": "not hex"}),
        json.dumps({**rec.to_json(), "uuid": "../../etc"}),
        json.dumps({**rec.to_json(), "apps": [{"name": "../x", "image": "i", "image_id": "s"}]}),
        json.dumps({**rec.to_json(), "extra": 1}),
    ]
    for text in bad:
        with pytest.raises(Corrupt, match="f: bad metadata record"):
            MdsRecord.from_json(text, "f")


def test_parse_annotations():
    assert mds.parse_annotations(["a=1", "org.x/y=b=c", "e="]) == {
        "a": "1", "org.x/y": "b=c", "e": ""}
    for bad in ("novalue", "=v", "../x=1", "a b=1"):
        with pytest.raises(UsageError, match="--annotation"):
            mds.parse_annotations([bad])


def test_image_id_is_stable():
    assert mds.image_id({"b": 1, "a": [2]}) == mds.image_id({"a": [2], "b": 1})
    assert mds.image_id({}) != mds.image_id({"a": 1})


def test_mds_dir_is_in_the_private_runtime_dir(tmp_path, monkeypatch):
    d = tmp_path / "xdg"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(d))
    assert mds.mds_dir() == d / "pcocc" / "mds"
    assert os.stat(d).st_mode & 0o077 == 0


def test_temporary_records_of_dead_writers_are_removed(tmp_path):
    """A ``pcocc run`` killed with -9 while writing its record leaves a temporary file that
    only the service can reclaim; a live writer's and other files are left alone."""
    uuid = "1407f5c2-a309-4634-8727-04d061498fe9"
    dead = tmp_path / f".{uuid}.json.4194399.606e7b9b.tmp"  # above any pid_max
    gone = tmp_path / f".{uuid}.json.9999999999.606e7b9b.tmp"
    live = tmp_path / f".{uuid}.json.{os.getpid()}.606e7b9b.tmp"
    other = tmp_path / f"{uuid}.json"
    odd = tmp_path / ".notes.4194399.tmp"
    for f in (dead, gone, live, other, odd):
        f.write_text("x")
    remove_orphan_temps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, other.name, odd.name])
