"""How much memory a pipeline run needs, estimated from the component configs before any weight loads.

The estimate is a sum of the tensors a run must hold at its peak, from the configs' sizes (channels,
blocks, latent factor) and the run's sizes (videos, frames, height, width, dtype, guidance, decode
chunk). It is meant to be roughly right (within about 2×, see README "Memory"), good enough to
refuse a run that clearly cannot fit before minutes of work, and to choose memory levers later.

Phases of a run (weights stay resident throughout):

- denoise: the latents, and the denoiser's activations at its peak, the highest-resolution level: the
  skip connections kept for the up path plus one transformer's working set (GEGLU's 8× projection);
- decode: the VAE decoder's full-resolution working set for one chunk of frames, and the decoded
  frames gathered so far (in the run's dtype, then as float32);
- output: the frames as float32 numpy [B, F, H, W, 3] (and their float32 transients), plus one
  video as uint8 for writing.

Attention score matrices are not counted: vidiff's attention uses PyTorch's fused scaled-dot-product
kernels, which never hold the [tokens × tokens] matrix on CUDA, nor on CPU for unmasked attention.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import loading

GB = 1e9  # the unit of messages: decimal gigabytes, as memory is sold
# Resident memory of the Python process with torch and vidiff imported (measured: ~0.45 GB on CPU).
CPU_RUNTIME_BYTES = int(0.5 * GB)
# The CUDA context and kernels' workspaces on the GPU.
CUDA_RUNTIME_BYTES = int(0.6 * GB)
# Elements alive per channel and latent pixel while one UNet level runs, in units of that level's
# channels: a transformer level holds its input, the normed input and GEGLU's 8×-wide projection with
# its two 4× halves (≈ 16); a level of resnets (and temporal layers) ≈ 8, the up path's concatenated
# skips (2×) through GroupNorm and SiLU included.
TRANSFORMER_WORKING_SET = 16
RESNET_WORKING_SET = 8
# Copies of the latents during a step (sample, noise, network input, prediction, x̂0, next sample).
LATENT_COPIES = 6
# The VAE decoder's full-resolution working set per frame, in units of its first block's channels:
# the last upsampler's output has the second block's (2×) channels, then GroupNorm, SiLU and a conv;
# the temporal decoder's time-mixing adds a few more.
VAE_WORKING_SET = 8
TEMPORAL_VAE_WORKING_SET = 10


@dataclasses.dataclass(frozen=True)
class RunSize:
    """The sizes of one pipeline call that set its memory."""

    videos: int  # B: videos generated together (num_videos_per_prompt)
    num_frames: int  # F
    height: int  # H, pixels
    width: int  # W, pixels
    dtype: torch.dtype  # of the weights and activations
    guidance: bool  # classifier-free guidance: the denoiser sees 2·B videos
    decode_chunk_size: int | None = None  # frames per VAE decoder call; None = all B·F at once
    window_frames: int | None = None  # context windows: frames per denoiser call; None = all F


OFFLOADS = (None, "model", "sequential")


@dataclasses.dataclass(frozen=True)
class Levers:
    """The memory levers a run turns on (the pipeline methods of the same names).

    vae_tiling: ``enable_vae_tiling()``, the VAE decodes overlapping tiles of at most its
    ``sample_size`` pixels a side. forward_chunking: ``enable_forward_chunking()``, feed-forward and
    attention layers run on slices of their tokens. offload: ``"model"`` (``enable_model_cpu_offload``:
    only the network in use sits on the accelerator) or ``"sequential"``
    (``enable_sequential_cpu_offload``: only the layer in use does); both save accelerator memory only.
    """

    vae_tiling: bool = False
    forward_chunking: bool = False
    offload: str | None = None

    def __post_init__(self) -> None:
        if self.offload not in OFFLOADS:
            raise ValueError(f"offload must be None, 'model' or 'sequential', got {self.offload!r}")

    def names(self) -> list[str]:
        """The levers on, in words, cheapest first."""
        names = ["vae tiling"] if self.vae_tiling else []
        names += ["forward chunking"] if self.forward_chunking else []
        return names + ([f"{self.offload} offload"] if self.offload else [])


@dataclasses.dataclass(frozen=True)
class WeightSizes:
    """Parameters of a pipeline's networks: in all, of the largest network, of the largest layer (a
    module without children: what sequential offload holds on the accelerator at once)."""

    total: int
    largest_network: int
    largest_layer: int


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run needs, by what holds them (see the module docstring for the phases).

    ``weights`` are all the weights (in host memory on the CPU, on the accelerator without offload);
    ``device_weights`` those on the accelerator at once under offload (None: all of them).
    """

    weights: int
    latents: int
    denoiser_activations: int
    vae_decode: int
    output_frames: int
    device_weights: int | None = None

    @property
    def working(self) -> int:
        """The largest phase beyond the weights: denoising, decoding or the output."""
        return max(self.latents + self.denoiser_activations, self.latents + self.vae_decode, self.output_frames)

    def total(self, device: torch.device | str = "cpu") -> int:
        """Peak bytes on ``device`` (for CUDA: on the GPU; the output frames live in host memory)."""
        if torch.device(device).type == "cuda":
            weights = self.weights if self.device_weights is None else self.device_weights
            return CUDA_RUNTIME_BYTES + weights + max(self.latents + self.denoiser_activations, self.latents + self.vae_decode)
        return CPU_RUNTIME_BYTES + self.weights + self.working

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def vae_factor(vae_config: Mapping[str, Any]) -> int:
    """Pixels per latent pixel: 2 per downsampling block (8 for every released VAE here; a Wan VAE,
    recognised by its ``z_dim``: 8 for Wan 2.1, 16 for Wan 2.2)."""
    if "z_dim" in vae_config:
        from .memory_wan import wan_vae_factor

        return wan_vae_factor(vae_config)
    return 2 ** (len(vae_config.get("block_out_channels", (128, 256, 512, 512))) - 1)


def estimate_memory(
    configs: Mapping[str, Mapping[str, Any]], parameters: int | WeightSizes, size: RunSize, levers: Levers = Levers()
) -> MemoryEstimate:
    """The memory of a run of ``size`` with components ``configs`` (``"unet"`` and ``"vae"``: their
    config.json dicts) holding ``parameters`` weights in all (see :func:`count_parameters`; a
    :class:`WeightSizes` from :func:`weight_sizes` lets offload be counted), with ``levers`` on.
    Wan's configs (``"transformer"`` instead of ``"unet"``) go to :mod:`memory_wan`."""
    sizes = parameters if isinstance(parameters, WeightSizes) else WeightSizes(parameters, parameters, parameters)
    from .memory_wan import estimate_wan_memory, is_wan  # imported here: memory_wan builds on this module

    if is_wan(configs):
        return estimate_wan_memory(configs, sizes, size, levers)
    unet, vae = configs["unet"], configs["vae"]
    element = dtype_bytes(size.dtype)
    factor = vae_factor(vae)
    latent_h, latent_w = math.ceil(size.height / factor), math.ceil(size.width / factor)
    # Spatial layers see every frame of every branch as one image: B·(1 + guidance)·F images.
    images = size.videos * (2 if size.guidance else 1) * size.num_frames
    latent_channels = unet.get("out_channels", 4) + unet.get("in_channels", 4)
    latents = LATENT_COPIES * images * latent_channels * latent_h * latent_w * element
    per_image = _unet_elements_per_image(unet, latent_h, latent_w, levers.forward_chunking)
    # With context windows the denoiser sees one window of frames at a time (its sums: in the latents).
    denoised_images = images if size.window_frames is None else images // size.num_frames * min(size.window_frames, size.num_frames)
    on_device = {None: None, "model": sizes.largest_network, "sequential": sizes.largest_layer}[levers.offload]
    return MemoryEstimate(
        weights=sizes.total * element,
        latents=latents,
        denoiser_activations=denoised_images * per_image * element,
        vae_decode=_vae_decode_bytes(vae, size, element, levers.vae_tiling),
        output_frames=output_bytes(size),
        device_weights=None if on_device is None else on_device * element,
    )


def _unet_levels(unet: Mapping[str, Any]) -> list[tuple[int, bool]]:
    """(channels, has a spatial transformer) per UNet level, from the highest resolution down."""
    channels = unet.get("block_out_channels", (320, 640, 1280, 1280))
    kinds = unet.get("down_block_types") or ("CrossAttnDownBlock",) * len(channels)
    return [(c, "Attn" in kind) for c, kind in zip(channels, kinds)]


def _unet_elements_per_image(unet: Mapping[str, Any], latent_h: int, latent_w: int, chunked: bool = False) -> int:
    """Activation elements alive per image at the denoiser's peak: all skips of the down path plus the
    largest level's working set (with forward chunking, a transformer's is no larger than a resnet's)."""
    per_block = unet.get("layers_per_block", 2)
    per_block = max(per_block) if isinstance(per_block, (list, tuple)) else per_block
    skips, working = 0, 0
    for level, (channels, transformer) in enumerate(_unet_levels(unet)):
        pixels = math.ceil(latent_h / 2**level) * math.ceil(latent_w / 2**level)
        skips += (per_block + 1) * channels * pixels  # each layer's output, and the downsampler's
        factor = TRANSFORMER_WORKING_SET if transformer and not chunked else RESNET_WORKING_SET
        working = max(working, factor * channels * pixels)
    return skips + working


def _vae_decode_bytes(vae: Mapping[str, Any], size: RunSize, element: int, tiled: bool = False) -> int:
    frames = size.videos * size.num_frames
    chunk = min(size.decode_chunk_size or frames, frames)
    channels = vae.get("block_out_channels", (128,))[0]
    temporal = "Temporal" in str(vae.get("_class_name", ""))
    working = (TEMPORAL_VAE_WORKING_SET if temporal else VAE_WORKING_SET) * channels
    pixels = size.height * size.width
    if tiled:  # the decoder sees one tile (at most sample_size² pixels) at a time
        pixels = min(size.height, tile_side(vae)) * min(size.width, tile_side(vae))
    gathered = frames * 3 * size.height * size.width * (element + 4)  # decoded chunks in the dtype, then float32
    return chunk * working * pixels * element + gathered


def tile_side(vae: Mapping[str, Any]) -> int:
    """Pixels a side of one VAE tile by default: the image VAE's ``sample_size`` (diffusers' tile,
    512 if unset); half of it for SVD's temporal decoder (its ``enable_vae_tiling`` default)."""
    if "Temporal" in str(vae.get("_class_name", "")):
        return max(int(vae.get("sample_size", 768)) // 2, vae_factor(vae))
    side = vae.get("sample_size", 512)
    return int(side[0] if isinstance(side, (list, tuple)) else side)


def output_bytes(size: RunSize) -> int:
    """Bytes of the run's output: the frames as float32 numpy and one video as uint8."""
    values = size.videos * size.num_frames * size.height * size.width * 3
    # float32 frames and one float32 transient of the [-1, 1] → [0, 1] conversion; one video as uint8.
    return values * 8 + values // size.videos


# ------------------------------------------------------------------------------ reading a checkpoint
def count_parameters(model_class: type, config: Mapping[str, Any]) -> int:
    """Parameters of ``model_class`` built from ``config`` on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = model_class.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    return sum(parameter.numel() for parameter in model.parameters())


def network_configs(
    pipeline_class: type, checkpoint: loading.Checkpoint, index: Mapping[str, Any] | None = None
) -> dict[str, tuple[type, dict[str, Any]]]:
    """``{component: (model class, its config.json)}`` for each network ``pipeline_class`` would load
    from ``checkpoint`` (``unet``, ``vae``, encoders…), given its model_index.json ``index`` (read if
    None). Reads JSON only."""
    index = checkpoint.read_json("model_index.json") if index is None else index
    networks = {}
    for name, classes in pipeline_class.components.items():
        entry = index.get(name)
        if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not pipeline_class._wants_component(name, index):
            continue
        model_class = classes.get(entry[1])
        if not (isinstance(model_class, type) and issubclass(model_class, torch.nn.Module)):
            continue  # schedulers, tokenizers, image processors: no weights to speak of
        networks[name] = (model_class, checkpoint.read_json(loading.join(name, "config.json")))
    return networks


def count_networks(networks: Mapping[str, tuple[type, Mapping[str, Any]]]) -> tuple[dict[str, Mapping[str, Any]], int]:
    """The configs of :func:`network_configs`' ``networks`` by component, and their parameters in all."""
    configs = {name: config for name, (_, config) in networks.items()}
    return configs, sum(count_parameters(model_class, config) for model_class, config in networks.values())


def weight_sizes(networks: Mapping[str, tuple[type, Mapping[str, Any]]]) -> tuple[dict[str, Mapping[str, Any]], WeightSizes]:
    """Like :func:`count_networks`, with the largest network's and the largest layer's parameters."""
    configs, per_network, largest_layer = {}, [], 0
    for name, (model_class, config) in networks.items():
        configs[name] = config
        with torch.device("meta"):
            model = model_class.from_config({k: v for k, v in config.items() if not k.startswith("_")})
        per_network.append(sum(p.numel() for p in model.parameters()))
        for module in model.modules():
            if next(module.children(), None) is None:
                largest_layer = max(largest_layer, sum(p.numel() for p in module.parameters(recurse=False)))
    return configs, WeightSizes(sum(per_network), max(per_network, default=0), largest_layer)


def read_networks(pipeline_class: type, checkpoint: loading.Checkpoint) -> tuple[dict[str, Mapping[str, Any]], int]:
    """The config.json of each network ``pipeline_class`` would load from ``checkpoint`` (keyed by
    component) and their parameter count in all. Reads JSON only."""
    return count_networks(network_configs(pipeline_class, checkpoint))


def available_memory(device: torch.device | str) -> int:
    """Bytes the device has in all: the GPU's total for CUDA; physical RAM (or the cgroup's limit,
    if lower) otherwise. Total, not free: other programs' use comes and goes."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return min([total, *_cgroup_limits()])


def free_memory(device: torch.device | str) -> int:
    """Bytes a run may take now: the GPU's free memory for CUDA; otherwise the RAM the kernel can
    give without swapping (MemAvailable), capped by what this process's cgroup has left."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    free = available_memory(device)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = min(free, int(line.split()[1]) * 1024)
    except OSError:
        pass  # not Linux: the total is the best we know
    for limit, used in zip(_cgroup_limits(), _cgroup_usage()):
        free = min(free, max(limit - used, 0))
    return free


def _cgroup_usage() -> list[int]:
    """Bytes this process's cgroup uses (v2, then v1), in the order of :func:`_cgroup_limits`."""
    usage = []
    for limit_path, usage_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit, used = Path(limit_path).read_text().strip(), Path(usage_path).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and int(limit) < 2**60 and used.isdigit():
            usage.append(int(used))
    return usage


def _cgroup_limits() -> list[int]:
    """The memory limits of this process's cgroup (v2, then v1), where set."""
    limits = []
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # "max" or a huge number means no limit
            limits.append(int(text))
    return limits


def too_small(configs: Mapping[str, Mapping[str, Any]], height: int, width: int) -> str | None:
    """Why ``height`` × ``width`` is below what the models work at, or None. GroupNorm needs more than
    one value per group; at the VAE's latent resolution (and the UNet's deepest level) a group holds
    channels/groups × pixels values, so a 1×1 map works only with two channels per group or more.
    Wan (no UNet, RMS norms) has no such minimum here: its pipelines check their size multiples."""
    if "unet" not in configs:
        return None
    vae, unet = configs["vae"], configs["unet"]
    factor = vae_factor(vae)
    latent_h, latent_w = math.ceil(height / factor), math.ceil(width / factor)
    deepest = 2 ** (len(_unet_levels(unet)) - 1)
    # (model, channels per group at its smallest map, that map's pixels, the side that makes it 2 pixels)
    maps = (
        ("VAE", _per_group(vae, vae.get("block_out_channels", (512,))[-1]), latent_h * latent_w, 2 * factor),
        ("UNet", _per_group(unet, _unet_levels(unet)[-1][0]),
         math.ceil(latent_h / deepest) * math.ceil(latent_w / deepest), (deepest + 1) * factor),
    )
    for name, per_group, pixels, side in maps:
        if per_group * pixels < 2:
            return (
                f"{height}×{width} pixels is too small for this model: its {name}'s GroupNorm has {per_group} "
                f"channel per group and needs 2 values, so height or width must be at least {side}"
            )
    return None


def _per_group(config: Mapping[str, Any], channels: int) -> int:
    return channels // config.get("norm_num_groups", 32)
