"""`vidiff serve` over HTTP: a real server in a subprocess on a loopback port, tiny demo checkpoints.

Jobs go in as JSON and as multipart uploads, come out as mp4/gif files checked with PyAV; progress
arrives as server-sent events; queued and running jobs can be cancelled; bad requests get 4xx JSON
with the command line's messages; a server with --token refuses requests without it.
"""

from __future__ import annotations

import io
import json

import av
import PIL.Image
import pytest

from tests.server_process import Server
from vidiff.cli.main import main

SMALL = {"height": 64, "width": 96, "num_frames": 5}
WAN_JOB = {"pipeline": "wan", "prompt": "a cat", "model": "tiny-wan", **SMALL, "num_inference_steps": 3}
TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def servers(demo_checkpoints, tmp_path_factory):
    """Two servers started side by side (their start-ups overlap): an open one with the tiny models
    and a 1 MiB upload limit, and one with --token."""
    root = tmp_path_factory.mktemp("server")
    started = []
    try:
        started.append(Server(root / "data", "--model", f"tiny-wan={demo_checkpoints.wan}",
                              "--model", f"tiny-svd={demo_checkpoints.svd}", "--max-upload-mb", "1"))
        started.append(Server(root / "token-data", token=TOKEN))
        for process in started:
            process.wait_until_up()
        yield started
    finally:
        for process in started:
            process.stop()


@pytest.fixture(scope="module")
def server(servers):
    return servers[0]


@pytest.fixture(scope="module")
def token_server(servers):
    return servers[1]


def png_bytes(size=(96, 64), color=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def video_frames(content: bytes) -> tuple[int, tuple[int, int]]:
    with av.open(io.BytesIO(content)) as container:
        frames = [frame for frame in container.decode(video=0)]
    return len(frames), (frames[0].width, frames[0].height)


def test_health_and_pipelines(server):
    status, health = server.json("GET", "/v1/health")
    assert status == 200 and health["status"] == "ok" and health["workers"] == [{"device": "cpu", "busy": False}]
    status, listing = server.json("GET", "/v1/pipelines")
    pipelines = {p["name"]: p for p in listing["pipelines"]}
    assert pipelines["wan"]["models"] == ["tiny-wan"] and pipelines["svd"]["models"] == ["tiny-svd"]
    assert pipelines["svd"]["takes_image"] and not pipelines["svd"]["takes_prompt"]
    assert pipelines["svd"]["defaults"]["num_inference_steps"] == 25
    status, headers, page = server.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")


def test_json_job_mp4_gif_and_sidecar(server):
    video = server.submit({**WAN_JOB, "outputs": ["mp4", "gif"]})
    assert video["status"] in ("queued", "running") and video["progress"]["total"] == 3
    assert isinstance(video["job"]["seed"], int)  # picked by the server and kept: a re-run repeats it
    done = server.wait(video["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"] == {"step": 3, "total": 3, "fraction": 1.0} and done["finished"] and done["error"] is None
    status, headers, content = server.request("GET", done["content_url"])
    assert status == 200 and headers["content-type"] == "video/mp4"
    assert video_frames(content) == (5, (96, 64))
    status, headers, gif = server.request("GET", done["content_url"] + "?format=gif")
    assert status == 200 and headers["content-type"] == "image/gif" and gif.startswith(b"GIF8")
    assert PIL.Image.open(io.BytesIO(gif)).n_frames == 5
    status, sidecar = server.json("GET", done["sidecar_url"])
    assert sidecar["command"] == "wan" and sidecar["seed"] == {"kind": "numpy", "value": video["job"]["seed"]}
    assert sidecar["arguments"]["num_inference_steps"] == 3 and sidecar["resolved"]["device"] == "cpu"
    status, listing = server.json("GET", "/v1/videos")
    assert status == 200 and video["id"] in [v["id"] for v in listing["videos"]]
    created = [v["created"] for v in listing["videos"]]
    assert created == sorted(created, reverse=True)  # newest first


def test_multipart_job_with_uploaded_image(server):
    fields = {"pipeline": "svd", "model": "tiny-svd", "num_frames": "3", "height": "64", "width": "96",
              "num_inference_steps": "2", "seed": "7"}
    video = server.submit(fields, files={"image": ("rocket.png", png_bytes())})
    assert video["job"]["image"].startswith("upload:")
    assert video["job"]["num_frames"] == 3 and video["job"]["seed"] == 7  # form text, shown typed
    done = server.wait(video["id"])
    assert done["status"] == "succeeded", done
    status, _, content = server.request("GET", done["content_url"])
    assert status == 200 and video_frames(content) == (3, (96, 64))
    _, sidecar = server.json("GET", done["sidecar_url"])
    assert sidecar["command"] == "svd" and sidecar["seed"]["value"] == 7 and "image_sha256" in sidecar["resolved"]


def test_events_report_every_step_then_done(server):
    video = server.submit({**WAN_JOB, "num_inference_steps": 6})
    status, headers, stream = server.request("GET", f"/v1/videos/{video['id']}/events")
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [block.split("\n") for block in stream.decode().strip().split("\n\n") if block.startswith("event:")]
    kinds = [lines[0].removeprefix("event: ") for lines in events]
    objects = [json.loads(lines[1].removeprefix("data: ")) for lines in events]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"progress"}
    assert objects[-1]["status"] == "succeeded" and objects[-1]["progress"]["fraction"] == 1.0
    steps = [o["progress"]["step"] for o in objects if o["status"] == "running"]
    assert set(range(1, 7)) <= set(steps) and steps == sorted(steps)


def test_cancel_a_queued_and_a_running_job(server):
    running = server.submit({**WAN_JOB, "num_inference_steps": 2000})
    queued = server.submit(WAN_JOB)
    status, cancelled = server.json("DELETE", f"/v1/videos/{queued['id']}")
    assert status == 200 and cancelled["status"] == "cancelled"
    server.wait_running(running["id"])
    status, cancelled = server.json("DELETE", f"/v1/videos/{running['id']}")
    assert status == 200 and cancelled["status"] == "cancelled"
    after = server.submit(WAN_JOB)  # the worker is free again: the cancelled run stopped
    assert server.wait(after["id"], timeout=60)["status"] == "succeeded"
    for video in (queued, running):
        _, final = server.json("GET", f"/v1/videos/{video['id']}")
        assert final["status"] == "cancelled" and final["progress"]["step"] < 2000
        assert server.request("GET", final["content_url"])[0] == 409
        status, error = server.json("DELETE", f"/v1/videos/{video['id']}")
        assert status == 409 and "already ended" in error["error"]["message"]


BAD_JOBS = [
    ({**WAN_JOB, "num_frames": 0}, 422, "num_frames", "argument --num-frames: expected an integer ≥ 1 (frames), got 0"),
    ({**WAN_JOB, "colour": "red"}, 422, "colour", "unknown job field(s) ['colour']"),
    ({"pipeline": "sora", "prompt": "x"}, 422, "pipeline", "job field 'pipeline' must be one of"),
    ({"pipeline": "svd", "image": "/etc/passwd", "model": "tiny-svd"}, 422, "image", "must be an http(s) URL or an uploaded file"),
    ({**WAN_JOB, "model": "/tmp"}, 422, "model", "neither a Hub id (owner/name) nor a model of this server"),
    ({**WAN_JOB, "device": "cuda"}, 422, "device", "the server's choice"),
]


@pytest.mark.parametrize("job, status, field, message", BAD_JOBS, ids=[b[2] for b in BAD_JOBS])
def test_bad_json_jobs_are_4xx_with_the_cli_message(server, job, status, field, message):
    got, body = server.json("POST", "/v1/videos", job)
    assert got == status and body["error"]["field"] == field and message in body["error"]["message"], body


def test_bad_uploads_are_refused(server):
    fields = {"pipeline": "svd", "model": "tiny-svd"}
    big = png_bytes() + b"\0" * (1024 * 1024 + 100)  # over --max-upload-mb 1
    status, body = server.json("POST", "/v1/videos", fields, files={"image": ("big.png", big)})
    assert status == 413 and body["error"]["field"] == "image" and "at most 1 MiB" in body["error"]["message"]
    status, body = server.json("POST", "/v1/videos", fields, files={"image": ("notes.png", b"not a picture at all")})
    assert status == 422 and body["error"]["field"] == "image" and "not an image" in body["error"]["message"]
    _, listing = server.json("GET", "/v1/videos")
    assert all(v["job"].get("model") != "tiny-svd" or v["status"] != "queued" for v in listing["videos"])


def test_a_failing_job_fails_alone(server):
    broken = server.submit({**WAN_JOB, "model": "someone/not-cached"})  # a valid job whose model cannot load
    fine = server.submit(WAN_JOB)
    failed = server.wait(broken["id"])
    assert failed["status"] == "failed" and "not in the local Hugging Face cache" in failed["error"]["message"]
    assert server.request("GET", failed["content_url"])[0] == 409
    assert server.wait(fine["id"])["status"] == "succeeded"  # the worker went on


def test_unknown_video_is_404(server):
    status, body = server.json("GET", "/v1/videos/0123456789abcdef")
    assert status == 404 and "no video" in body["error"]["message"]


def test_token_is_required_on_every_route(token_server):
    for path in ("/v1/health", "/v1/videos", "/", "/v1/videos/0123456789abcdef/events"):
        assert token_server.request("GET", path, auth=False)[0] == 401
        assert token_server.request("GET", path, auth=False, headers={"Authorization": "Bearer wrong-token!"})[0] == 401
    for path in ("/v1/health", "/v1/videos", "/"):
        assert token_server.request("GET", path)[0] == 200
    assert token_server.request("GET", f"/v1/health?token={TOKEN}", auth=False)[0] == 200
    assert token_server.request("GET", "/v1/health?token=wrong-token!", auth=False)[0] == 401
    status, body = token_server.json("POST", "/v1/videos", WAN_JOB, auth=False)
    assert status == 401 and "token" in body["error"]["message"]
    _, listing = token_server.json("GET", "/v1/videos")
    assert listing == {"videos": []}  # the refused job was not queued


def test_non_loopback_host_needs_a_token(capsys, monkeypatch):
    monkeypatch.delenv("VIDIFF_SERVER_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    assert "--token" in capsys.readouterr().err
