"""Find, validate and merge the configuration files into a :class:`pcocc.config.Config`.

Order: ``<dir>/<file>.yaml`` then ``<dir>/<file>.d/*.yaml`` (sorted), for the system directory
then the user directory. Each file is validated on its own, then its placeholders are
expanded, then it is merged:

- *named entries* (repositories, templates, resource sets, networks, modules, variables of
  ``env``): a name may be defined once per level; a user file may add new names but redefine
  a system one only when the system file lists it in ``allow-user-override`` (or sets it to
  ``true``);
- *lists* (``mounts``, ``default-modules``): user items are appended;
- *settings* (``type``, ``etcd``, ``cache``, ``runtime``...): a later file of the same level
  replaces the value (drop-in files); a user file may set what the system files leave unset,
  and change a system value only when ``allow-user-override`` allows that key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcocc.config import legacy
from pcocc.config.placeholders import expand_load, expand_tree, home_dir
from pcocc.config.sizes import parse_size
from pcocc.config.doccache import cached_doc, remember_doc
from pcocc.config.model import (
    BatchConfig,
    DEFAULT_CACHE_MAX_SIZE,
    CacheConfig,
    Config,
    ContainerSettings,
    Origin,
    RepoConfig,
)
from pcocc.config.validate import FILES, schema_text, validate
from pcocc.config.yamldoc import YamlDoc, format_path, load_yaml
from pcocc.errors import ConfigError

OVERRIDE_KEY = "allow-user-override"


@dataclass(frozen=True)
class FileSpec:
    #: top-level key -> word for one entry, for keys holding named entries
    named: dict[str, str]
    #: top-level keys holding lists that levels append to
    appended: tuple[str, ...] = ()


SPECS: dict[str, FileSpec] = {
    "batch": FileSpec({}),
    "repos": FileSpec({"repos": "repository"}),
    "templates": FileSpec({"templates": "template"}),
    "resources": FileSpec({"resource-sets": "resource set"}),
    "networks": FileSpec({"networks": "network"}),
    "containers": FileSpec({"modules": "module", "env": "variable"}, ("mounts", "default-modules")),
}



def config_files(directory: Path, name: str) -> list[Path]:
    """The files of one level for ``name``: the main file, then the drop-in directory."""
    files = []
    main = directory / f"{name}.yaml"
    drop_in = directory / f"{name}.d"
    try:
        if main.is_file():
            files.append(main)
        if drop_in.is_dir():
            files.extend(sorted(p for p in drop_in.glob("*.yaml") if p.is_file()))
    except OSError as err:
        raise ConfigError(
            f"{err.filename or directory}: cannot read: {err.strerror}",
            hint="check the permissions of the configuration directory",
        ) from err
    return files


class _Merger:
    """Merges the documents of one configuration file name, level after level."""

    def __init__(self, name: str, origins: dict[tuple[Any, ...], Origin]):
        self.name = name
        self.spec = SPECS[name]
        self.origins = origins
        self.data: dict[str, Any] = {}
        self.allowed: bool | set[str] = False
        self.docs: list[YamlDoc] = []
        #: entry or setting -> where it was last defined, for the override rules
        self._defined: dict[tuple[Any, ...], Origin] = {}

    def add(self, doc: YamlDoc, level: str) -> None:
        self.docs.append(doc)
        for path, (line, col) in doc.keys.items():
            self.origins[(self.name, *path)] = Origin(level, doc.path, line, col)
        if OVERRIDE_KEY in doc.data:
            if level != "system":
                raise doc.error(
                    (OVERRIDE_KEY,),
                    "only allowed in the system configuration",
                    key=True,
                    hint="remove this key from your file",
                )
            value = doc.data[OVERRIDE_KEY]
            if value is True or self.allowed is True:
                self.allowed = True
            elif value:
                self.allowed = (self.allowed or set()) | set(value)
        for key, value in doc.data.items():
            if key == OVERRIDE_KEY:
                continue
            if key in self.spec.named:
                self._add_named(doc, level, key, value)
            elif key in self.spec.appended:
                self.data.setdefault(key, []).extend(value)
            else:
                self._check_override(doc, level, (key,), "setting", key)
                self.data[key] = value

    def _add_named(self, doc: YamlDoc, level: str, key: str, value: Any) -> None:
        table = self.data.setdefault(key, {})
        items = (
            [(entry["name"], (key, i), entry) for i, entry in enumerate(value)]
            if isinstance(value, list)
            else [(n, (key, n), entry) for n, entry in value.items()]
        )
        word = self.spec.named[key]
        for entry_name, path, entry in items:
            self._check_override(doc, level, path, word, entry_name, named_key=key)
            table[entry_name] = entry
            self.origins[(self.name, key, entry_name)] = self._origin(doc, level, path)
            if isinstance(entry, dict):
                for sub in entry:
                    self.origins[(self.name, key, entry_name, sub)] = self._origin(
                        doc, level, (*path, sub), key=True
                    )

    @staticmethod
    def _origin(doc: YamlDoc, level: str, path: tuple[Any, ...], key: bool = True) -> Origin:
        table = doc.keys if key else doc.values
        line, col = table.get(path) or doc.values.get(path, (0, 0))
        return Origin(level, doc.path, line, col)

    def _check_override(
        self,
        doc: YamlDoc,
        level: str,
        path: tuple[Any, ...],
        word: str,
        entry_name: str,
        named_key: str | None = None,
    ) -> None:
        ident = (self.name, named_key, entry_name) if named_key else (self.name, entry_name)
        prev = self._defined.get(ident)
        here = self._origin(doc, level, path)
        self._defined[ident] = here
        if prev is None:
            return
        if prev.level == level:
            if named_key is None:
                return  # drop-in files of one level replace settings
            raise doc.error(
                path,
                f"{word} '{entry_name}' is already defined in {prev}",
                key=True,
                hint="rename or remove one of them",
            )
        if prev.level == "system" and level == "user":
            if self.allowed is True or (self.allowed and entry_name in self.allowed):
                return
            what = f"{word} '{entry_name}'" if named_key else f"'{entry_name}'"
            hint = "ask the admin to list it in allow-user-override"
            if self.name == "templates":
                hint = f"use another name with 'inherits: {entry_name}', or {hint}"
            elif named_key:
                hint = f"use another name, or {hint}"
            raise doc.error(
                path,
                f"{what} is set by the admin in {prev} and may not be redefined",
                key=True,
                hint=hint,
            )


def _load_docs(name: str, system_dir: Path, user_dir: Path, cfg: Config) -> _Merger:
    merger = _Merger(name, cfg.origins)
    for level, directory in (("system", system_dir), ("user", user_dir)):
        for path in config_files(directory, name):
            schema = schema_text(name)
            doc = cached_doc(path, schema)
            if doc is None:
                doc = load_yaml(path)
                refused = legacy.adapt(name, doc)
                if refused:
                    raise refused[0]
                _drop_empty_collections(doc, merger.spec)
                validate(name, doc)
                remember_doc(doc, schema)
            expand_tree(doc.data, doc.error)
            if name == "networks" and level == "user":
                _refuse_user_ethernet(doc)
            merger.add(doc, level)
    return merger


def _drop_empty_collections(doc: YamlDoc, spec: FileSpec) -> None:
    """``templates:`` with every entry commented out is an empty collection, not an error."""
    for key in (*spec.named, *spec.appended):
        if key in doc.data and doc.data[key] is None:
            del doc.data[key]


def _refuse_user_ethernet(doc: YamlDoc) -> None:
    for net_name, net in (doc.data.get("networks") or {}).items():
        if net.get("type") == "ethernet":
            raise doc.error(
                ("networks", net_name, "type"),
                "only the admin may define ethernet networks",
                hint="use a network of type private (or user)",
            )


def load(system_dir: Path, user_dir: Path) -> Config:
    """See :func:`pcocc.config.load_config`."""
    cfg = Config(system_dir=system_dir, user_dir=user_dir)
    merged = {name: _load_docs(name, system_dir, user_dir, cfg) for name in FILES}

    _fill_repos(cfg, merged["repos"].data)
    cfg.templates = merged["templates"].data.get("templates", {})
    cfg.resources = merged["resources"].data.get("resource-sets", {})
    cfg.networks = merged["networks"].data.get("networks", {})
    cfg.batch = BatchConfig.from_data(merged["batch"].data, _etcd_base(cfg))
    cfg.containers = ContainerSettings.from_data(merged["containers"].data)
    _check_references(cfg)
    return cfg


def _etcd_base(cfg: Config) -> Path | None:
    """The directory relative etcd paths start from: that of the file which set
    ``password-file``, else ``ca-cert``, else ``etcd``."""
    for key in (("password-file",), ("ca-cert",), ()):
        origin = cfg.origin("batch", "etcd", *key)
        if origin.file is not None:
            return origin.file.parent
    return None


def _path(value: str, origin: Origin) -> Path:
    """A path used as is from now on: ``%%{`` becomes ``%{``; relative to its file."""
    path = Path(value.replace("%%{", "%{")).expanduser()
    if not path.is_absolute() and origin.file is not None:
        path = origin.file.parent / path
    return path


def _fill_repos(cfg: Config, data: dict[str, Any]) -> None:
    for name, entry in data.get("repos", {}).items():
        origin = cfg.origin("repos", "repos", name)
        cfg.repos.append(
            RepoConfig(
                name, _path(entry["path"], origin), entry.get("description", ""), origin.level
            )
        )
    if not cfg.repos:
        cfg.repos.append(
            RepoConfig("user", Path(home_dir()) / ".pcocc" / "repo", "your images", "default")
        )
    cache = data.get("cache")
    if cache is None:
        cfg.cache = CacheConfig(Path(expand_load("%{homedir}/.cache/pcocc")))
        return
    origin = cfg.origin("repos", "cache")
    max_size = parse_size(cache.get("max-size", DEFAULT_CACHE_MAX_SIZE))
    cfg.cache = CacheConfig(
        path=_path(cache["path"], origin),
        max_size_bytes=max_size or None,  # 0: no limit
        mode=cache.get("mode", "dir"),
        shared=bool(cache.get("shared", False)),
    )


def _check_references(cfg: Config) -> None:
    """Names that point into another file must exist there."""
    for rs_name, rs in cfg.resources.items():
        for i, net in enumerate(rs.get("networks", [])):
            if net not in cfg.networks:
                raise _missing(
                    cfg,
                    ("resources", "resource-sets", rs_name, "networks"),
                    i,
                    "network",
                    net,
                    list(cfg.networks),
                    "networks.yaml",
                )
    for i, mod in enumerate(cfg.containers.default_modules):
        if mod not in cfg.containers.modules:
            raise _missing(
                cfg,
                ("containers", "default-modules"),
                i,
                "module",
                mod,
                list(cfg.containers.modules),
                "containers.yaml",
            )


def _missing(
    cfg: Config,
    key: tuple[Any, ...],
    index: int,
    word: str,
    name: str,
    known: list[str],
    where_defined: str,
) -> ConfigError:
    origin = cfg.origin(*key)
    path = format_path((*key[1:], index))
    msg = f"{origin.file}:{origin.line}:{origin.column}: {path}: unknown {word} '{name}'"
    import difflib  # only for the hint of an error

    near = difflib.get_close_matches(name, known, n=1)
    if near:
        msg += f", did you mean '{near[0]}'?"
    hint = f"define it in {where_defined}" if not known else f"known: {', '.join(sorted(known))}"
    return ConfigError(msg, hint=hint)
