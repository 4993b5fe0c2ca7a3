"""What a batch run has to do: which jobs are finished already, and in which groups the rest run.

A job is finished when every output and sidecar it writes exists in ``--out``: the CLI moves a run's
files in together after they are complete (:mod:`vidiff.cli.commit`), so existing means complete.
Jobs that share a pipeline and model form a group, run by one worker one after another, so that
worker loads the model once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .jobs_file import BatchJob
from .worker import Outcome

# Called once per finished job (done, skipped or failed): the progress bar's tick.
Report = Callable[[Outcome], None]


def is_finished(job: BatchJob, out: Path) -> bool:
    """True when every output and sidecar ``job`` writes is in ``out`` (an earlier run made them)."""
    return all(os.path.lexists(path) for path in job.expected_paths(out))


def split_finished(jobs: list[BatchJob], out: Path) -> tuple[list[BatchJob], list[Outcome]]:
    """(jobs still to run, outcomes of those skipped because their outputs are complete)."""
    pending, skipped = [], []
    for job in jobs:
        if is_finished(job, out):
            skipped.append(Outcome(job.name, job.line, "skipped"))
        else:
            pending.append(job)
    return pending, skipped


def group_by_model(jobs: list[BatchJob]) -> list[list[BatchJob]]:
    """Jobs grouped by (pipeline, model), groups in order of their first job, jobs in file order."""
    groups: dict[tuple[str, str], list[BatchJob]] = {}
    for job in jobs:
        groups.setdefault((job.pipeline, job.model), []).append(job)
    return list(groups.values())
