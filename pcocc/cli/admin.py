"""``pcocc admin etcd-auth|etcd-user``: parse, call pcocc.kv.admin, print."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from pcocc.cli.context import Session, pass_session
from pcocc.kv.endpoints import ENDPOINTS_VAR

_ENDPOINTS_HELP = f"etcd client URLs, comma-separated [default: batch.yaml, ${ENDPOINTS_VAR}]."
_ROOT_FILE_HELP = (
    "File with the etcd root password [default: etcd-root.password in the system config dir]."
)


@click.group()
def admin() -> None:
    """Set up what pcocc needs on a site (admins only)."""


@admin.group("etcd-auth")
def etcd_auth() -> None:
    """Authentication of the site's etcd."""


@admin.group("etcd-user")
def etcd_user() -> None:
    """etcd users of pcocc users, each limited to their own keys."""


def _options(func):
    func = click.option("--root-password-file", type=click.Path(dir_okay=False),
                        help=_ROOT_FILE_HELP)(func)  # fmt: skip
    return click.option("--endpoints", metavar="URLS", help=_ENDPOINTS_HELP)(func)


def _endpoints(session: Session, endpoints: str | None) -> str:
    from pcocc.kv.connect import configured_endpoints
    from pcocc.errors import UsageError

    endpoints = endpoints or configured_endpoints(session.config.batch.etcd, os.environ)
    if not endpoints:
        raise UsageError(
            "no etcd to administer: batch.yaml has no etcd endpoints",
            hint=f"set etcd.endpoints in batch.yaml, {ENDPOINTS_VAR}, or give --endpoints",
        )
    return endpoints


def _connect(session: Session, endpoints: str | None, root_password_file: str | None):
    from pcocc.kv.admin import EtcdAuthAdmin, default_root_password_file
    from pcocc.kv.connect import site_tls

    endpoints = _endpoints(session, endpoints)
    root_file = (
        Path(root_password_file).expanduser()
        if root_password_file
        else default_root_password_file(Path(session.system_dir))
    )
    tls = site_tls(endpoints, lambda: session.config.batch.etcd)
    return EtcdAuthAdmin.connect(endpoints, root_file, tls=tls)


def _warn_if_auth_off(etcd) -> None:
    if not etcd.is_auth_enabled:
        click.echo(
            f"pcocc: warning: etcd at {etcd.client.endpoint} has authentication off: users and"
            " roles apply once 'pcocc admin etcd-auth enable' turns it on",
            err=True,
        )


@etcd_auth.command("enable")
@_options
@pass_session
def enable(session: Session, endpoints: str | None, root_password_file: str | None) -> None:
    """Create the etcd user root (role root) and turn authentication on.

    The root password is read from the root password file, or generated into it (mode 600)
    when the file does not exist.
    """
    with _connect(session, endpoints, root_password_file) as etcd:
        if not etcd.enable_auth():
            click.echo(f"etcd at {etcd.client.endpoint}: authentication is already enabled")
            return
        click.echo(
            f"etcd at {etcd.client.endpoint}: authentication enabled;"
            f" root password in {etcd.root_password_file}"
        )


@etcd_auth.command("status")
@click.option("--endpoints", metavar="URLS", help=_ENDPOINTS_HELP)
@pass_session
def status(session: Session, endpoints: str | None) -> None:
    """Say whether etcd checks logins."""
    from pcocc.kv.admin import is_auth_enabled
    from pcocc.kv.connect import site_tls

    endpoints = _endpoints(session, endpoints)
    tls = site_tls(endpoints, lambda: session.config.batch.etcd)
    state = "enabled" if is_auth_enabled(endpoints, tls=tls) else "disabled"
    click.echo(f"etcd at {endpoints}: authentication {state}")


@etcd_user.command("add")
@click.argument("user")
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False),
    help="Take the password from this file (mode 600), or write a random one there if it"
    " does not exist [default: etcd-users/USER.password in the system config dir].",
)
@_options
@pass_session
def add(
    session: Session,
    user: str,
    password_file: str | None,
    endpoints: str | None,
    root_password_file: str | None,
) -> None:
    """Add etcd user USER with role pcocc-user-USER: read/write under /pcocc/users/USER/."""
    from pcocc.kv.admin import default_user_password_file

    path = (
        Path(password_file).expanduser()
        if password_file
        else default_user_password_file(Path(session.system_dir), user)
    )
    with _connect(session, endpoints, root_password_file) as etcd:
        _warn_if_auth_off(etcd)
        added = etcd.add_user(user, path, chown_to_user=password_file is not None)
    how = "new random password written to" if added.password_generated else "password from"
    click.echo(f"etcd user {added.name} added with role {added.role} (readwrite {added.prefix})")
    click.echo(f"{how} {added.password_file}")
    if password_file is None:
        click.echo(
            f"give it to {user} as the password-file of batch.yaml (owned by {user}, mode 600)"
        )


@etcd_user.command("remove")
@click.argument("user")
@_options
@pass_session
def remove(
    session: Session, user: str, endpoints: str | None, root_password_file: str | None
) -> None:
    """Remove etcd user USER and its role (its keys and password file stay)."""
    with _connect(session, endpoints, root_password_file) as etcd:
        etcd.remove_user(user)
    click.echo(f"etcd user {user} removed")


@etcd_user.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_options
@pass_session
def list_(
    session: Session, as_json: bool, endpoints: str | None, root_password_file: str | None
) -> None:
    """List the etcd users, their roles and what they may access."""
    from pcocc.cli.output import print_table

    with _connect(session, endpoints, root_password_file) as etcd:
        _warn_if_auth_off(etcd)
        users = etcd.list_users()
    if as_json:
        click.echo(json.dumps([u.to_json() for u in users], indent=2))
        return
    rows = [
        [
            u.name,
            ",".join(u.roles) or "-",
            " ".join(f"{p.kind}:{p.prefix}" for p in u.permissions) or "-",
        ]
        for u in users
    ]
    print_table(["USER", "ROLES", "ACCESS"], rows)


@admin.command("check-config")
@click.argument("directory", type=click.Path(file_okay=False))
def check_config(directory: str) -> None:
    """Check every configuration file of DIRECTORY (e.g. /etc/pcocc, also in the format of
    pcocc 0.7) and list all their problems, each with its file:line (exit status 2 if any)."""
    from pcocc.cli.context import exit_with
    from pcocc.checkconfig import check_directory

    report = check_directory(Path(directory))
    for problem in report.problems:
        click.echo(str(problem))
        if problem.hint:
            click.echo(f"  hint: {problem.hint}")
    if report.problems:
        click.echo(f"{len(report.problems)} problem(s) in {directory}", err=True)
        exit_with(2)
        return
    defined = ", ".join(f"{n} {word}" for word, n in report.counts.items())
    click.echo(f"OK: {len(report.files)} file(s) in {directory}: {defined}")
