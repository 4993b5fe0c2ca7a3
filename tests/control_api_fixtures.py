"""Tiny random ControlNets and SparseControlNets (built and saved by diffusers) for vidiff's control
API tests, plus vidiff pipelines loaded over the tiny AnimateDiff checkpoint (``tiny_animatediff``).

The ControlNets fit the tiny UNet of :mod:`tests.animatediff_checkpoint` (widths 32/64, two layers per
stage, text width 32); a third one with other widths does not fit it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from tests.animatediff_checkpoint import GUIDE_DDIM
from tests.helpers import perturb_
from vidiff import (
    AnimateDiffControlNetPipeline,
    AnimateDiffSparseControlNetPipeline,
    AnimateDiffVideoToVideoControlNetPipeline,
    AnimateDiffVideoToVideoPipeline,
    ControlNetModel,
    SparseControlNetModel,
)

CONTROLNET = dict(
    block_out_channels=(32, 64), layers_per_block=2, in_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), cross_attention_dim=32, attention_head_dim=4,
    norm_num_groups=8, conditioning_embedding_out_channels=(8, 16, 16, 32),
)
SPARSE = dict(
    block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"), layers_per_block=2,
    cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8, motion_num_attention_heads=2,
    motion_max_seq_length=32, conditioning_embedding_out_channels=(8, 16, 16, 32),
)
SMALL = dict(height=32, width=48, num_inference_steps=2, output_type="np")  # a fast call, numpy frames
SPARSE_KINDS = {
    "rgb": dict(conditioning_channels=4, use_simplified_condition_embedding=True),
    "scribble": dict(conditioning_channels=3, use_simplified_condition_embedding=False),
}


def save_control_models(root: Path) -> None:
    """Write ``root/cn``, ``root/cn2`` (fitting ControlNets), ``root/cn_wide`` (widths 48/64: does not
    fit), ``root/sparse_rgb``, ``root/sparse_scribble`` and ``root/sparse_wide`` (does not fit)."""
    import diffusers

    for name, seed, overrides in (("cn", 7, {}), ("cn2", 8, {}), ("cn_wide", 6, dict(block_out_channels=(48, 64)))):
        net = perturb_(diffusers.ControlNetModel(**{**CONTROLNET, **overrides}), seed=seed).eval()
        net.save_pretrained(root / name)
    for (kind, extra), seed in zip(SPARSE_KINDS.items(), (9, 10)):
        perturb_(diffusers.SparseControlNetModel(**SPARSE, **extra), seed=seed).eval().save_pretrained(root / f"sparse_{kind}")
    wide = diffusers.SparseControlNetModel(**{**SPARSE, "block_out_channels": (48, 64)}, **SPARSE_KINDS["scribble"])
    perturb_(wide, seed=11).eval().save_pretrained(root / "sparse_wide")


def vidiff_pipe(cls, root: Path, **components):
    """A vidiff ``cls`` from ``root/sd15`` + ``root/motion_adapter`` with the guide's DDIM, bars off."""
    from vidiff import DDIMScheduler, MotionAdapter

    adapter = MotionAdapter.from_pretrained(root / "motion_adapter")
    pipe = cls.from_pretrained(root / "sd15", motion_adapter=adapter, **components)
    pipe.scheduler = DDIMScheduler.from_pretrained(root / "sd15", subfolder="scheduler", **GUIDE_DDIM)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_video(num_frames: int, seed: int = 0, size: tuple[int, int] = (56, 40)) -> list[PIL.Image.Image]:
    """``num_frames`` random RGB PIL frames of ``size`` (width, height)."""
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(num_frames)]


def seeded(seed: int = 0) -> torch.Generator:
    """A CPU torch generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def roots(tiny_animatediff, tmp_path_factory):
    """(AnimateDiff root, control models folder); import into a test module to use it."""
    folder = tmp_path_factory.mktemp("control-api-models")
    save_control_models(folder)
    return tiny_animatediff[0], folder


def control_net(roots, name):
    """The model ``name`` written by :func:`save_control_models`, loaded by vidiff."""
    cls = SparseControlNetModel if name.startswith("sparse") else ControlNetModel
    return cls.from_pretrained(roots[1] / name)


@pytest.fixture(scope="module")
def pipes(roots):
    """One vidiff pipeline of each kind (tests must leave them as they found them)."""
    root = roots[0]
    return {
        "v2v": vidiff_pipe(AnimateDiffVideoToVideoPipeline, root),
        "cn": vidiff_pipe(AnimateDiffControlNetPipeline, root, controlnet=control_net(roots, "cn")),
        "cn2": vidiff_pipe(AnimateDiffControlNetPipeline, root, controlnet=[control_net(roots, "cn"), control_net(roots, "cn2")]),
        "v2v_cn": vidiff_pipe(AnimateDiffVideoToVideoControlNetPipeline, root, controlnet=control_net(roots, "cn")),
        "sparse": vidiff_pipe(AnimateDiffSparseControlNetPipeline, root, controlnet=control_net(roots, "sparse_scribble")),
        "sparse_rgb": vidiff_pipe(AnimateDiffSparseControlNetPipeline, root, controlnet=control_net(roots, "sparse_rgb")),
    }


def frames_of(pipe, **call) -> np.ndarray:
    """The call's frames as an array, with a seeded generator."""
    return np.asarray(pipe(**call, generator=seeded(3)).frames)
