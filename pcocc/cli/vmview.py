"""``pcocc dump`` and ``pcocc display``: a running VM's memory and screen."""

from __future__ import annotations

import json

import click

from pcocc.cli.context import Session, exit_with, pass_session
from pcocc.cli.selection import cluster_selection
from pcocc.cluster.lookup import ClusterSelection


@click.command()
@cluster_selection
@click.argument("vm", metavar="vmN")
@click.argument("dest", metavar="FILE", type=click.Path(dir_okay=False))
@pass_session
def dump(session: Session, selection: ClusterSelection, vm: str, dest: str) -> None:
    """Write the guest memory of a VM to FILE (ELF, readable by crash or gdb).

    FILE must not exist; it appears only once the dump is complete (mode 0600). Run it on
    the VM's host. The guest is paused while QEMU writes.
    """
    from pcocc.cli.output import human_size
    from pcocc.cli.progress import progress_bar
    from pcocc.cluster.access import find_cluster
    from pcocc.cluster.dump import dump_vm

    view = find_cluster(selection, etcd=lambda: session.config.batch.etcd)
    with progress_bar(f"dumping {vm}", enabled=session.show_progress) as report:
        size = dump_vm(view, vm, dest, progress=report)
    session.notify(f"wrote {human_size(size)} of {vm}'s memory to {dest}")


@click.command()
@cluster_selection
@click.option("-p", "open_viewer", is_flag=True,
              help="Open a viewer (remote-viewer or vncviewer) instead of printing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.argument("vm", metavar="vmN")
@pass_session
def display(session: Session, selection: ClusterSelection, open_viewer: bool,
            as_json: bool, vm: str) -> None:
    """Print the address and password of a VM's remote display, or open it with -p.

    The VM's template must set 'remote-display: vnc' (or spice). The display is a unix
    socket on the VM's host that only you can open; run this command on that host.
    """
    from pcocc.cluster.access import find_cluster, run_interactive
    from pcocc.cluster.display import find_display, viewer_argv

    found = find_display(find_cluster(selection, etcd=lambda: session.config.batch.etcd), vm)
    if open_viewer:
        argv = viewer_argv(found.info)
        session.say(f"{vm}'s display password: {found.info.password}")
        exit_with(run_interactive(argv))
    elif as_json:
        click.echo(json.dumps(found.to_json(), indent=2))
    else:
        click.echo("\n".join(found.lines()))
