"""The one job schema (vidiff.cli.jobs), the pipeline cache and the run hooks the server and batch use."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vidiff.cli.errors import UsageError
from vidiff.cli.jobs import job_argv, job_from_sidecar, parse_job
from vidiff.cli.main import main
from vidiff.cli.pipeline_cache import PipelineCache
from vidiff.cli.run import Cancelled, RunHooks, run
from vidiff.media import load_video


def _wan_job(demo, **fields):
    return {"pipeline": "wan", "prompt": "a cat", "model": str(demo.wan), "height": 64, "width": 96,
            "num_frames": 5, "num_inference_steps": 2, "seed": 3, **fields}


def _run(job, path, hooks=None):
    command, explicit, formats = parse_job(job)
    explicit.update(output=[str(path)], overwrite=True)
    return run(command, explicit, False, hooks)


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ({"pipeline": "svd", "num_frames": 0}, r"argument --num-frames: expected an integer ≥ 1 \(frames\), got 0"),
        ({"pipeline": "svd", "num_frames": "many"}, r"argument --num-frames: expected an integer ≥ 1 \(frames\), got 'many'"),
        ({"pipeline": "gif"}, r"job field 'pipeline' must be one of \['animatediff', 'i2vgen-xl', 'svd', 'wan'\]"),
        ({"prompt": "x"}, r"job field 'pipeline' must be one of"),
        ({"pipeline": "svd", "frames": 3}, r"unknown job field\(s\) \['frames'\] for pipeline 'svd'"),
        ({"pipeline": "svd", "output": "/etc/passwd"}, r"unknown job field\(s\) \['output'\]"),
        ({"pipeline": "svd", "vae_tiling": "maybe"}, r"job field 'vae_tiling' \(--vae-tiling\) must be true or false"),
        ({"pipeline": "svd", "height": [64, 96]}, r"job field 'height' \(--height\) takes one value, got a list"),
        ({"pipeline": "svd", "outputs": ["webm"]}, r"job field 'outputs' must be a non-empty list of \['mp4', 'gif', 'frames'\]"),
        ({"pipeline": "svd", "outputs": ["mp4", "mp4"]}, r"lists a format twice"),
        ({"pipeline": "svd", "dtype": "fp64"}, r"argument --dtype: invalid choice: 'fp64'"),
        ([1, 2], r"a job must be a JSON object, got list"),
    ],
)
def test_bad_jobs_get_the_command_lines_messages(job, message):
    with pytest.raises(UsageError, match=message):
        parse_job(job)


def test_a_job_is_the_command_line_it_stands_for():
    job = {"pipeline": "animatediff", "prompt": "a fox", "num_frames": 8, "guidance_scale": 7.5, "vae_tiling": True,
           "forward_chunking": "false", "lora": ["a.safetensors:0.5", "b.safetensors"], "scheduler_config": {"eta": 0.0},
           "outputs": ["mp4", "gif"]}
    argv = job_argv(job)
    assert argv[:2] == ["animatediff", "a fox"]  # the command, then the positional PROMPT
    pairs = list(zip(argv[2::1], argv[3::1]))
    for pair in [("--num-frames", "8"), ("--guidance-scale", "7.5"), ("--lora", "a.safetensors:0.5"),
                 ("--lora", "b.safetensors"), ("--scheduler-config", "eta=0.0")]:
        assert pair in pairs
    assert "--vae-tiling" in argv and "--forward-chunking" not in argv
    command, explicit, formats = parse_job(job)
    assert command.name == "animatediff" and formats == ["mp4", "gif"]
    assert explicit["num_frames"] == 8 and explicit["vae_tiling"] is True and "forward_chunking" not in explicit
    assert explicit["lora"] == ["a.safetensors:0.5", "b.safetensors"] and explicit["scheduler_config"] == ["eta=0.0"]


def test_a_cli_sidecar_becomes_a_job_that_makes_the_same_video(demo_checkpoints, tmp_path):
    first = tmp_path / "cli.mp4"
    assert main(["wan", "a cat", "--model", str(demo_checkpoints.wan), "--height", "64", "--width", "96",
                 "--num-frames", "5", "--steps", "2", "--seed", "11", "-o", str(first), "-q"]) == 0
    job = job_from_sidecar(json.loads((tmp_path / "cli.mp4.json").read_text()))
    assert job["pipeline"] == "wan" and job["seed"] == 11 and job["outputs"] == ["mp4"]
    _run(job, tmp_path / "job.mp4")
    assert np.array_equal(np.asarray(load_video(str(first))), np.asarray(load_video(str(tmp_path / "job.mp4"))))


def test_the_cache_loads_a_model_once_and_the_hooks_report_every_step(demo_checkpoints, tmp_path):
    cache, steps = PipelineCache(), []
    hooks = RunHooks(pipelines=cache, on_step=lambda done, total: steps.append((done, total)))
    _run(_wan_job(demo_checkpoints), tmp_path / "a.mp4", hooks)
    _run(_wan_job(demo_checkpoints, prompt="a dog", num_frames=9, seed=4), tmp_path / "b.mp4", hooks)  # call arguments only
    assert cache.loads == 1 and len(cache) == 1
    assert steps == [(1, 2), (2, 2)] * 2
    _run(_wan_job(demo_checkpoints, vae_tiling=True), tmp_path / "c.mp4", hooks)  # a lever: another pipeline object
    assert cache.loads == 2


def test_the_cache_evicts_the_least_recently_used():
    cache = PipelineCache(capacity=2)
    built = []
    for key in ("a", "b", "a", "c", "b"):
        cache.get(key, lambda key=key: built.append(key) or key)
    assert built == ["a", "b", "c", "b"] and cache.keys() == ["c", "b"]
    with pytest.raises(ValueError, match="`capacity` must be an integer ≥ 1"):
        PipelineCache(capacity=0)


def test_the_cache_evicts_when_free_memory_runs_short():
    free = {"bytes": 10}
    cache = PipelineCache(capacity=3, free_memory=lambda device: free["bytes"])
    cache.get("a", lambda: "A", needed_bytes=5)
    cache.get("b", lambda: "B", needed_bytes=5)
    assert cache.keys() == ["a", "b"]  # enough free memory: both kept
    free["bytes"] = 4  # the next model needs more than is free: evict the least recently used
    evicted = []

    def build_c():
        evicted.append(list(cache.keys()))
        return "C"

    cache.get("c", build_c, needed_bytes=6)
    assert evicted == [[]] and cache.keys() == ["c"]  # free memory stayed short, so all were evicted
    cache.get("d", lambda: "D", needed_bytes=None)  # no estimate: only the capacity bounds the cache
    assert cache.keys() == ["c", "d"]


def test_a_cancelled_run_writes_nothing(demo_checkpoints, tmp_path):
    def cancel(done, total):
        if done == 1:
            raise Cancelled

    with pytest.raises(Cancelled):
        _run(_wan_job(demo_checkpoints), tmp_path / "never.mp4", RunHooks(on_step=cancel))
    assert list(tmp_path.iterdir()) == []
