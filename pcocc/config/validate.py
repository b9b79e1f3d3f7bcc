"""Check one configuration file against its jsonschema and turn the first error into one line.

The message names the file, line and column, the key path and what was expected::

    /etc/pcocc/templates.yaml:12:5: templates.compute.image: expected a string like [repo:]name[@rev]

Schemas may carry an ``x-expected`` annotation: the words after "expected" for any error on a
value they describe. jsonschema is imported here only, so commands that never read the
configuration do not pay for it; and a file already found valid (same schema, same bytes) is
not checked again: a marker named by their digest in ``~/.cache/pcocc/config-checked`` says
so, which spares commands the import of jsonschema.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from pcocc import paths
from pcocc.config.yamldoc import KeyPath, YamlDoc
from pcocc.errors import ConfigError, PcoccError

#: The configuration files, in the order they are documented.
FILES = ("batch", "repos", "templates", "resources", "networks", "containers")

#: Files whose entries go under one top-level key, and the word for an entry.
_ENTRIES_UNDER = {
    "templates": ("templates", "template"),
    "resources": ("resource-sets", "resource set"),
    "networks": ("networks", "network"),
}


@functools.cache
def schema_text(name: str) -> str:
    """The text of the schema of ``<name>.yaml``, from the package data."""
    # A plain path: importlib.resources costs more to import than the read itself.
    return (Path(__file__).parent / "schemas" / f"{name}.json").read_text()


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """The schema of ``<name>.yaml``, from the package data."""
    return json.loads(schema_text(name))


def checked_marker(name: str, doc: YamlDoc) -> Path:
    """The file whose existence says that ``doc`` passed the schema of ``name``."""
    import hashlib  # only here: its OpenSSL backend is slow to import

    digest = hashlib.sha256()
    for part in (name, schema_text(name), doc.text):
        digest.update(part.encode())
        digest.update(b"\0")
    return paths.cache_dir() / "config-checked" / digest.hexdigest()


def _remember_valid(marker: Path) -> None:
    try:
        paths.private_dir(marker.parent, what="cache directory")
        marker.touch()
    except (OSError, PcoccError):
        pass  # only an optimisation: a read-only home just means checking every time


@functools.cache
def _validator(name: str) -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(load_schema(name))


def validate(name: str, doc: YamlDoc) -> None:
    """Raise ConfigError for the first (in file order) schema error of ``doc``."""
    marker = checked_marker(name, doc)
    try:
        if marker.exists():
            return
    except OSError:
        pass  # an unreadable cache only means checking again
    errors = [_deepest(e) for e in _validator(name).iter_errors(doc.data)]
    if not errors:
        _remember_valid(marker)
        return
    err = min(errors, key=lambda e: _position(doc, e))
    error = _to_config_error(doc, err)
    key = _unknown_key(err)
    at_top = key is not None and not err.absolute_path
    if at_top and name in _ENTRIES_UNDER and isinstance(doc.data.get(key), dict):
        top, word = _ENTRIES_UNDER[name]
        error.hint = f"if '{key}' is a {word}, put it under '{top}:'"
    raise error


def all_errors(name: str, doc: YamlDoc) -> list[ConfigError]:
    """Every schema error of ``doc``, in file order (for ``pcocc admin check-config``)."""
    errors = sorted(
        (_deepest(e) for e in _validator(name).iter_errors(doc.data)),
        key=lambda e: _position(doc, e),
    )
    result: list[ConfigError] = []
    for err in errors:
        error = _to_config_error(doc, err)
        if all(str(error) != str(seen) for seen in result):
            result.append(error)
    return result


def _position(doc: YamlDoc, err: Any) -> tuple[int, int]:
    path = tuple(err.absolute_path)
    key = _unknown_key(err)
    if key is not None:
        path = (*path, key)
    elif _is_bad_name(err):
        path = (*path, err.instance)
    while path and path not in doc.values:
        path = path[:-1]
    return doc.keys.get(path) or doc.values.get(path, (0, 0))


def _deepest(err: Any) -> Any:
    """For oneOf/anyOf, the error of the branch the user most likely meant.

    A branch is unlikely when its discriminating constant failed (``type: user`` on an
    ethernet network) or when the value has the wrong type for it. When no branch is likely,
    or the likely branch only fails on the value itself, the parent error (with the parent's
    ``x-expected`` wording) is the clearest one.
    """
    while err.context:
        branches: dict[Any, list[Any]] = {}
        for sub in err.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        likely = [
            b
            for b in branches.values()
            if not any(e.validator == "const" for e in b) and not _type_mismatch(b, err)
        ]
        if not likely:
            return err
        best = min(likely, key=len)
        nxt = max(best, key=lambda e: len(e.absolute_path))
        same_value = len(nxt.absolute_path) == len(err.absolute_path)
        if (
            same_value
            and nxt.validator not in ("additionalProperties", "required")
            and err.schema.get("x-expected")
            and not nxt.schema.get("x-expected")
        ):
            return err
        err = nxt
    return err


def _type_mismatch(branch: list[Any], parent: Any) -> bool:
    """True when the branch failed on the very value of the parent because of its type."""
    return any(
        e.validator == "type" and len(e.absolute_path) == len(parent.absolute_path) for e in branch
    )


def _unknown_key(err: Any) -> str | None:
    if err.validator == "additionalProperties" and err.validator_value is False:
        allowed = set(err.schema.get("properties", {}))
        extra = sorted(k for k in err.instance if k not in allowed)
        return extra[0] if extra else None
    return None


_TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "nothing",
}


def _to_config_error(doc: YamlDoc, err: Any) -> ConfigError:
    path: KeyPath = tuple(err.absolute_path)
    key = _unknown_key(err)
    if key is not None:
        allowed = sorted(err.schema.get("properties", {}))
        import difflib  # only for the hint of an error

        near = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        what = f"unknown key '{key}'"
        if near:
            what += f", did you mean '{near[0]}'?"
        hint = "allowed keys: " + ", ".join(allowed) if allowed else None
        return doc.error((*path, key), what, key=True, hint=hint)
    if _is_bad_name(err):
        expected = err.schema.get("x-expected", "a valid name")
        return doc.error(
            (*path, err.instance), f"bad name '{err.instance}': expected {expected}", key=True
        )
    if err.validator == "required":
        missing = [k for k in err.validator_value if k not in err.instance]
        return doc.error(path, f"missing required key '{missing[0]}'")
    expected = err.schema.get("x-expected")
    if expected:
        return doc.error(path, f"expected {expected}, got {_show(err.instance)}")
    if err.validator == "type":
        types = (
            err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        )
        words = " or ".join(_TYPE_WORDS.get(str(t), str(t)) for t in types)
        return doc.error(path, f"expected {words}, got {_show(err.instance)}")
    if err.validator == "enum":
        choices = ", ".join(str(c) for c in err.validator_value)
        msg = f"expected one of {choices}, got {_show(err.instance)}"
        import difflib  # only for the hint of an error

        near = difflib.get_close_matches(
            str(err.instance), [str(c) for c in err.validator_value], 1
        )
        if near:
            msg += f", did you mean '{near[0]}'?"
        return doc.error(path, msg)
    if err.validator == "const":
        return doc.error(path, f"expected {err.validator_value}, got {_show(err.instance)}")
    if err.validator in ("minimum", "maximum"):
        word = "at least" if err.validator == "minimum" else "at most"
        return doc.error(
            path, f"expected a number {word} {err.validator_value}, got {err.instance}"
        )
    if err.validator == "minItems":
        return doc.error(path, f"expected at least {err.validator_value} item(s)")
    if err.validator == "minLength":
        return doc.error(path, "expected a non-empty string")
    return doc.error(path, err.message)


def _is_bad_name(err: Any) -> bool:
    """Errors of ``propertyNames`` are about a key, reported at the mapping's path."""
    schema_path = list(err.absolute_schema_path)
    return len(schema_path) >= 2 and schema_path[-2] == "propertyNames"


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def fragment_error(schema: dict[str, Any], value: Any) -> str | None:
    """The first error of ``value`` against a part of a schema, as ``path: message``
    (for values that come back from elsewhere, such as a stored cluster definition), or
    None when it is valid."""
    from jsonschema import Draft202012Validator

    errors = sorted(
        Draft202012Validator(schema).iter_errors(value),
        key=lambda e: [str(p) for p in e.absolute_path],
    )
    if not errors:
        return None
    err = _deepest(errors[0])
    path = ".".join(str(p) for p in err.absolute_path) or "(settings)"
    return f"{path}: {err.message[:200]}"
