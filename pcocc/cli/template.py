"""``pcocc template list|show``: parse, call pcocc.templates, print."""

from __future__ import annotations

import json
from typing import Any

import click

from pcocc.cli.context import Session, pass_session
from pcocc.cli.output import print_table


@click.group()
def template() -> None:
    """List and show VM templates."""


@template.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_session
def list_(session: Session, as_json: bool) -> None:
    """List the templates of the system and user configuration."""
    from pcocc.templates import resolve_all

    templates = resolve_all(session.config)
    if as_json:
        click.echo(json.dumps([t.to_json() for t in templates.values()], indent=2))
        return
    if not templates:
        click.echo(
            "pcocc: no templates: admins define them in templates.yaml of the system "
            "configuration, users in ~/.pcocc/templates.yaml",
            err=True,
        )
    rows = [
        [
            t.name,
            t.description,
            t.image or "-",
            t.resource_set or "-",
            t.parent or "-",
        ]
        for t in templates.values()
    ]
    print_table(["NAME", "DESCRIPTION", "IMAGE", "RESOURCES", "INHERITS"], rows)


@template.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@pass_session
def show(session: Session, name: str, as_json: bool) -> None:
    """Show every setting of template NAME and where it comes from."""
    from pcocc.templates import resolve_template

    tpl = resolve_template(session.config, name)
    if as_json:
        click.echo(json.dumps(tpl.to_json(), indent=2))
        return
    click.echo(f"template:  {tpl.name} ({tpl.level})")
    click.echo(f"defined:   {tpl.origin}")
    click.echo(f"inherits:  {' -> '.join(tpl.chain[1:]) or '-'}")
    click.echo("")
    rows = []
    for key in sorted(tpl.settings):
        s = tpl.settings[key]
        source = "default" if s.template is None else f"{s.template} ({s.origin})"
        rows.append([key, _show_value(s.value), source])
    res = tpl.resources
    rs = tpl.resource_set or "default"
    rows.append(["(cores)", str(res["cores"]), f"resource set {rs}"])
    rows.append(["(memory)", str(res["memory"]), f"resource set {rs}"])
    rows.append(["(networks)", _show_value(res["networks"]), f"resource set {rs}"])
    print_table(["SETTING", "VALUE", "FROM"], rows)


def _show_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)
