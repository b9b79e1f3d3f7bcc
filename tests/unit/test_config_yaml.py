"""Reading YAML with positions (pcocc.config.yamldoc)."""

import pytest

from pcocc.config.yamldoc import format_path, load_yaml
from pcocc.errors import ConfigError


def _load(tmp_path, text):
    f = tmp_path / "x.yaml"
    f.write_text(text)
    return f, load_yaml(f)


def test_positions_of_keys_and_values(tmp_path):
    f, doc = _load(tmp_path, "a:\n  b: 1\n  c:\n    - x\n    - {d: 2}\n")
    assert doc.data == {"a": {"b": 1, "c": ["x", {"d": 2}]}}
    assert doc.keys[("a", "b")] == (2, 3)
    assert doc.values[("a", "b")] == (2, 6)
    assert doc.values[("a", "c", 1)] == (5, 7)
    assert doc.keys[("a", "c", 1, "d")] == (5, 8)
    assert doc.where(("a", "c", 1, "d"), key=True) == f"{f}:5:8"
    # A path that does not exist points at its nearest parent.
    assert doc.where(("a", "zz")) == f"{f}:2:3"


def test_merge_keys_are_flattened(tmp_path):
    _, doc = _load(tmp_path, "base: &b {x: 1, y: 2}\nchild:\n  <<: *b\n  y: 3\n")
    assert doc.data["child"] == {"x": 1, "y": 3}
    assert doc.keys[("child", "y")] == (4, 3)


def test_empty_file_is_empty_mapping(tmp_path):
    _, doc = _load(tmp_path, "# nothing but a comment\n")
    assert doc.data == {}


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "a: 1\nb: [\n",
            "{f}:3:1: invalid YAML: expected the node content, but found '<stream end>'",
        ),
        ("a: 1\nb: 2\na: 3\n", "{f}:3:1: a: duplicate key (first defined on line 1)"),
        ("a:\n  1: x\n", "{f}:2:3: a.1: keys must be strings (quote this key)"),
        ("- a\n- b\n", "{f}:1:1: expected a mapping of keys at the top level"),
        ("a: 1\n---\nb: 2\n", "{f}:2:1: invalid YAML: but found another document"),
    ],
)
def test_bad_yaml_is_one_config_error(tmp_path, text, message):
    f = tmp_path / "x.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_yaml(f)
    assert str(exc.value) == message.format(f=f)


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="x.yaml: cannot read"):
        load_yaml(tmp_path / "x.yaml")


def test_format_path():
    assert format_path(("repos", 1, "path")) == "repos[1].path"
    assert format_path(()) == "(top level)"
