"""``pcocc alloc``, ``pcocc batch`` and ``pcocc ps``: start and list virtual clusters."""

from __future__ import annotations

import json

import click

from pcocc.batch.slurm_options import SLURM_ALLOC_OPTIONS
from pcocc.cli.context import Session, exit_with, pass_session
from pcocc.cli.passthrough import tool_command
from pcocc.cli.selection import cluster_selection
from pcocc.cluster.lookup import ClusterSelection
from pcocc.errors import UsageError


def _batch_command(func):
    """alloc and batch: every option that is not pcocc's goes to salloc/sbatch, wherever
    it is (a new decorator each time: click's keeps the first command's help)."""
    return tool_command(
        SLURM_ALLOC_OPTIONS,
        "batch_args",
        interspersed=True,
        options_metavar="[OPTIONS] [BATCH_OPTIONS]",
    )(func)


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
        click.option(
            "-J",
            "--jobname",
            "--job-name",
            "job_name",
            metavar="NAME",
            help="Name of the job [default: pcocc]; other commands select the cluster"
            " with -J NAME.",
        ),
        click.argument("spec", metavar="TPL[:N][,TPL2[:M]]"),
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
        fetch=_fetcher(session),
    )


def _fetcher(session: Session):
    """Fetch (signature-checked) a template image of URL or name that is not local."""
    def fetch(repos, uri):  # noqa: ANN001, ANN202
        from pathlib import Path

        from pcocc.trust.fetch import fetch_missing, trust_store

        return fetch_missing(repos, uri, session.security,
                             trust_store(session.security, Path(session.system_dir)),
                             session.notify)

    return fetch


@_batch_command
@click.option(
    "-E",
    "--command",
    "--alloc-script",
    "command",
    metavar="CMD",
    help="Run the shell command CMD on the first node once the VMs run, instead of a shell.",
)
@_restart_option
@_definition_options
@pass_session
def alloc(session: Session, command, restart_ckpt, cores, images, mounts, user_data, job_name,
          spec, batch_args):
    """Run a virtual cluster interactively.

    Allocates one task per VM, boots N VMs of template TPL (one when ':N' is left out), and
    M of TPL2, then opens a shell (or runs -E CMD) with PCOCC_JOB_ID set. The cluster is
    torn down when the shell or command ends.

    Every option that is not pcocc's goes to the batch system (salloc), before or after
    the definition: pcocc alloc -p debug -t 30 tpl:2. Options after '--' go there too.
    """
    from pcocc.cluster.jobs import alloc as run_alloc

    definition = _definition(session, spec, cores, images, mounts, user_data)
    restore = _restore(session, definition, restart_ckpt)
    status = run_alloc(session.config, definition, batch_args, command,
                       log_args=session.log_args, restore=restore, job_name=job_name)
    exit_with(status)


@_batch_command
@click.option(
    "-E",
    "--command",
    "host_script_e",
    metavar="FILE",
    help="Run the script FILE on the first node once the VMs run (a shell command line"
    " is also taken when it is no file and has a space: -E 'hostname -f').",
)
@click.option(
    "-b",
    "--batch-script",
    "guest_script",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Run the script FILE inside vm0 (through its guest agent) once the VMs run.",
)
@_restart_option
@_definition_options
@pass_session
def batch(
    session: Session, host_script_e, guest_script, restart_ckpt, cores, images, mounts,
    user_data, job_name, spec, batch_args
):
    """Run a virtual cluster in a batch job; print the job id.

    Like 'pcocc alloc', but the job runs in the background; it ends when the -E script or
    the -b script (run inside vm0) ends, with its exit status (without either, when the
    job's time limit is reached or it is cancelled). Options that are not pcocc's go to
    sbatch: pcocc batch -p debug --qos normal tpl:4.
    """
    from pcocc.cluster.jobs import (
        guest_script_command,
        host_script_command,
        read_guest_script,
        submit,
    )

    command = None if host_script_e is None else host_script_command(host_script_e)
    if command is not None and guest_script is not None:
        raise UsageError("give either -E FILE or -b FILE, not both")
    if guest_script is not None:
        command = guest_script_command(read_guest_script(guest_script))
    definition = _definition(session, spec, cores, images, mounts, user_data)
    restore = _restore(session, definition, restart_ckpt)
    click.echo(submit(session.config, definition, batch_args, command, session.log_args,
                      restore=restore, job_name=job_name))


@click.command()
@click.option("-a", "--all", "all_users", is_flag=True,
              help="Also list the clusters of every other user (as the batch system shows them).")
@click.option("-u", "--user", metavar="USER",
              help="List the clusters of USER (as the batch system shows them).")
@cluster_selection(user_option=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_session
def ps(session: Session, all_users: bool, user: str | None, selection: ClusterSelection,
       as_json: bool) -> None:
    """List your running virtual clusters (with -a or -u, other users' too)."""
    from pcocc import fields
    from pcocc.cluster.access import ps_listing
    from pcocc.cluster.adapters import user_name

    if user is not None:
        try:
            fields.name(user, "-u")
        except fields.BadField as err:
            raise UsageError(f"-u {user!r}: not a user name") from err
    listing = ps_listing(session.config, all_users=all_users, user=user, selection=selection)
    if listing.others is None and (all_users or user not in (None, user_name())):
        session.notify("without a batch system, other users' clusters are out of sight")
    owner = {"user": user_name()} if listing.others is not None else {}
    if as_json:
        data = [{**c.to_json(), **owner} for c in listing.own]
        data += [{"id": j.job_id, "name": j.name, "user": j.user, "state": j.state.lower(),
                  "nodes": j.nodes, "time": j.elapsed, "partition": j.partition}
                 for j in listing.others or ()]
        click.echo(json.dumps(data, indent=2))
    elif listing.own or listing.others:
        click.echo(ps_table(listing.own, listing.others, owner=user_name()))


def ps_table(clusters, others=None, owner: str = "") -> str:
    """The table of ``pcocc ps``: the user's clusters (``owner``'s), and with ``others``
    (:class:`pcocc.batch.base.JobInfo` of clusters as the batch system shows them: no VM
    count, the elapsed time as it prints it) a USER column."""
    from pcocc.cli.output import format_table
    from pcocc.cluster.lookup import format_age

    header = ["ID", "NAME", "USER", "STATE", "VMS", "NODES", "AGE"]
    rows = [[c.batchid, c.record.name or "-", owner, c.record.state.value,
             f"{c.running_count()}/{c.size}", ",".join(c.hosts) or "-", format_age(c.age_s)]
            for c in clusters]
    rows += [[j.job_id, j.name or "-", j.user, j.state.lower(), "-", j.nodes, j.elapsed]
             for j in others or ()]
    if others is None:  # only the caller's: no USER column
        header.pop(2)
        for row in rows:
            row.pop(2)
    return format_table(header, rows)
