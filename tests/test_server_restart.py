"""A `vidiff serve` killed mid-job (SIGKILL: no clean-up at all) loses nothing: started again on the
same data folder, it re-queues the interrupted job, runs the queued one, and both complete."""

from __future__ import annotations

import io
import sqlite3

import av

from tests.server_process import Server

JOB = {"pipeline": "wan", "prompt": "a cat", "model": "tiny-wan", "height": 64, "width": 96, "num_frames": 5}
# Enough steps that the job is still running when the server is killed after its first step.
LONG_STEPS = 120


def test_killed_server_resumes_its_jobs(demo_checkpoints, tmp_path):
    data = tmp_path / "data"
    args = ("--model", f"tiny-wan={demo_checkpoints.wan}")
    first = Server.start(data, *args)
    try:
        interrupted = first.submit({**JOB, "num_inference_steps": LONG_STEPS, "outputs": ["mp4", "gif"]})
        waiting = first.submit({**JOB, "num_inference_steps": 2})
        first.wait_running(interrupted["id"])
    finally:
        first.kill()
    with sqlite3.connect(data / "vidiff.sqlite3") as db:  # what the dead server left behind
        statuses = dict(db.execute("SELECT id, status FROM jobs").fetchall())
    assert statuses == {interrupted["id"]: "running", waiting["id"]: "queued"}

    second = Server.start(data, *args)
    try:
        resumed = second.wait(interrupted["id"], timeout=180)
        assert resumed["status"] == "succeeded", (resumed, second.log())
        assert resumed["progress"]["step"] == LONG_STEPS and resumed["job"]["seed"] == interrupted["job"]["seed"]
        assert second.wait(waiting["id"])["status"] == "succeeded"
        status, _, content = second.request("GET", resumed["content_url"])
        with av.open(io.BytesIO(content)) as container:
            frames = list(container.decode(video=0))
        assert status == 200 and len(frames) == 5 and (frames[0].width, frames[0].height) == (96, 64)
        _, sidecar = second.json("GET", resumed["sidecar_url"])
        assert sidecar["seed"] == {"kind": "numpy", "value": interrupted["job"]["seed"]}  # the seed picked at submission
        assert second.request("GET", resumed["content_url"] + "?format=gif")[0] == 200
        leftovers = [p.name for p in (data / "videos" / interrupted["id"]).iterdir()]
        assert sorted(leftovers) == ["video.gif", "video.gif.json", "video.mp4", "video.mp4.json"]  # no partial file
    finally:
        second.stop()
