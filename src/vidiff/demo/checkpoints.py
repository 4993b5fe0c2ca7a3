"""Tiny random checkpoints for ``vidiff demo``: every pipeline, offline, in seconds on a CPU.

vidiff builds them itself, with its own model classes, in the diffusers layout (``model_index.json``
plus one subfolder per component), once per vidiff version, into ``<home>/demo-checkpoints/<version>/``.
The demo then loads them through the ordinary ``from_pretrained`` path, so it exercises exactly the
code a real checkpoint goes through. The weights are random (seeded, the same on every machine):
the videos are coloured noise, not pictures.

Layout of ``<home>/demo-checkpoints/<version>/``::

    svd/             StableVideoDiffusionPipeline   (Euler with SVD-XT's scheduler settings)
    i2vgen-xl/       I2VGenXLPipeline               (DDIM with I2VGen-XL's scheduler settings)
    sd15/            a Stable Diffusion 1.5 repository (DDIM with the AnimateDiff guide's settings)
    motion-adapter/  MotionAdapter for sd15
    wan/             WanPipeline                    (Wan 2.1 T2V layout, flow UniPC as released)
    demo_checkpoints.json   written last: marks the folder complete and lists every file with
                            its size and SHA-256, checked on each use (a damaged cache is rebuilt)

A build writes into a temporary sibling folder and renames it into place at the end, so an
interrupted build never leaves a folder that looks complete, and concurrent builders do not
corrupt each other (the first rename wins; the others drop their copy).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import torch

from .. import __version__, loading
from ..image_processing import CLIPImageProcessor
from ..models.clip import CLIPTextModel, CLIPVisionModelWithProjection
from ..models.motion_adapter import MotionAdapter
from ..models.unet_2d import UNet2DConditionModel
from ..models.unet_i2vgen_xl import I2VGenXLUNet
from ..models.unet_svd import UNetSpatioTemporalConditionModel
from ..models.vae_kl import AutoencoderKL
from ..models.vae_temporal import AutoencoderKLTemporalDecoder
from ..pipelines.i2vgen_xl import I2VGenXLPipeline
from ..pipelines.svd import StableVideoDiffusionPipeline
from ..schedulers import DDIMScheduler, EulerDiscreteScheduler
from ..tokenizer import CLIPTokenizer
from .wan_checkpoint import WAN_RECIPE, build_wan
from .tokenizer import (
    END_TOKEN,
    START_TOKEN,
    tiny_clip_vocab,
    write_tiny_clip_tokenizer,
)

logger = logging.getLogger(__name__)

HOME_ENV = "VIDIFF_HOME"
# Seeds the random init; change it (or any size below) and the recipe fingerprint changes too.
SEED = 2024
# Written last into a finished build; its presence (with a matching recipe) means "complete".
MANIFEST = "demo_checkpoints.json"
# Leftover temporary build folders older than this (seconds) are from dead builders: removed.
STALE_BUILD_AGE = 3600.0
# The random init seeds torch's process-wide RNG (inside fork_rng): two builds in one process take turns.
_BUILD_LOCK = threading.Lock()

# ----------------------------------------------------------------------------- sizes
# Every network is two resolutions wide (32 → 64 channels), one layer per block; the VAEs have four
# blocks so they downsample by 8 like the released ones. Cross-attention width = text width = image
# projection width = 32.
CROSS_WIDTH = 32
_VOCAB = tiny_clip_vocab()
TEXT_ENCODER = dict(
    vocab_size=len(_VOCAB), hidden_size=CROSS_WIDTH, intermediate_size=48, num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=77, projection_dim=CROSS_WIDTH,
    bos_token_id=_VOCAB[START_TOKEN], eos_token_id=_VOCAB[END_TOKEN], pad_token_id=_VOCAB[END_TOKEN],
)
# SVD and I2VGen-XL resize the conditioning image to 224 × 224 for CLIP: 7 × 7 patches of 32 pixels.
IMAGE_ENCODER = dict(
    hidden_size=CROSS_WIDTH, intermediate_size=48, projection_dim=CROSS_WIDTH, num_hidden_layers=2,
    num_attention_heads=4, image_size=224, patch_size=32, hidden_act="gelu",
)
SVD_UNET = dict(
    block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=8, out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    cross_attention_dim=CROSS_WIDTH, num_attention_heads=(2, 4), addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=24, num_frames=8,  # 24 = 3 micro-conditions × 8
)
SVD_VAE = dict(
    block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4, layers_per_block=1,
    latent_channels=4, in_channels=3, out_channels=3,
)
SD_UNET = dict(
    block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=CROSS_WIDTH, attention_head_dim=4, norm_num_groups=8,
)
MOTION_ADAPTER = dict(
    block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=2,
    motion_norm_num_groups=8, motion_max_seq_length=32, use_motion_mid_block=True,
)
KL_VAE = dict(
    block_out_channels=(16, 16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4, norm_num_groups=8,
    sample_size=64,
)
I2VGEN_XL_UNET = dict(
    block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), layers_per_block=1, norm_num_groups=8,
    cross_attention_dim=CROSS_WIDTH, attention_head_dim=8, num_attention_heads=None, in_channels=4,
    out_channels=4, sample_size=8,
)
# ali-vilab/i2vgen-xl's VAE scales its latents by 0.18125 (Stable Diffusion's is 0.18215).
I2VGEN_XL_VAE = {**KL_VAE, "scaling_factor": 0.18125}

# ----------------------------------------------------------------------------- schedulers
# stabilityai/stable-video-diffusion-img2vid-xt/scheduler/scheduler_config.json (the options Euler reads).
SVD_XT_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    prediction_type="v_prediction", interpolation_type="linear", sigma_min=0.002, sigma_max=700.0,
    steps_offset=1, timestep_spacing="leading", timestep_type="continuous", trained_betas=None,
    use_karras_sigmas=True,
)
# ali-vilab/i2vgen-xl/scheduler/scheduler_config.json: v-prediction on a zero-terminal-SNR cosine schedule.
I2VGEN_XL_SCHEDULER = dict(
    beta_start=0.0001, beta_end=0.02, beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000,
    prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True, steps_offset=1,
    timestep_spacing="leading", clip_sample=False, clip_sample_range=1.0, thresholding=False,
    dynamic_thresholding_ratio=0.995, sample_max_value=1.0, trained_betas=None,
)
# Stable Diffusion 1.5's β range with the AnimateDiff guide's DDIM overrides on top
# (clip_sample=False, timestep_spacing="linspace", beta_schedule="linear", steps_offset=1).
ANIMATEDIFF_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000, set_alpha_to_one=False,
    prediction_type="epsilon", trained_betas=None,
    clip_sample=False, timestep_spacing="linspace", beta_schedule="linear", steps_offset=1,
)

# ----------------------------------------------------------------------------- demo calls
# Pipeline keyword arguments for a fast demo run (besides image/prompt/generator/output_type):
# 8 frames of 96 × 64 pixels (latents 12 × 8), 4 denoising steps. Copy before changing.
DEMO_CALLS: dict[str, dict] = {
    "svd": dict(height=64, width=96, num_frames=8, num_inference_steps=4, fps=7, decode_chunk_size=8),
    "i2vgen-xl": dict(height=64, width=96, num_frames=8, num_inference_steps=4, target_fps=8, decode_chunk_size=8),
    "animatediff": dict(height=64, width=96, num_frames=8, num_inference_steps=4),
    # Wan: 4k + 1 frames (9 → 3 latent frames), sizes multiples of 16.
    "wan": dict(height=64, width=96, num_frames=9, num_inference_steps=4),
}


def _recipe_fingerprint() -> str:
    """A short hash of everything that decides the weights: seed, sizes, schedulers."""
    recipe = [SEED, TEXT_ENCODER, IMAGE_ENCODER, SVD_UNET, SVD_VAE, SD_UNET, MOTION_ADAPTER, KL_VAE,
              I2VGEN_XL_UNET, I2VGEN_XL_VAE, SVD_XT_SCHEDULER, I2VGEN_XL_SCHEDULER, ANIMATEDIFF_SCHEDULER, *WAN_RECIPE]
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def demo_home() -> Path:
    """vidiff's own cache folder: ``$VIDIFF_HOME`` if set (and not empty), else ``~/.cache/vidiff``."""
    override = os.environ.get(HOME_ENV)
    return Path(override).expanduser() if override else Path.home() / ".cache" / "vidiff"


@dataclasses.dataclass(frozen=True)
class DemoCheckpoints:
    """Folders of the demo checkpoints, each loadable with ``from_pretrained``.

    ``svd``: a StableVideoDiffusionPipeline; ``i2vgen_xl``: an I2VGenXLPipeline; ``sd15``: a Stable
    Diffusion 1.5 repository, for ``AnimateDiffPipeline.from_pretrained(sd15, motion_adapter=...)``;
    ``motion_adapter``: a MotionAdapter for it; ``wan``: a WanPipeline (Wan 2.1 text-to-video).
    """

    svd: Path
    i2vgen_xl: Path
    sd15: Path
    motion_adapter: Path
    wan: Path

    @classmethod
    def under(cls, root: Path) -> DemoCheckpoints:
        """The folders as laid out in a build rooted at ``root``."""
        return cls(svd=root / "svd", i2vgen_xl=root / "i2vgen-xl", sd15=root / "sd15", motion_adapter=root / "motion-adapter",
                   wan=root / "wan")


def ensure_demo_checkpoints(home: str | os.PathLike | None = None) -> DemoCheckpoints:
    """The demo checkpoints under ``<home>/demo-checkpoints/<vidiff version>/``, built first if needed.

    ``home`` defaults to :func:`demo_home`. A finished build is reused as it is (a few milliseconds);
    otherwise the checkpoints are built (a few seconds on a CPU) in a temporary sibling folder that
    is renamed into place. The caller's global torch RNG is left untouched.
    """
    if home is not None and not isinstance(home, (str, os.PathLike)):
        raise TypeError(f"home must be a path (str or os.PathLike) or None, got {type(home).__name__}")
    parent = (Path(home).expanduser() if home is not None else demo_home()) / "demo-checkpoints"
    final = parent / __version__
    if _is_complete(final):
        logger.info("using cached demo checkpoints at %s", final)
        return DemoCheckpoints.under(final)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_builds(parent)
        problem = _damage(final) if final.exists() else "not built yet"
        if problem is None:  # another builder just finished it
            return DemoCheckpoints.under(final)
        if final.exists():
            logger.warning("the demo checkpoints at %s are unusable (%s); rebuilding them", final, problem)
            _discard(final, parent)
        return _build_and_publish(parent, final)
    except OSError as error:
        raise OSError(
            f"cannot build the demo checkpoints in {final} ({error}); delete that folder, or set "
            f"${HOME_ENV} to a writable folder, and run again"
        ) from error


def _build_and_publish(parent: Path, final: Path) -> DemoCheckpoints:
    building = Path(tempfile.mkdtemp(prefix=f".{__version__}.building-", dir=parent))
    building.chmod(0o755)  # mkdtemp makes it private; the published cache is an ordinary folder
    try:
        logger.info("building tiny random demo checkpoints (SVD, I2VGen-XL, SD 1.5 + motion adapter, Wan) in %s", final)
        started = time.perf_counter()
        build_demo_checkpoints(building)
        _publish(building, final)
        logger.info("built demo checkpoints at %s in %.1f s", final, time.perf_counter() - started)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return DemoCheckpoints.under(final)


def _is_complete(folder: Path) -> bool:
    """True when ``folder`` holds a finished, undamaged build of this version and recipe."""
    return _damage(folder) is None


def _damage(folder: Path) -> str | None:
    """What is wrong with the build in ``folder`` (None: nothing): no or another recipe's manifest,
    or a file missing, resized or changed since the build (its SHA-256; the files total ~2 MB, so
    hashing them on every use costs milliseconds)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"no readable {MANIFEST}"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return f"{MANIFEST} lists no files"
    if manifest.get("vidiff_version") != __version__ or manifest.get("recipe") != _recipe_fingerprint():
        return "built by another vidiff version or recipe"
    actual = _file_digests(folder)
    for name, expected in manifest["files"].items():
        if name not in actual:
            return f"{name} is missing"
        if actual[name] != expected:
            return f"{name} was changed or damaged"
    return None


def _file_digests(folder: Path) -> dict[str, dict[str, object]]:
    """``{relative path: {"size": bytes, "sha256": hex}}`` of every file under ``folder`` but the manifest."""
    digests = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            data = path.read_bytes()
            digests[path.relative_to(folder).as_posix()] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return digests


def _publish(building: Path, final: Path) -> None:
    """Rename the finished build into place; if another builder got there first, keep theirs."""
    try:
        os.rename(building, final)
    except OSError:
        if not _is_complete(final):
            raise
        logger.info("another process finished the demo checkpoints at %s first; using those", final)


def _discard(folder: Path, parent: Path) -> None:
    """Move ``folder`` out of the way at once (a rename), then delete it."""
    trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.stale-", dir=parent))
    try:
        os.rename(folder, trash / folder.name)
    except FileNotFoundError:
        pass  # another process removed it already
    shutil.rmtree(trash, ignore_errors=True)


def _remove_stale_builds(parent: Path) -> None:
    """Delete temporary folders (builds, discarded copies) of processes that died long ago; a live
    build takes seconds, so an old one is not still being written."""
    now = time.time()
    for leftover in [*parent.glob(".*.building-*"), *parent.glob(".*.stale-*")]:
        try:
            if now - leftover.stat().st_mtime > STALE_BUILD_AGE:
                shutil.rmtree(leftover, ignore_errors=True)
        except FileNotFoundError:
            continue


# ----------------------------------------------------------------------------- building
def build_demo_checkpoints(root: Path) -> DemoCheckpoints:
    """Write all demo checkpoints into ``root`` (no caching, no rename; see :func:`ensure_demo_checkpoints`).

    Deterministic: the weights depend only on :data:`SEED` and the sizes above. The random init
    draws from torch's global RNG inside :func:`torch.random.fork_rng`, so the caller's state survives.
    """
    root = Path(root)
    folders = DemoCheckpoints.under(root)
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        jitter = torch.Generator().manual_seed(SEED + 1)
        write_tiny_clip_tokenizer(folders.sd15 / "tokenizer")
        tokenizer = CLIPTokenizer.from_pretrained(folders.sd15, subfolder="tokenizer")
        _build_sd15(folders, jitter)
        _build_svd(folders.svd, jitter)
        _build_i2vgen_xl(folders.i2vgen_xl, tokenizer, jitter)
        build_wan(folders.wan, lambda model: _jittered(model, jitter))
    manifest = {"vidiff_version": __version__, "recipe": _recipe_fingerprint(), "seed": SEED, "files": _file_digests(root)}
    loading.write_json(root / MANIFEST, manifest)
    return folders


@torch.no_grad()
def _jittered(model: torch.nn.Module, generator: torch.Generator, scale: float = 0.1) -> torch.nn.Module:
    """Move every norm weight off 1 and every bias off 0 by seeded gaussian noise.

    Fresh norms and biases are constants, which make the random networks' output nearly flat grey;
    jittered, the frames show structure, and a loader that dropped one of them would show too.
    """
    for parameter in model.parameters():
        if parameter.ndim <= 1:  # norm scales/shifts, biases, the SVD blend factors
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return model.eval()


def _build_sd15(folders: DemoCheckpoints, jitter: torch.Generator) -> None:
    """A Stable Diffusion 1.5 repository (its tokenizer already written) and the motion adapter."""
    root = folders.sd15
    _jittered(UNet2DConditionModel.from_config(SD_UNET), jitter).save_pretrained(root / "unet")
    _jittered(AutoencoderKL.from_config(KL_VAE), jitter).save_pretrained(root / "vae")
    _jittered(CLIPTextModel.from_config(TEXT_ENCODER), jitter).save_pretrained(root / "text_encoder")
    DDIMScheduler.from_config(ANIMATEDIFF_SCHEDULER).save_pretrained(root / "scheduler")
    # As Stable Diffusion repositories are saved without a safety checker: listed, but empty.
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_vidiff_version": __version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    loading.write_json(root / "model_index.json", index)
    _jittered(MotionAdapter.from_config(MOTION_ADAPTER), jitter).save_pretrained(folders.motion_adapter)


def _build_svd(folder: Path, jitter: torch.Generator) -> None:
    pipe = StableVideoDiffusionPipeline(
        vae=_jittered(AutoencoderKLTemporalDecoder.from_config(SVD_VAE), jitter),
        image_encoder=_jittered(CLIPVisionModelWithProjection.from_config(IMAGE_ENCODER), jitter),
        unet=_jittered(UNetSpatioTemporalConditionModel.from_config(SVD_UNET), jitter),
        scheduler=EulerDiscreteScheduler.from_config(SVD_XT_SCHEDULER),
        feature_extractor=CLIPImageProcessor(),  # OpenAI CLIP's preprocessing, as SVD-XT ships it
    )
    pipe.save_pretrained(folder)


def _build_i2vgen_xl(folder: Path, tokenizer: CLIPTokenizer, jitter: torch.Generator) -> None:
    pipe = I2VGenXLPipeline(
        vae=_jittered(AutoencoderKL.from_config(I2VGEN_XL_VAE), jitter),
        text_encoder=_jittered(CLIPTextModel.from_config(TEXT_ENCODER), jitter),
        tokenizer=tokenizer,
        unet=_jittered(I2VGenXLUNet.from_config(I2VGEN_XL_UNET), jitter),
        scheduler=DDIMScheduler.from_config(I2VGEN_XL_SCHEDULER),
        image_encoder=_jittered(CLIPVisionModelWithProjection.from_config(IMAGE_ENCODER), jitter),
        feature_extractor=CLIPImageProcessor(),
    )
    pipe.save_pretrained(folder)
