"""Read a YAML file into plain data while remembering where every key and value sits.

``yaml.safe_load`` forgets positions, so we compose the node graph first, construct the data
from it, and record for each key path the (line, column) of the value node and of its key.
Positions are 1-based, as editors show them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pcocc.errors import ConfigError

#: A path into the data: mapping keys (str) and list indexes (int).
KeyPath = tuple[str | int, ...]


def format_path(path: KeyPath) -> str:
    """``('repos', 1, 'path')`` -> ``repos[1].path``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


@dataclass
class YamlDoc:
    """The data of one file and the positions of its nodes."""

    path: Path
    data: dict[str, Any]
    values: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)
    keys: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)
    text: str = ""

    def where(self, path: KeyPath, *, key: bool = False) -> str:
        """``file:line:col`` of the value at ``path`` (or of its key), or of its nearest parent."""
        table = self.keys if key else self.values
        p = tuple(path)
        while p:
            if p in table:
                line, col = table[p]
                return f"{self.path}:{line}:{col}"
            if p in self.values:
                line, col = self.values[p]
                return f"{self.path}:{line}:{col}"
            p = p[:-1]
        line, col = self.values.get((), (1, 1))
        return f"{self.path}:{line}:{col}"

    def error(
        self, path: KeyPath, what: str, *, key: bool = False, hint: str | None = None
    ) -> ConfigError:
        """A ConfigError ``file:line:col: key.path: what``."""
        return ConfigError(f"{self.where(path, key=key)}: {format_path(path)}: {what}", hint=hint)


def load_yaml(path: Path) -> YamlDoc:
    """Parse ``path``; an empty file is an empty mapping. Raises ConfigError on bad YAML."""
    import yaml

    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from err
    try:
        return _parse(path, text, getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except ConfigError:
        # libyaml words its syntax errors differently: report what the Python parser says.
        if yaml.SafeLoader is getattr(yaml, "CSafeLoader", yaml.SafeLoader):
            raise
        return _parse(path, text, yaml.SafeLoader)


def _parse(path: Path, text: str, loader_class: Any) -> YamlDoc:
    import yaml

    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return YamlDoc(path, {}, text=text)
        doc = YamlDoc(path, {}, text=text)
        _check_duplicates(doc, node)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = err.problem or err.context or "syntax error"
        raise ConfigError(f"{where}: invalid YAML: {problem}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err
    finally:
        loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}:{node.start_mark.line + 1}:{node.start_mark.column + 1}: "
            "expected a mapping of keys at the top level"
        )
    doc.data = data
    _record(doc, node, ())
    return doc


def _pos(node: Any) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _check_duplicates(doc: YamlDoc, node: Any, path: KeyPath = ()) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, Any] = {}
        for knode, vnode in node.value:
            if knode.tag == "tag:yaml.org,2002:merge":
                continue
            if not isinstance(knode, yaml.ScalarNode) or knode.tag != "tag:yaml.org,2002:str":
                line, col = _pos(knode)
                shown = knode.value if isinstance(knode, yaml.ScalarNode) else "?"
                raise ConfigError(
                    f"{doc.path}:{line}:{col}: {format_path((*path, str(shown)))}: "
                    "keys must be strings (quote this key)"
                )
            key = knode.value
            if key in seen:
                line, col = _pos(knode)
                first = seen[key].start_mark.line + 1
                raise ConfigError(
                    f"{doc.path}:{line}:{col}: {format_path((*path, str(key)))}: "
                    f"duplicate key (first defined on line {first})"
                )
            seen[key] = knode
            _check_duplicates(doc, vnode, (*path, str(key)))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(doc, item, (*path, i))


def _record(doc: YamlDoc, node: Any, path: KeyPath) -> None:
    """Walk nodes (after construction, so merge keys are flattened) and note positions."""
    import yaml

    doc.values.setdefault(path, _pos(node))
    if isinstance(node, yaml.MappingNode):
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                continue
            sub = (*path, _key_value(knode))
            # Explicit keys come after merged ones: the last position wins.
            doc.keys[sub] = _pos(knode)
            doc.values[sub] = _pos(vnode)
            _record_children(doc, vnode, sub)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            doc.values[(*path, i)] = _pos(item)
            _record_children(doc, item, (*path, i))


def _record_children(doc: YamlDoc, node: Any, path: KeyPath) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
        _record(doc, node, path)


def _key_value(knode: Any) -> str:
    # Keys are compared with the constructed data, where YAML may have built ints or bools;
    # schemas only allow string keys, so keep the text as written.
    return knode.value
