"""``vidiff batch``: a JSON Lines file of jobs run on the local devices or on a Ray cluster.

Public API: :func:`run_batch` (returns a :class:`BatchResult`), :func:`read_jobs`, :class:`BatchJob`,
:class:`Outcome`. The command line is :func:`vidiff.batch.command.main_batch`.
"""

from .command import BatchResult, run_batch
from .jobs_file import BatchJob, JobsFileError, read_jobs
from .worker import Outcome

__all__ = ["BatchJob", "BatchResult", "JobsFileError", "Outcome", "read_jobs", "run_batch"]
