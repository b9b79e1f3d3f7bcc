"""``pcocc ckpt``: checkpoint a running virtual cluster (restored by ``alloc/batch -r``)."""

from __future__ import annotations

import click

from pcocc.cli.context import Session, pass_session


@click.command()
@click.option("-j", "--jobid", "job_id", metavar="JOBID",
              help="Cluster to checkpoint [default: $PCOCC_JOB_ID, $SLURM_JOB_ID, or your"
                   " only cluster].")
@click.option("-F", "--force", is_flag=True, help="Replace an existing checkpoint DIR.")
@click.option("--no-stop", is_flag=True, help="Let the VMs run on after the checkpoint.")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False))
@pass_session
def ckpt(session: Session, job_id: str | None, force: bool, no_stop: bool,
         directory: str) -> None:
    """Checkpoint every VM of a cluster into DIR, then stop the cluster.

    DIR must be on a file system that every node of the job sees. Restore the cluster
    with 'pcocc alloc -r DIR TPL:N' (or batch), with the same definition and templates.
    """
    from pcocc.cluster.ckptjob import checkpoint_job

    path = checkpoint_job(job_id, directory, force=force, stop=not no_stop,
                          etcd=lambda: session.config.batch.etcd, report=session.notify)
    what = "the VMs run on" if no_stop else "the cluster stops"
    session.say(f"checkpoint written to {path}; {what}")
