"""Parsing of qemu-img's JSON (the binary itself is exercised by the integration tests)."""

import json

import pytest

from pcocc.errors import Corrupt
from pcocc.repo.qemu_img import ImageInfo


def test_info_fields():
    text = json.dumps({"format": "qcow2", "virtual-size": 1 << 30, "actual-size": 196608,
                       "backing-filename": "../ab/cd", "full-backing-filename": "/r/data/ab/cd",
                       "backing-filename-format": "qcow2", "cluster-size": 65536})
    info = ImageInfo.from_json(text, "x.qcow2")
    assert (info.format, info.virtual_size, info.backing_filename, info.backing_format) == (
        "qcow2", 1 << 30, "../ab/cd", "qcow2")
    chain = ImageInfo.from_json(json.dumps([{"format": "raw", "virtual-size": 5}]), "y")
    assert chain.format == "raw" and chain.backing_filename is None


@pytest.mark.parametrize("text", [
    "not json", "[]", '"x"', '{"format": "raw"}', '{"virtual-size": 3}',
    '{"format": "raw", "virtual-size": -1}', '{"format": 3, "virtual-size": 1}',
    '{"format": "qcow2", "virtual-size": 1, "backing-filename": 7}',
])
def test_info_rejects_unexpected_output(text):
    with pytest.raises(Corrupt, match="qemu-img info on img"):
        ImageInfo.from_json(text, "img")


def _info(**fields):
    base = {"format": "qcow2", "virtual-size": 1 << 20, "filename": "/r/img"}
    return ImageInfo.from_json(json.dumps({**base, **fields}), "img")


def test_other_files_names_every_foreign_file_of_a_header():
    assert _info().other_files() == []
    assert _info(**{"backing-filename": "/etc/shadow",
                    "full-backing-filename": "/etc/shadow"}).other_files() == [
        "backing file '/etc/shadow'"]
    data = {"format-specific": {"type": "qcow2", "data": {"data-file": "/root/x",
                                                          "data-file-raw": True}}}
    assert _info(**data).other_files() == ["external data file '/root/x'"]
    flat = {"format": "vmdk", "format-specific": {"type": "vmdk", "data": {
        "create-type": "monolithicFlat",
        "extents": [{"filename": "/etc/shadow", "format": "FLAT", "virtual-size": 5}]}}}
    assert _info(**flat).other_files() == ["vmdk extent '/etc/shadow'"]
    sparse = {"format": "vmdk", "format-specific": {"type": "vmdk", "data": {
        "create-type": "monolithicSparse",
        "extents": [{"filename": "/r/img", "format": "", "virtual-size": 5}]}}}
    assert _info(**sparse).other_files() == []
    proto = {"backing-filename": 'json:{"driver":"nbd"}'}
    assert _info(**proto).other_files() == ["backing file 'json:{\"driver\":\"nbd\"}'"]


def test_unexpected_format_specific_output_is_corrupt():
    with pytest.raises(Corrupt, match="extents"):
        _info(**{"format-specific": {"type": "vmdk", "data": {"extents": [{"x": 1}]}}})
    with pytest.raises(Corrupt, match="data-file"):
        _info(**{"format-specific": {"type": "qcow2", "data": {"data-file": 3}}})


@pytest.mark.parametrize(("fields", "parent", "problem"), [
    ({}, None, None),
    ({"backing-filename": "../ab/cd", "backing-filename-format": "qcow2"}, "../ab/cd", None),
    ({"format": "raw"}, None, "is a raw image, not qcow2"),
    ({"backing-filename": "/etc/shadow"}, None, "is a base layer but names the backing file"),
    ({"backing-filename": "/etc/shadow"}, "../ab/cd", "has backing file '/etc/shadow'"),
    ({"backing-filename": "../ab/cd", "backing-filename-format": "raw"}, "../ab/cd",
     "has backing format 'raw'"),
    ({"backing-filename": "../ab/cd"}, "../ab/cd", "has backing format None"),
    ({"format-specific": {"type": "qcow2", "data": {"data-file": "/x"}}}, None,
     "names an external data file '/x'"),
])
def test_layer_problem(fields, parent, problem):
    from pcocc.repo.qemu_img import layer_problem

    found = layer_problem(_info(**fields), parent)
    assert found == problem if problem is None else problem in found


def test_image_opts_read_plain_files_and_spell_out_chains():
    from pcocc.repo.qemu_img import chain_opts, image_opts

    assert image_opts("/d/nbd:localhost:1") == "file.driver=file,file.filename=/d/nbd:localhost:1"
    assert image_opts("/d/a,b", "raw", no_backing=True) == (
        "driver=raw,file.driver=file,file.filename=/d/a,,b,backing=")
    assert chain_opts(["/r/base", "/r/top"], top_fmt="qed") == (
        "driver=qed,file.driver=file,file.filename=/r/top,"
        "backing.driver=qcow2,backing.file.driver=file,backing.file.filename=/r/base,"
        "backing.backing=")


def test_blob_relpath_and_protocol_names():
    from pcocc.repo import vm

    hexd = "ab" + "0" * 62
    assert vm._is_blob_relpath(f"../ab/{hexd}")
    for bad in (f"../cd/{hexd}", f"../../ab/{hexd}", "../ab/xyz", f"/r/data/ab/{hexd}"):
        assert not vm._is_blob_relpath(bad)
    assert vm._has_protocol("nbd:host:1") and vm._has_protocol('json:{"a":"/b"}')
    assert not vm._has_protocol("/d/nbd:x") and not vm._has_protocol("./a:b")
