"""`vidiff batch --ray`: a local Ray cluster with two CPU slots runs the six tiny jobs on two actors;
a worker killed mid-job is replaced and its job completes; a rerun skips every job.

One ``ray.init`` for the module (it takes seconds); the crash is the worker's test-only hook
(``VIDIFF_BATCH_CRASH_ONCE`` names a marker file holding the job name; the worker that starts that
job deletes the file and ends its process with ``os._exit``, as a crashing worker would).
"""

from __future__ import annotations

import os

import pytest
import ray

from tests.batch_fixtures import check_six_outputs, input_image, six_jobs, write_jobs
from vidiff.batch import run_batch
from vidiff.batch.worker import CRASH_ONCE_ENV
from vidiff.cli.main import main


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def crashed_run(cluster, demo_checkpoints, tmp_path_factory):
    """The six jobs on Ray; the actor that starts "cat-named" (the second Wan job) dies once."""
    folder = tmp_path_factory.mktemp("ray-batch")
    jobs = write_jobs(folder, six_jobs(demo_checkpoints, input_image(folder)))
    marker = folder / "crash-once"
    marker.write_text("cat-named")
    os.environ[CRASH_ONCE_ENV] = str(marker)
    try:
        result = run_batch(jobs, folder / "videos", ray="auto", progress=False)
    finally:
        del os.environ[CRASH_ONCE_ENV]
    return folder, jobs, marker, result


def pids(result) -> dict[str, int]:
    return {outcome.name: outcome.pid for outcome in result.outcomes}


def test_six_jobs_run_on_two_ray_actors(crashed_run):
    folder, _, _, result = crashed_run
    assert result.summary() == "vidiff batch: 6 done, 0 skipped, 0 failed"
    check_six_outputs(folder / "videos")
    by_job = pids(result)
    # The first Wan and the first SVD job start the two actors' groups: two worker processes.
    assert by_job["0001-wan"] != by_job["0003-svd"]
    assert os.getpid() not in by_job.values() and None not in by_job.values()


def test_a_worker_killed_mid_job_is_replaced_and_the_job_completes(crashed_run):
    _, _, marker, result = crashed_run
    assert not marker.exists()  # the hook fired: a worker died at the job's first step
    by_job = pids(result)
    # The job ran again, to completion, in a new process (the one that ran "0001-wan" before it is gone).
    assert by_job["cat-named"] != by_job["0001-wan"]
    assert by_job["cat-named"] not in (by_job["0003-svd"], by_job["0005-svd"], by_job["0007-svd"])


def test_a_rerun_skips_every_job(crashed_run, capsys):
    folder, jobs, _, _ = crashed_run
    assert main(["batch", str(jobs), "--out", str(folder / "videos"), "--ray", "auto", "-q"]) == 0  # joins the cluster
    assert capsys.readouterr().out.splitlines() == ["vidiff batch: 0 done, 6 skipped, 0 failed"]
    check_six_outputs(folder / "videos")
