"""Jobs files for the `vidiff batch` tests: six tiny jobs on the demo checkpoints (Wan and SVD)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np

from tests.svd_checkpoint import random_image

# 64 × 96, 5 frames, 2 steps: well under a second per job once the model is loaded.
SMALL = dict(height=64, width=96, num_frames=5, num_inference_steps=2)


def six_jobs(demo_checkpoints, image: Path) -> list[dict]:
    """Three Wan and three SVD jobs, interleaved (so grouping by model matters). The second writes
    an mp4 and a gif, the third is named, the fifth makes two videos (numbered outputs)."""
    jobs = []
    for index in range(3):
        jobs.append(dict(pipeline="wan", prompt=f"a cat, take {index}", model=str(demo_checkpoints.wan), seed=index, **SMALL))
        jobs.append(dict(pipeline="svd", image=str(image), model=str(demo_checkpoints.svd), seed=index,
                         decode_chunk_size=5, **SMALL))
    jobs[1]["outputs"] = ["mp4", "gif"]
    jobs[2]["name"] = "cat-named"
    jobs[4]["num_videos_per_prompt"] = 2
    return jobs


# The files the six jobs write (each with a .json sidecar), named after their lines in the file
# :func:`write_jobs` writes (line 2 is blank): line 6 is "0006-wan", with two videos.
SIX_OUTPUTS = ["0001-wan.mp4", "0003-svd.mp4", "0003-svd.gif", "cat-named.mp4", "0005-svd.mp4",
               "0006-wan-1.mp4", "0006-wan-2.mp4", "0007-svd.mp4"]


def write_jobs(folder: Path, jobs: list[dict], name: str = "jobs.jsonl") -> Path:
    """``folder/name``, one JSON object per line, with a blank line (allowed) after the first."""
    lines = [json.dumps(job) for job in jobs]
    lines.insert(1, "")
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def input_image(folder: Path) -> Path:
    path = folder / "start.png"
    random_image(96, 64).save(path)
    return path


def read_mp4(path: Path) -> np.ndarray:
    """[F, H, W, 3] uint8 frames, decoded with PyAV."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(container.streams.video[0])])


def check_six_outputs(out: Path) -> None:
    """Every output of :func:`six_jobs` is a 5-frame 64 × 96 video with its sidecar; nothing else
    (no temporaries, no partial files) is in ``out``."""
    expected = sorted(SIX_OUTPUTS + [name + ".json" for name in SIX_OUTPUTS])
    assert sorted(p.name for p in out.iterdir()) == expected
    for name in SIX_OUTPUTS:
        if name.endswith(".mp4"):
            assert read_mp4(out / name).shape == (5, 64, 96, 3), name
        record = json.loads((out / (name + ".json")).read_text())
        assert record["output"]["path"] == str((out / name).absolute())
        assert record["command"] == ("wan" if "wan" in name or "cat" in name else "svd")
