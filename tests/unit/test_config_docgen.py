"""docs/configuration.md is generated from the schemas and must match them."""

import difflib
from pathlib import Path

from pcocc.config import docgen
from pcocc.config.validate import FILES, load_schema

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_committed_reference_is_up_to_date():
    expected = docgen.render()
    actual = DOC.read_text()
    if actual != expected:
        diff = "".join(
            list(
                difflib.unified_diff(
                    actual.splitlines(True), expected.splitlines(True), "committed", "generated"
                )
            )[:40]
        )
        raise AssertionError(
            "docs/configuration.md is out of date with pcocc/config/schemas/*.json; "
            f"refresh it with: python -m pcocc.config.docgen docs/configuration.md\n{diff}"
        )


def test_every_key_of_every_schema_is_documented():
    text = docgen.render()
    for name in FILES:
        assert f"## {name}.yaml" in text
        for key in load_schema(name)["properties"]:
            assert f"| `{key}` |" in text, (name, key)
    assert ("| `templates.<NAME>.image` | a string like [repo:]name[@rev], https://..., "
            "file://... or host/name[:version] |") in text


def test_main_writes_the_file(tmp_path):
    out = tmp_path / "c.md"
    assert docgen.main([str(out)]) == 0
    assert out.read_text() == docgen.render()
