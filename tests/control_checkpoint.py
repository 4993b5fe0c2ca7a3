"""Tiny random ControlNet / SparseCtrl checkpoints and paired (vidiff, diffusers) pipelines for the
video-to-video and control parity tests.

Every network is built by diffusers (the oracle) with perturbed weights and saved to disk once per
test run; both libraries then load the same files. Pipelines come in pairs ``(ours, theirs)``
loaded from the tiny AnimateDiff checkpoint (``tests/animatediff_checkpoint.py``).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import torch

from tests.animatediff_checkpoint import GUIDE_DDIM
from tests.helpers import perturb_

# Fits the tiny AnimateDiff UNet (tests/animatediff_checkpoint.py UNET): same blocks, widths, heads.
CONTROLNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=2,
    in_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=8,
    conditioning_embedding_out_channels=(8, 16, 16, 32),
)
SPARSE = dict(
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
    layers_per_block=2,
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=8,
    motion_num_attention_heads=2,
    motion_max_seq_length=32,
    conditioning_embedding_out_channels=(8, 16, 16, 32),
)
# folder name -> (diffusers class name, config, perturbation seed)
NETWORKS = {
    "controlnet_a": ("ControlNetModel", CONTROLNET, 7),
    "controlnet_b": ("ControlNetModel", CONTROLNET, 8),
    "controlnet_pool": ("ControlNetModel", {**CONTROLNET, "global_pool_conditions": True}, 10),
    # RGB SparseCtrl: frames VAE-encoded to 4 latent channels, simplified (one conv) embedding.
    "sparse_rgb": ("SparseControlNetModel", {**SPARSE, "conditioning_channels": 4, "use_simplified_condition_embedding": True}, 9),
    # Scribble SparseCtrl: 3-channel images through the full conditioning embedding.
    "sparse_scribble": ("SparseControlNetModel", {**SPARSE, "conditioning_channels": 3, "use_simplified_condition_embedding": False}, 11),
}


@functools.cache
def control_networks() -> Path:
    """A folder holding every network of NETWORKS (``<folder>/<name>``), written once per process."""
    import diffusers

    folder = Path(tempfile.mkdtemp(prefix="tiny-controlnets-"))
    for name, (cls_name, config, seed) in NETWORKS.items():
        torch.manual_seed(seed)
        net = perturb_(getattr(diffusers, cls_name)(**config), seed=seed).eval()
        # The conditioning embedding ends in a zero-initialised conv: with only perturb_'s small noise the
        # control frames would move the output by ~1e-4, too little for a test to tell them apart.
        perturb_(net.controlnet_cond_embedding, seed=seed + 100, scale=0.5)
        net.save_pretrained(folder / name)
    return folder


def random_video(num_frames: int, seed: int, height: int = 40, width: int = 56) -> list:
    """``num_frames`` PIL frames of seeded uniform noise, larger than the 32 × 48 calls so both
    libraries must resize them."""
    import PIL.Image

    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(num_frames)]


def load_controlnets(library: str, names) -> object:
    """``library`` ("vidiff" or "diffusers") model(s) loaded from control_networks(): one for a str,
    a list for a list or tuple of names."""
    import importlib

    module = importlib.import_module(library)
    folder = control_networks()
    if isinstance(names, str):
        return getattr(module, NETWORKS[names][0]).from_pretrained(folder / names)
    return [getattr(module, NETWORKS[name][0]).from_pretrained(folder / name) for name in names]


@functools.cache
def _networks(root: Path, library: str) -> dict:
    """``library``'s AnimateDiff components (VAE, text encoder, tokenizer, motion UNet; diffusers also
    keeps the adapter, whose config its FreeNoise reads), loaded once per process and shared by every
    pair: nothing here changes their weights, and FreeNoise is switched off again after each use."""
    import importlib

    module = importlib.import_module(library)
    adapter = module.MotionAdapter.from_pretrained(root / "motion_adapter")
    extra = dict(feature_extractor=None) if library == "diffusers" else {}
    pipe = module.AnimateDiffPipeline.from_pretrained(root / "sd15", motion_adapter=adapter, **extra)
    parts = dict(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet)
    if library == "diffusers":
        parts.update(motion_adapter=adapter, feature_extractor=None, image_encoder=None)
    return parts


def load_pair(root: Path, pipeline: str, controlnet=None) -> tuple:
    """(vidiff, diffusers) pipelines of class ``pipeline`` around the networks of ``root/sd15`` +
    ``root/motion_adapter`` (see _networks), the guide's DDIM, and ``controlnet`` (a NETWORKS name or
    a list of them, loaded afresh) where given; progress bars off."""
    import diffusers

    import vidiff

    pair = []
    for library in (vidiff, diffusers):
        parts = dict(_networks(root, library.__name__))
        parts["scheduler"] = library.DDIMScheduler.from_pretrained(root / "sd15", subfolder="scheduler", **GUIDE_DDIM)
        if controlnet is not None:
            parts["controlnet"] = load_controlnets(library.__name__, controlnet)
        pipe = getattr(library, pipeline)(**parts)
        pipe.set_progress_bar_config(disable=True)
        pair.append(pipe)
    return tuple(pair)


def set_schedulers(root: Path, pair: tuple, name: str = "DDIMScheduler", **options) -> None:
    """Give both pipelines a fresh scheduler ``name``: the guide's DDIM config plus ``options``."""
    import diffusers

    import vidiff

    for library, pipe in zip((vidiff, diffusers), pair):
        base = library.DDIMScheduler.from_pretrained(root / "sd15", subfolder="scheduler", **GUIDE_DDIM)
        pipe.scheduler = getattr(library, name).from_config(base.config, **options)


def generators(seed: int, count: int | None) -> object:
    """One seeded CPU generator, or a list of ``count`` with seeds seed, seed + 1, ..."""
    if count is None:
        return torch.Generator().manual_seed(seed)
    return [torch.Generator().manual_seed(seed + k) for k in range(count)]


def frames(pipe, seed: int = 0, num_generators: int | None = None, latents: torch.Tensor | None = None, **call) -> np.ndarray:
    """``pipe``'s frames as a float64 array [B, F, H, W, 3] for ``call`` with fresh seeded generator(s)
    (and a private copy of ``latents``)."""
    given = None if latents is None else latents.clone()
    out = pipe(**call, generator=generators(seed, num_generators), latents=given, output_type="np").frames
    return np.asarray(out, dtype=np.float64)


def zero_uncond_residuals(controlnet) -> object:
    """Context manager: while active, ``controlnet`` (a diffusers ControlNet, SparseControlNet or
    MultiControlNet) returns its residuals with an all-zero batch half in front — [uncond = 0, cond]
    on the batch axis, as diffusers' image ControlNet pipeline builds them in guess mode with
    classifier-free guidance. Its AnimateDiff pipelines run the net on the conditional half only but
    forget this padding (a batch-size crash); with it, they compute what vidiff documents."""
    import contextlib

    @contextlib.contextmanager
    def patched():
        original = controlnet.forward

        def pad(residual: torch.Tensor) -> torch.Tensor:  # [B·F, ...] -> [2·B·F, ...], zeros first
            return torch.cat([torch.zeros_like(residual), residual])

        def forward(*args, **kwargs):
            down, mid = original(*args, **kwargs)
            return [pad(r) for r in down], pad(mid)

        controlnet.forward = forward
        try:
            yield controlnet
        finally:
            del controlnet.forward  # the class's forward again

    return patched()
