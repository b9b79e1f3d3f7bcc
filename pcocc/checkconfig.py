"""Check a whole configuration directory and report every problem at once
(``pcocc admin check-config DIR``).

Loading a configuration stops at the first problem; an admin moving a site (from pcocc 0.7,
say) wants the whole list. Each file is parsed and checked on its own: its refused pcocc 0.7
settings (see :mod:`pcocc.config.legacy`) and all its schema errors. When every file is
valid, the directory is loaded as the system configuration (no user files) and every
template resolved, which checks what files say of each other (resource sets, networks,
inheritance).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pcocc.config import legacy
from pcocc.config.loader import SPECS, config_files, load, _drop_empty_collections
from pcocc.config.validate import FILES, all_errors
from pcocc.config.yamldoc import load_yaml
from pcocc.errors import ConfigError, NotFound


@dataclass
class CheckReport:
    files: list[Path] = field(default_factory=list)
    problems: list[ConfigError] = field(default_factory=list)
    #: what the directory defines when it is valid: word -> count
    counts: dict[str, int] = field(default_factory=dict)


def _check_file(name: str, path: Path) -> list[ConfigError]:
    try:
        doc = load_yaml(path)
    except ConfigError as err:
        return [err]
    if legacy.is_unwrapped(name, doc):
        legacy.wrap(name, doc)
    legacy.convert(name, doc)
    refused = legacy.refusals(name, doc)
    for where, _ in reversed(refused):
        try:
            legacy.leave_out(doc, where)
        except (KeyError, IndexError, TypeError):
            pass
    _drop_empty_collections(doc, SPECS[name])
    return [err for _, err in refused] + all_errors(name, doc)


def check_directory(directory: Path) -> CheckReport:
    """Every problem of the configuration files of ``directory``.

    :raise ConfigError: the directory itself cannot be read
    """
    if not directory.is_dir():
        raise ConfigError(f"{directory}: not a directory",
                          hint="give the configuration directory, e.g. /etc/pcocc")
    report = CheckReport()
    for name in FILES:
        for path in config_files(directory, name):
            report.files.append(path)
            report.problems += _check_file(name, path)
    if report.problems:
        return report
    from pcocc.templates import resolve_template

    try:
        cfg = load(directory, directory / ".pcocc-check-config-no-user-dir")
        for tpl in cfg.templates:
            resolve_template(cfg, tpl)
    except (ConfigError, NotFound) as err:
        report.problems.append(err if isinstance(err, ConfigError) else ConfigError(str(err)))
        return report
    report.counts = {
        "templates": len(cfg.templates),
        "resource sets": len(cfg.resources),
        "networks": len(cfg.networks),
        "repositories": len([r for r in cfg.repos if r.origin == "system"]),
    }
    return report
