"""What every pipeline shares: loading and saving the diffusers layout, devices and dtypes, progress bars."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from tqdm.auto import tqdm

from .. import __version__, loading
from ..models import compute_levers
from ..diffusion.guidance import Guidance
from ..diffusion.loop import SamplingPlan, sample
from ..diffusion.noise import NoiseSource
from ..diffusion.windows import NetworkWrapper
from ..models.vae_tiling import DEFAULT_OVERLAP
from . import arguments
from . import frames as frames_io
from . import offload, saving
from .context_windows import ContextWindowsMixin
from .free_init import FreeInitMixin

logger = logging.getLogger(__name__)
P = TypeVar("P", bound="Pipeline")


class Pipeline(ContextWindowsMixin, FreeInitMixin):
    """Base of vidiff's pipelines.

    Subclasses declare :attr:`components`: for each component name (the subfolder and the
    ``model_index.json`` key) the classes that may load it, keyed by the class name a checkpoint may
    write there (e.g. transformers' ``CLIPImageProcessorPil`` is read by our ``CLIPImageProcessor``).
    Every component class offers ``from_checkpoint(checkpoint, subfolder, ...)`` and ``save_pretrained``.
    """

    components: ClassVar[dict[str, dict[str, type]]]
    # Components a checkpoint may lack (absent or ``[null, null]`` in model_index.json): they load as None.
    optional_components: ClassVar[frozenset[str]] = frozenset()
    # The conditioning contract: every input the pipeline hands the loop (``cond``/``uncond``) is per
    # video, ``[B, …]``; those that also vary per frame are named here with the axis holding their
    # frames (the latents' is always 2, in [B, C, F, H, W]). Network wrappers slice along these axes.
    frame_axes: ClassVar[Mapping[str, int]] = {}
    # Wraps the network the loop calls: ``(network, frame_axes) -> network``, e.g.
    # ``vidiff.diffusion.windows.FrameWindows([(0, 16), (8, 24)])``. None: the network as is.
    network_wrapper: NetworkWrapper | None = None
    # The order the networks run in a call (diffusers' name and format); model offload hooks these,
    # skipping absent ones. Other networks (AnimateDiff's separate motion_adapter copy) stay on the CPU.
    model_cpu_offload_seq: ClassVar[str] = "text_encoder->image_encoder->unet->vae"
    # Set while CPU offload is on (see offload.py); None otherwise.
    _offloader: offload.Offloader | None = None
    # Settings a checkpoint's model_index.json holds beside its components (Wan: ``boundary_ratio``,
    # ``expand_timesteps``), with their defaults; passed to ``__init__`` and saved back.
    options: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, **components: Any) -> None:
        settings = {name: components.pop(name, default) for name, default in self.options.items()}
        self._options = settings
        expected = set(self.components)
        required = expected - self.optional_components
        if not required <= set(components) <= expected:
            missing, extra = sorted(required - set(components)), sorted(set(components) - expected)
            raise TypeError(f"{type(self).__name__} needs components {sorted(expected)}; missing {missing}, unexpected {extra}")
        components = {name: components.get(name) for name in self.components}
        for name, component in components.items():
            setattr(self, name, component)
        self._progress_bar_config: dict[str, Any] = {}

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(
        cls: type[P],
        name_or_path: str | os.PathLike,
        *,
        dtype: torch.dtype | None = None,
        torch_dtype: torch.dtype | None = None,
        variant: str | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        device: torch.device | str | None = None,
        **components: Any,
    ) -> P:
        """Load a pipeline from a local folder or Hub id in the diffusers layout.

        ``dtype`` (alias ``torch_dtype``) casts every network's weights (default: float32 for all of
        them, whatever the files store, as in diffusers); ``variant="fp16"`` picks ``*.fp16.*`` weight
        files where a component has them and its default files elsewhere; components passed as keyword
        arguments (``unet=my_unet``) replace the stored ones and are neither loaded nor cast; so do
        the pipeline's :attr:`options` (Wan: ``boundary_ratio=0.9``) replace those of model_index.json.
        """
        settings = {name: components.pop(name) for name in list(components) if name in cls.options}
        unknown = sorted(set(components) - set(cls.components))
        if unknown:
            raise TypeError(f"{cls.__name__}.from_pretrained got unknown argument(s) {unknown}; components are {sorted(cls.components)}")
        cls._check_given_components(components)
        dtype = loading.pick_dtype(dtype, torch_dtype)
        checkpoint = loading.Checkpoint.open(
            name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
        try:
            index = checkpoint.read_json("model_index.json")
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"{checkpoint.name} is not a pipeline checkpoint: it has no model_index.json. A diffusers-layout "
                f"checkpoint folder holds model_index.json and one subfolder per component ({', '.join(cls.components)})"
            ) from err
        loaded = {name: index[name] for name in cls.options if name in index}
        loaded.update(settings)  # the caller's settings win over the checkpoint's
        for name, classes in cls.components.items():
            if name in components:
                loaded[name] = components[name]
                continue
            if not cls._wants_component(name, index):
                loaded[name] = None
                continue
            component_class = cls._component_class(checkpoint, index, name, classes)
            logger.info("loading %s (%s) from %s", name, component_class.__name__, checkpoint.name)
            loaded[name] = cls._load_component(component_class, checkpoint, name, dtype, variant, device)
        return cls(**loaded)

    @classmethod
    def _check_given_components(cls, components: Mapping[str, Any]) -> None:
        """Components passed to ``from_pretrained`` must be instances of the classes that may fill their
        slot (None only for optional ones): a wrong one is refused before anything is loaded."""
        for name, component in components.items():
            classes = tuple(cls.components[name].values())
            if component is None and name in cls.optional_components:
                continue
            if not isinstance(component, classes):
                accepted = sorted({c.__name__ for c in classes})
                raise TypeError(
                    f"{cls.__name__}.from_pretrained: `{name}` must be a {' or '.join(accepted)} (or left out, to "
                    f"load it from the checkpoint); got {type(component).__name__}"
                )

    @classmethod
    def _wants_component(cls, name: str, index: Mapping) -> bool:
        """Whether to load component ``name`` from a checkpoint whose model_index.json is ``index``.

        Required components always load; optional ones when the index lists them. Names the index
        lists that the pipeline does not use (e.g. ``safety_checker``) are never read at all.
        """
        if name not in cls.optional_components:
            return True
        entry = index.get(name)
        return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] is not None

    @classmethod
    def _component_class(cls, checkpoint: loading.Checkpoint, index: Mapping, name: str, classes: dict[str, type]) -> type:
        entry = index.get(name)
        if not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[1] is None:
            raise ValueError(
                f"{checkpoint.name}/model_index.json has no component {name!r} (found {sorted(k for k in index if not k.startswith('_'))}); "
                f"{cls.__name__} needs {sorted(cls.components)}"
            )
        class_name = entry[1]
        if class_name not in classes:
            raise ValueError(
                f"{checkpoint.name}: component {name!r} is a {class_name}, which {cls.__name__} cannot load; "
                f"supported: {sorted(classes)}"
            )
        return classes[class_name]

    @staticmethod
    def _load_component(component_class: type, checkpoint: loading.Checkpoint, name: str, dtype, variant, device) -> Any:
        if issubclass(component_class, torch.nn.Module):
            return component_class.from_checkpoint(checkpoint, name, dtype=dtype, variant=variant, device=device)
        return component_class.from_checkpoint(checkpoint, name)

    def save_pretrained(self, directory: str | os.PathLike, *, variant: str | None = None) -> None:
        """Write ``model_index.json`` and one subfolder per component, loadable by vidiff and diffusers.

        The checkpoint is written whole into a hidden sibling folder, then moved into place, so a failure
        leaves nothing half-written: a new folder does not appear (nor do parents made for it), an existing
        one keeps its contents. Saving into an existing folder replaces the component subfolders and
        ``model_index.json`` and keeps any other file there.
        """
        saving.write_atomically(directory, lambda staging: self._write_checkpoint(staging, variant), "save_pretrained")

    def _write_checkpoint(self, directory: Path, variant: str | None) -> None:
        directory.mkdir()
        index: dict[str, Any] = {"_class_name": type(self).__name__, "_vidiff_version": __version__, **self._options}
        for name in self.components:
            component = getattr(self, name)
            if component is None:
                index[name] = [None, None]
                continue
            index[name] = [getattr(component, "library", "diffusers"), type(component).__name__]
            if isinstance(component, torch.nn.Module):
                component.save_pretrained(directory / name, variant=variant)
            else:
                component.save_pretrained(directory / name)
        loading.write_json(directory / "model_index.json", index)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side (the VAE's ``spatial_scale_factor``; 8 for the released VAEs)."""
        return self.vae.spatial_scale_factor

    # ------------------------------------------------------------------ VAE memory levers
    def enable_vae_tiling(
        self,
        tile_sample_min_size: int | None = None,
        tile_overlap_factor: float = DEFAULT_OVERLAP,
        tile_latent_min_size: int | None = None,
    ) -> None:
        """Decode (and encode) frames larger than a tile as overlapping spatial tiles, seams cross-faded.

        Delegates to the VAE's ``enable_tiling`` (SD's ``AutoencoderKL``: diffusers' algorithm; SVD's
        temporal decoder: tiles spanning every frame of a decode chunk). Options: the tile side in
        pixels (default: the VAE's), or in latent pixels, and the shared fraction of a tile. Frames
        differ slightly from untiled ones; peak decode memory follows the tile, not the frame.
        """
        self.vae.enable_tiling(
            tile_sample_min_size=tile_sample_min_size,
            tile_overlap_factor=tile_overlap_factor,
            tile_latent_min_size=tile_latent_min_size,
        )

    def disable_vae_tiling(self) -> None:
        """Decode and encode whole frames again (the output is then exactly as before tiling)."""
        self.vae.disable_tiling()

    def enable_vae_slicing(self) -> None:
        """Run the VAE on one batch entry at a time (an image; for SVD's decoder, a video): same frames, less memory."""
        self.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        """Run the VAE on whole batches again."""
        self.vae.disable_slicing()

    # ------------------------------------------------------------------ devices and dtypes
    def _modules(self) -> list[torch.nn.Module]:
        return [c for c in (getattr(self, n) for n in self.components) if isinstance(c, torch.nn.Module)]

    def to(self: P, *args: Any, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> P:
        """Move every network to a device and/or cast it: ``to("cuda")``, ``to(torch.float16)``,
        ``to("cuda", torch.float16)`` or ``to(device=..., dtype=...)``. Returns the pipeline itself."""
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            elif isinstance(arg, (str, torch.device)):
                device = torch.device(arg)
            else:
                raise TypeError(f"Pipeline.to() takes a device and/or a torch.dtype, got {type(arg).__name__}")
        if self._offloader is not None:
            raise ValueError(
                f"Pipeline.to() is refused while {self._offloader.mode} CPU offload is on (it places the networks "
                "itself); call pipe.disable_offload() first, which leaves every network on the CPU"
            )
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"`dtype` must be a floating-point torch.dtype, got {dtype}")
        for module in self._modules():
            module.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        """The device the pipeline runs on: the execution device while CPU offload is on, else that of
        its denoising network (``unet``)."""
        if self._offloader is not None:
            return self._offloader.device
        denoiser = getattr(self, "unet", None)
        modules = [denoiser] if isinstance(denoiser, torch.nn.Module) else self._modules()
        return modules[0].device if modules else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        denoiser = getattr(self, "unet", None)
        modules = [denoiser] if isinstance(denoiser, torch.nn.Module) else self._modules()
        return modules[0].dtype if modules else torch.float32

    # ------------------------------------------------------------------ compute levers (models/compute_levers.py)
    def compile(self, **torch_compile_options: Any) -> None:
        """Compile the denoiser's repeated blocks (transformer blocks, resnets) with ``torch.compile``.

        Regional: each block class is traced once per input shape and reused across stages, so the
        first call's warm-up stays short. Options (``mode``, ``dynamic``, ``fullgraph``, ``backend``)
        go to ``torch.compile``. Weights, ``state_dict()`` and ``.to()`` are unaffected.
        """
        for network in compute_levers.denoisers_of(self):
            compute_levers.compile_repeated_blocks(network, **torch_compile_options)

    def enable_forward_chunking(self, chunk_size: int | None = None, dim: int = 0) -> None:
        """Run the denoiser's feed-forward and attention layers on slices of ``chunk_size`` rows
        (None: 1) along ``dim`` (0: the batch of sequences, 1: tokens / queries): less memory, same result."""
        for network in compute_levers.denoisers_of(self):
            compute_levers.set_forward_chunking(network, chunk_size, dim)

    def disable_forward_chunking(self) -> None:
        """Undo :meth:`enable_forward_chunking`."""
        for network in compute_levers.denoisers_of(self):
            compute_levers.clear_forward_chunking(network)

    # ------------------------------------------------------------------ CPU offload (offload.py)
    def enable_model_cpu_offload(self, device: torch.device | str | int | None = None) -> None:
        """Networks stay on the CPU; each whole component moves to ``device`` (default: CUDA) while it
        runs, the previous one back. ``pipe.to()`` is refused until :meth:`disable_offload`."""
        self._enable_offload("model", offload.execution_device(device, "enable_model_cpu_offload"))

    def enable_sequential_cpu_offload(self, device: torch.device | str | int | None = None) -> None:
        """Networks stay on the CPU; each module's weights are copied to ``device`` (default: CUDA) for
        its own forward only: least memory, slowest. ``pipe.to()`` is refused until :meth:`disable_offload`."""
        self._enable_offload("sequential", offload.execution_device(device, "enable_sequential_cpu_offload"))

    def disable_offload(self) -> None:
        """Remove the offload hooks; every network is left on the CPU (``pipe.to("cuda")`` to move it)."""
        if self._offloader is not None:
            self._offloader.remove()
            self._offloader = None

    def _enable_offload(self, mode: offload.OffloadMode, device: torch.device, park_device: str | None = None) -> None:
        self.disable_offload()  # park_device="meta" is for tests: touching a parked tensor then fails
        for module in self._modules():
            module.to("cpu")
        names = [n for n in self.model_cpu_offload_seq.split("->") if isinstance(getattr(self, n, None), torch.nn.Module)]
        self._offloader = offload.Offloader(mode, {n: getattr(self, n) for n in names}, device, park_device)

    # ------------------------------------------------------------------ the common tail of __call__
    def _network(self, x: torch.Tensor, timestep: torch.Tensor, cond: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The denoiser as the loop calls it, ``x`` ``[B', C, F, h, w]`` → same shape; each pipeline
        maps its per-video conditioning (frame axes as :attr:`frame_axes` declares) onto its network."""
        raise NotImplementedError

    def _before_step(self, index: int) -> None:
        """Called by the loop with each step's index (from 0 in every loop run) before its network
        calls; pipelines whose network depends on the step (ControlNet guidance windows) track it."""

    def _decode(self, latents: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
        """Final scaled latents [B, C, f, h, w] → float32 frames [B, 3, F, H, W] in [-1, 1].

        ``chunk_size`` latent frames per VAE call, as the VAE's ``decode_video`` defines it (None: its
        default); the bar over the chunks reads "decoding".
        """
        frames = self.vae.decode_video(
            latents / self.vae.config.scaling_factor,
            chunk_size,
            progress=lambda starts: self.progress_bar(starts, total=len(starts), desc="decoding"),
        )
        return frames.float()

    def _denoise(
        self,
        latents: torch.Tensor,
        plan: SamplingPlan,
        cond: Mapping[str, torch.Tensor],
        uncond: Mapping[str, torch.Tensor] | None,
        guidance: Guidance,
        callback: Callable[..., dict[str, Any]] | None,
        tensor_inputs: Sequence[str],
        noise: NoiseSource | None = None,
        replan: Callable[[int], SamplingPlan] | None = None,
        num_inference_steps: int | None = None,
    ) -> torch.Tensor:
        """Run the one denoising loop with this pipeline's network (through :attr:`network_wrapper`,
        if set), step callback and progress bar; with FreeInit on, once per FreeInit iteration.

        ``replan(steps)``: the plan for another step count, and ``num_inference_steps`` the count the
        call asked for (FreeInit's fast sampling re-plans with fewer); ``noise`` also draws FreeInit's
        fresh noise.
        """
        on_step = arguments.latents_callback(self, callback, tensor_inputs)

        def run(start: torch.Tensor, run_plan: SamplingPlan, desc: str) -> torch.Tensor:
            # a fresh wrapper per loop run: wrappers may keep per-run state (a window schedule's step)
            network = self._network if self.network_wrapper is None else self.network_wrapper(self._network, self.frame_axes)
            progress = functools.partial(self.progress_bar, total=run_plan.num_steps, desc=desc)
            return sample(
                network, start, run_plan, cond, uncond, guidance,
                noise=noise, on_step=on_step, progress=progress, before_step=self._before_step,
            )

        if not self.free_init_enabled:
            return run(latents, plan, "denoising")
        return self._free_init_sample(run, latents, plan, replan, num_inference_steps, noise)

    def _finish(self, latents: torch.Tensor, output_type: str, return_dict: bool, decode_chunk_size: int | None) -> Any:
        """Decode (unless ``output_type="latent"``) and wrap the result as diffusers returns it."""
        if output_type == "latent":
            frames = latents
        else:
            frames = frames_io.videos_to_output(self._decode(latents, decode_chunk_size), output_type)
        if self._offloader is not None:
            self._offloader.release()  # nothing stays on the accelerator after a call
        return frames_io.VideoPipelineOutput(frames=frames) if return_dict else (frames,)

    # ------------------------------------------------------------------ progress
    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Options passed to tqdm for the progress bars (e.g. ``disable=True``), as in diffusers."""
        self._progress_bar_config = dict(kwargs)

    def progress_bar(self, iterable: Iterable | None = None, total: int | None = None, **kwargs: Any) -> tqdm:
        config = {**kwargs, **self._progress_bar_config}
        return tqdm(iterable, total=total, **config)

