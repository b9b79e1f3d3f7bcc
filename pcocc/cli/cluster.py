"""``pcocc alloc``, ``pcocc batch`` and ``pcocc ps``: start and list virtual clusters."""

from __future__ import annotations

import json
from pathlib import Path

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
            metavar="SRC:DST|TAG=PATH[,type=virtio-fs|virtio-9p][,readonly]",
            help="Share host directory SRC at DST in the VMs, or (as pcocc 0.7) PATH with "
            "mount tag TAG, for the guest to mount; repeatable.",
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


_restart_option = click.option(
    "-r",
    "--restart-ckpt",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Restore the VMs from checkpoint DIR ('pcocc ckpt'); the definition and templates"
    " must be the checkpoint's.",
)


def _restore(session: Session, definition, restart_ckpt):
    """The checked checkpoint to restore ``definition`` from, or None."""
    if restart_ckpt is None:
        return None
    from pcocc.cluster.jobs import check_restore

    return check_restore(session.config, definition, restart_ckpt)


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
@_restart_option
@_definition_options
@pass_session
def alloc(session: Session, command, restart_ckpt, cores, images, mounts, user_data, spec,
          batch_args):
    """Run a virtual cluster interactively.

    Allocates one task per VM (options after '--' go to the batch system, e.g. -- -p debug),
    boots N VMs of template TPL (one when ':N' is left out), and M of TPL2, then opens a
    shell (or runs -E CMD) with PCOCC_JOB_ID set. The cluster is torn down when the shell or
    command ends.
    """
    from pcocc.cluster.jobs import alloc as run_alloc

    definition = _definition(session, spec, cores, images, mounts, user_data)
    restore = _restore(session, definition, restart_ckpt)
    status = run_alloc(session.config, definition, batch_args, command,
                       log_args=session.log_args, restore=restore)
    exit_with(status)


@click.command()
@click.option("-E", "--command", metavar="CMD", help="Run CMD on the first node once the VMs run.")
@click.option(
    "-b",
    "--host-script",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Run the script FILE on the first node once the VMs run.",
)
@_restart_option
@_definition_options
@pass_session
def batch(
    session: Session, command, host_script, restart_ckpt, cores, images, mounts, user_data,
    spec, batch_args
):
    """Run a virtual cluster in a batch job; print the job id.

    Like 'pcocc alloc', but the job runs in the background; it ends when -E CMD or the
    host script ends (without either, when the job's time limit is reached or it is
    cancelled).
    """
    from pcocc.cluster.jobs import submit

    if command is not None and host_script is not None:
        raise UsageError("give either -E CMD or -b FILE, not both")
    if host_script is not None:
        try:
            command = Path(host_script).read_text()
        except OSError as err:
            raise UsageError(
                f"--host-script '{host_script}': cannot read it: {err.strerror}"
            ) from err
    definition = _definition(session, spec, cores, images, mounts, user_data)
    restore = _restore(session, definition, restart_ckpt)
    click.echo(submit(session.config, definition, batch_args, command, session.log_args,
                      restore))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_session
def ps(session: Session, as_json: bool) -> None:
    """List your running virtual clusters."""
    from pcocc.cluster.access import list_clusters
    from pcocc.cluster.lookup import ps_table

    clusters = list_clusters(etcd=lambda: session.config.batch.etcd)
    if as_json:
        click.echo(json.dumps([c.to_json() for c in clusters], indent=2))
    elif clusters:
        click.echo(ps_table(clusters))
