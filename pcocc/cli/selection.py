"""``-j JOBID``, ``-J NAME`` and ``--user USER``: how every command that acts on a running
cluster selects it (as in pcocc 0.7). The callback gets one ``selection`` parameter (a
:class:`pcocc.cluster.lookup.ClusterSelection`) for ``find_cluster``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from pcocc.cluster.lookup import ClusterSelection

JOBID_HELP = "Cluster to use, by job id [default: $PCOCC_JOB_ID, $SLURM_JOB_ID, or your only cluster]."
JOBNAME_HELP = "Cluster to use, by job name (pcocc alloc/batch -J NAME)."
USER_HELP = "Owner of the cluster (pcocc 0.7); only yourself: other users' clusters are private."


def cluster_selection(func: Callable[..., Any] | None = None, *, user_option: bool = True):
    """Decorator: add ``-j/--jobid``, ``-J/--jobname`` and (unless ``user_option`` is
    False, for a command whose ``--user`` means something else) ``--user``, and pass them
    to the callback as ``selection``. Use it bare or as ``cluster_selection(user_option=False)``.
    """
    if func is None:
        return functools.partial(cluster_selection, user_option=user_option)

    @functools.wraps(func)
    def wrapper(*args: Any, job_id: str | None, job_name: str | None,
                owner: str | None = None, **kwargs: Any) -> Any:
        return func(*args, selection=ClusterSelection(job_id, job_name, owner), **kwargs)

    options = [
        click.option("-j", "--jobid", "job_id", metavar="JOBID", help=JOBID_HELP),
        click.option("-J", "--jobname", "job_name", metavar="NAME", help=JOBNAME_HELP),
    ]
    if user_option:
        options.append(click.option("--user", "owner", metavar="USER", help=USER_HELP))
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper
