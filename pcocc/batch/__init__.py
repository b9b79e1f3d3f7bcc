"""Batch managers: run virtual clusters in Slurm jobs or, without Slurm, on this host."""

from pcocc.batch.base import BatchManager, JobSpec, get_manager, known_types, task_rank

__all__ = ["BatchManager", "JobSpec", "get_manager", "known_types", "task_rank"]
