"""VM templates: resolve inheritance and remember where each setting comes from.

A template's settings are those of its parent (``inherits``), recursively, overridden key by
key by its own; values are replaced whole (a child's ``custom-args`` replaces the parent's
list). Settings no template sets take the built-in defaults below.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from pcocc.config import Config, Origin, parse_size
from pcocc.errors import ConfigError, NotFound

#: Settings every resolved template has, unless a template sets them.
TEMPLATE_DEFAULTS: dict[str, Any] = {
    "accel": "auto",
    "full-node": False,
    "custom-args": [],
    "mount-points": {},
    "persistent-drives": [],
}

#: Resources of a template that names no resource set, and defaults within a set.
RESOURCE_DEFAULTS: dict[str, Any] = {"cores": 1, "memory": "1G", "networks": []}


@dataclass(frozen=True)
class Setting:
    """A resolved value and where it was set."""

    value: Any
    template: str | None  # the template that set it; None for a built-in default
    origin: Origin


@dataclass
class Template:
    name: str
    origin: Origin  # where the template itself is defined
    chain: list[str]  # the template, then its parent, grandparent...
    settings: dict[str, Setting] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        setting = self.settings.get(key)
        return default if setting is None else setting.value

    @property
    def level(self) -> str:
        """``system`` or ``user``."""
        return self.origin.level

    @property
    def description(self) -> str:
        return self.get("description", "")

    @property
    def image(self) -> str | None:
        return self.get("image")

    @property
    def resource_set(self) -> str | None:
        return self.get("resource-set")

    @property
    def parent(self) -> str | None:
        return self.chain[1] if len(self.chain) > 1 else None

    @property
    def memory_bytes(self) -> int:
        return parse_size(self.resources["memory"])

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "level": self.level,
            "file": str(self.origin.file) if self.origin.file else None,
            "line": self.origin.line,
            "inherits": self.parent,
            "chain": self.chain,
            "settings": {
                key: {
                    "value": s.value,
                    "template": s.template,
                    "file": str(s.origin.file) if s.origin.file else None,
                    "line": s.origin.line,
                }
                for key, s in sorted(self.settings.items())
            },
            "resources": self.resources,
        }


def _where(config: Config, *path: Any) -> str:
    origin = config.origin("templates", "templates", *path)
    return f"{origin.file}:{origin.line}:{origin.column}"


def _unknown(name: str, known: list[str]) -> str:
    near = difflib.get_close_matches(name, known, n=1)
    return f", did you mean '{near[0]}'?" if near else ""


def _chain(config: Config, name: str) -> list[str]:
    chain = [name]
    while True:
        parent = config.templates[chain[-1]].get("inherits")
        if parent is None:
            return chain
        child = chain[-1]
        if parent in chain:
            cycle = " -> ".join([*chain[chain.index(parent) :], parent])
            raise ConfigError(
                f"{_where(config, child, 'inherits')}: templates.{child}.inherits: "
                f"inheritance cycle {cycle}",
                hint="remove 'inherits' from one of these templates",
            )
        if parent not in config.templates:
            raise ConfigError(
                f"{_where(config, child, 'inherits')}: templates.{child}.inherits: "
                f"unknown template '{parent}'{_unknown(parent, list(config.templates))}",
                hint="run 'pcocc template list' to see the templates",
            )
        chain.append(parent)


def resolve_template(config: Config, name: str) -> Template:
    """The template ``name`` with its inherited and default settings.

    :raise NotFound: no such template
    :raise ConfigError: inheritance cycle, missing parent or unknown resource set
    """
    if name not in config.templates:
        raise NotFound(
            f"template '{name}' not found{_unknown(name, list(config.templates))}",
            hint="run 'pcocc template list' to see the templates",
        )
    chain = _chain(config, name)
    settings: dict[str, Setting] = {
        key: Setting(value, None, Origin("default")) for key, value in TEMPLATE_DEFAULTS.items()
    }
    for tpl in reversed(chain):
        for key, value in config.templates[tpl].items():
            if key == "inherits":
                continue
            settings[key] = Setting(value, tpl, config.origin("templates", "templates", tpl, key))
    template = Template(name, config.origin("templates", "templates", name), chain, settings)
    template.resources = _resources(config, template)
    return template


def _resources(config: Config, template: Template) -> dict[str, Any]:
    rs_name = template.resource_set
    if rs_name is None:
        return dict(RESOURCE_DEFAULTS)
    if rs_name not in config.resources:
        setter = template.settings["resource-set"].template
        raise ConfigError(
            f"{_where(config, setter, 'resource-set')}: templates.{setter}.resource-set: "
            f"unknown resource set '{rs_name}'{_unknown(rs_name, list(config.resources))}",
            hint="resource sets are defined in resources.yaml",
        )
    return {**RESOURCE_DEFAULTS, **config.resources[rs_name]}


def resolve_all(config: Config) -> dict[str, Template]:
    """Every template, system ones first, each in file order.

    :raise ConfigError: as :func:`resolve_template`, for the first broken template
    """
    names = sorted(
        config.templates,
        key=lambda n: (config.origin("templates", "templates", n).level != "system",),
    )
    return {name: resolve_template(config, name) for name in names}
