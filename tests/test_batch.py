"""`vidiff batch` on this machine: six tiny jobs, a resumed rerun, a bad jobs file, a job that fails alone."""

from __future__ import annotations

import contextlib
import io
import json
import os
import types

import pytest

from tests.batch_fixtures import SMALL, check_six_outputs, input_image, six_jobs, write_jobs
from vidiff.batch import BatchJob, Outcome, read_jobs
from vidiff.cli.main import main


def batch(*args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of an in-process ``vidiff batch …``."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(["batch", *map(str, args)])
    return status, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def first_run(demo_checkpoints, tmp_path_factory):
    """The six jobs run once, into a folder holding what a killed earlier run left behind."""
    folder = tmp_path_factory.mktemp("batch")
    jobs = write_jobs(folder, six_jobs(demo_checkpoints, input_image(folder)))
    out = folder / "videos"
    out.mkdir()
    (out / ".0001-wan.mp4.tmp-0badc0de.mp4").write_bytes(b"half a video")  # as commit.py names them
    (out / ".0003-svd.gif.json.old-0badc0de.json").write_text("{}")  # a replaced sidecar's copy
    return folder, jobs, out, batch(jobs, "--out", out, "--device", "cpu")


def test_six_jobs_run_locally_and_write_videos_and_sidecars(first_run):
    _, _, out, (status, stdout, stderr) = first_run
    assert status == 0, stderr
    assert stdout.splitlines() == ["vidiff batch: 6 done, 0 skipped, 0 failed"]
    check_six_outputs(out)  # also: the stale temporaries are gone, no other file appeared


def test_a_rerun_skips_every_finished_job(first_run):
    _, jobs, out, _ = first_run
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    status, stdout, stderr = batch(jobs, "--out", out, "-q")
    assert status == 0, stderr
    assert stdout.splitlines() == ["vidiff batch: 0 done, 6 skipped, 0 failed"]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_an_incomplete_job_runs_again(first_run):
    """A job missing one of its files (here the gif's sidecar) is not finished: it runs again."""
    _, jobs, out, _ = first_run
    (out / "0003-svd.gif.json").unlink()
    status, stdout, stderr = batch(jobs, "--out", out, "-q")
    assert status == 0, stderr
    assert stdout.splitlines() == ["vidiff batch: 1 done, 5 skipped, 0 failed"]
    check_six_outputs(out)


BAD_LINES = {
    "flag value": ({"num_frames": 0}, "line 3 (field 'num_frames'): argument --num-frames: expected an integer ≥ 1"),
    "unknown field": ({"frames": 5}, "line 3: unknown job field(s) ['frames']"),
    "output path": ({"output": "x.mp4"}, "line 3: unknown job field(s) ['output']"),
    "format": ({"outputs": ["avi"]}, "line 3: job field 'outputs' must be a non-empty list"),
    "name with a slash": ({"name": "../up"}, "line 3: field 'name' must be 1–100 letters"),
    "name taken": ({"name": "first"}, "line 3 repeats the name 'first' (line 1)"),
    "numbered output taken": ({"name": "first-2", "num_videos_per_prompt": 1}, None),
}


@pytest.mark.parametrize("case", BAD_LINES)
def test_a_bad_line_is_exit_2_naming_line_and_field_and_nothing_runs(tmp_path, case):
    extra, message = BAD_LINES[case]
    good = dict(pipeline="wan", prompt="a cat", model=str(tmp_path / "never-loaded"), **SMALL)
    lines = [json.dumps({**good, "name": "first", "num_videos_per_prompt": 2}), json.dumps(good), json.dumps({**good, **extra})]
    (tmp_path / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    status, stdout, stderr = batch(tmp_path / "jobs.jsonl", "--out", tmp_path / "videos")
    assert status == 2 and stdout == ""
    assert stderr.startswith(f"vidiff: error: {tmp_path / 'jobs.jsonl'}: line 3"), stderr
    assert (message or "line 3 repeats the output") in stderr
    assert not (tmp_path / "videos").exists()  # nothing ran, not even the folder was made


@pytest.mark.parametrize("text, message", [
    ('{"pipeline": "wan"\n', "line 1: not valid JSON"),
    ('["wan"]\n', "line 1: a job must be a JSON object, got list"),
    ('{"pipeline": "sora"}\n', "line 1: job field 'pipeline' must be one of"),
    ("\n\n", "holds no jobs"),
])
def test_unreadable_lines_are_refused(tmp_path, text, message):
    (tmp_path / "jobs.jsonl").write_text(text)
    status, _, stderr = batch(tmp_path / "jobs.jsonl", "--out", tmp_path / "videos")
    assert status == 2 and message in stderr, stderr


def test_names_default_to_line_number_and_pipeline(tmp_path):
    lines = ["", json.dumps(dict(pipeline="wan", prompt="a")), json.dumps(dict(pipeline="svd", image="x.png", name="mine"))]
    (tmp_path / "jobs.jsonl").write_text("\n".join(lines))
    assert [(j.line, j.name) for j in read_jobs(tmp_path / "jobs.jsonl")] == [(2, "0002-wan"), (3, "mine")]


def test_a_job_that_fails_at_run_time_fails_alone(demo_checkpoints, tmp_path, monkeypatch):
    # Two workers (threads, as on a two-GPU machine, here both on the CPU): one per model group.
    monkeypatch.setattr("vidiff.batch.local.local_devices", lambda device: [None, None])
    good = dict(pipeline="wan", prompt="a cat", model=str(demo_checkpoints.wan), seed=1, **SMALL)
    broken = {**good, "model": str(tmp_path / "no-such-checkpoint"), "name": "broken"}
    write_jobs(tmp_path, [good, broken, {**good, "seed": 2}])
    status, stdout, stderr = batch(tmp_path / "jobs.jsonl", "--out", tmp_path / "videos", "-q")
    assert status == 1, stderr
    summary = stdout.splitlines()
    assert summary[0] == "vidiff batch: 2 done, 0 skipped, 1 failed"
    assert len(summary) == 2 and summary[1].startswith("  failed: broken (line 3): --model ")
    assert "no-such-checkpoint" in summary[1]
    assert sorted(os.listdir(tmp_path / "videos")) == ["0001-wan.mp4", "0001-wan.mp4.json", "0004-wan.mp4", "0004-wan.mp4.json"]


def test_ray_missing_or_bad_options_are_usage_errors(tmp_path, monkeypatch):
    (tmp_path / "jobs.jsonl").write_text(json.dumps(dict(pipeline="wan", prompt="a")) + "\n")
    status, _, stderr = batch(tmp_path / "jobs.jsonl", "--out", tmp_path / "v", "--retries", "-1")
    assert status == 2 and "--retries: expected an integer ≥ 0" in stderr
    status, _, stderr = batch(tmp_path / "jobs.jsonl")
    assert status == 2 and "--out" in stderr
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # as if Ray were not installed
    status, _, stderr = batch(tmp_path / "jobs.jsonl", "--out", tmp_path / "v", "--ray", "auto")
    assert status == 2 and "pip install 'vidiff[ray]'" in stderr and not (tmp_path / "v").exists()


# ---------------------------------------------------------------- the Ray dispatcher, with a stand-in for Ray
class RayError(Exception):
    pass


class ActorDiedError(RayError):  # as ray.exceptions.ActorDiedError derives from RayActorError
    pass


class FakeActor:
    """Runs a job at once; dies (raises ActorDiedError, as ray.get does) on a job named in ``dying``
    while that job's count there is above zero."""

    def __init__(self, index: int, dying: dict[str, int], ran: list):
        self.index, self.dying, self.ran = index, dying, ran
        self.run_job = self  # actor.run_job.remote(job, out)

    def remote(self, job, out):
        def result():
            if self.dying.get(job.name, 0) > 0:
                self.dying[job.name] -= 1
                raise ActorDiedError("the actor died")
            self.ran.append((self.index, job.name))
            return Outcome(job.name, job.line, "done", pid=self.index)

        return result


class FakeRay:
    exceptions = types.SimpleNamespace(RayError=RayError, RayActorError=ActorDiedError)

    def __init__(self):
        self.killed = []

    def wait(self, refs, num_returns):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        return ref()

    def kill(self, actor):
        self.killed.append(actor.index)


def dispatch(dying: dict[str, int], retries: int):
    from vidiff.batch.ray_runner import _Dispatcher

    jobs = [BatchJob(n, name, {"pipeline": "wan", "model": model}) for n, (name, model) in enumerate(
        [("a1", "A"), ("b1", "B"), ("a2", "A"), ("b2", "B"), ("a3", "A")], 1)]
    fake, ran, actors, reported = FakeRay(), [], [], []

    def new_actor():
        actors.append(FakeActor(len(actors), dying, ran))
        return actors[-1]

    outcomes = _Dispatcher(fake, [new_actor(), new_actor()], new_actor, "out", retries, reported.append).run(jobs)
    assert sorted(o.name for o in outcomes) == sorted(o.name for o in reported) == sorted(j.name for j in jobs)
    return {o.name: o for o in outcomes}, ran, len(actors), fake.killed


def test_the_dispatcher_groups_jobs_by_model_on_actors():
    outcomes, ran, started, killed = dispatch({}, retries=2)
    assert all(o.status == "done" for o in outcomes.values()) and started == 2 and sorted(killed) == [0, 1]
    assert {name for index, name in ran if index == 0} == {"a1", "a2", "a3"}  # one model per actor
    assert {name for index, name in ran if index == 1} == {"b1", "b2"}


def test_a_dead_actor_is_replaced_and_its_job_retried_up_to_retries():
    outcomes, ran, started, _ = dispatch({"a2": 2}, retries=2)  # dies twice, the third attempt succeeds
    assert outcomes["a2"].status == "done" and started == 4 and ("a2" in {name for _, name in ran})
    outcomes, ran, started, _ = dispatch({"a2": 3}, retries=2)  # dies on every allowed attempt
    # Two replacements; the actor that died last is not replaced: the other one, idle, took a3.
    assert outcomes["a2"].status == "failed" and started == 4 and (1, "a3") in ran
    assert outcomes["a2"].reason == "its worker died 3 time(s) (ActorDiedError); not retried again (--retries 2)"
    assert all(outcomes[name].status == "done" for name in ("a1", "b1", "b2", "a3"))  # the rest of its group ran
