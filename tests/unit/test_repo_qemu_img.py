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
