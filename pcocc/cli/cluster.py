"""``pcocc alloc``, ``pcocc batch`` and ``pcocc ps``: start and list virtual clusters."""

from __future__ import annotations

import json

import click

from pcocc.cli.context import Session, exit_with, pass_session
from pcocc.errors import UsageError


def _definition_options(func):
    options = [
        click.option(
            "-c",
            "--cores",
            type=click.IntRange(min=1),
            default=None,
            help="CPU cores of each VM [default: from the template's resource set].",
        ),
        click.option(
            "--image",
            "images",
            multiple=True,
            metavar="[TPL=]IMAGE",
            help="Use IMAGE for template TPL (or for every template); repeatable.",
        ),
        click.option(
            "--mount",
            "mounts",
            multiple=True,
            metavar="SRC:DST",
            help="Share host directory SRC at DST in the VMs; repeatable.",
        ),
        click.option("--user-data", metavar="FILE", help="cloud-init user-data for the VMs."),
        click.argument("spec", metavar="TPL[:N][,TPL2[:M]]"),
        click.argument(
            "batch_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- BATCH_OPTIONS]"
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _definition(session: Session, spec, cores, images, mounts, user_data):
    from pcocc.cluster.jobs import prepare_definition

    return prepare_definition(
        session.config,
        spec,
        cores=cores,
        images=images,
        mounts=mounts,
        user_data_file=user_data,
    )


@click.command()
@click.option(
    "-E",
    "--command",
    metavar="CMD",
    help="Run CMD on the first node once the VMs run, instead of a shell.",
)
@_definition_options
@pass_session
def alloc(session: Session, command, cores, images, mounts, user_data, spec, batch_args):
    """Run a virtual cluster interactively.

    Allocates one task per VM (options after '--' go to the batch system, e.g. -- -p debug),
    boots N VMs of template TPL (one when ':N' is left out), and M of TPL2, then opens a
    shell (or runs -E CMD) with PCOCC_JOB_ID set. The cluster is torn down when the shell or
    command ends.
    """
    from pcocc.cluster.jobs import alloc as run_alloc

    definition = _definition(session, spec, cores, images, mounts, user_data)
    status = run_alloc(session.config, definition, batch_args, command,
                       log_args=session.log_args)
    exit_with(status)


@click.command()
@click.option("-E", "--command", metavar="CMD", help="Run CMD on the first node once the VMs run.")
@click.option(
    "-b",
    "--batch-script",
    "guest_script",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Run the script FILE inside vm0 (through its guest agent) once the VMs run.",
)
@_definition_options
@pass_session
def batch(
    session: Session, command, guest_script, cores, images, mounts, user_data, spec, batch_args
):
    """Run a virtual cluster in a batch job; print the job id.

    Like 'pcocc alloc', but the job runs in the background; it ends when -E CMD or the
    -b script ends, with its exit status (without either, when the job's time limit is
    reached or it is cancelled).
    """
    from pcocc.cluster.jobs import guest_script_command, read_guest_script, submit

    if command is not None and guest_script is not None:
        raise UsageError("give either -E CMD or -b FILE, not both")
    if guest_script is not None:
        command = guest_script_command(read_guest_script(guest_script))
    definition = _definition(session, spec, cores, images, mounts, user_data)
    click.echo(submit(session.config, definition, batch_args, command, session.log_args))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_session
def ps(session: Session, as_json: bool) -> None:
    """List your running virtual clusters."""
    from pcocc.cluster.access import list_clusters
    from pcocc.cluster.lookup import ps_table

    clusters = list_clusters(config=lambda: session.config)
    if as_json:
        click.echo(json.dumps([c.to_json() for c in clusters], indent=2))
    elif clusters:
        click.echo(ps_table(clusters))
