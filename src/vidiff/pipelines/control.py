"""ControlNet guidance for the AnimateDiff pipelines: control frames in, residuals at the UNet's seam.

The control inputs travel through the one loop as per-video conditioning (``cond`` / ``uncond``):

- ``control_frames`` ``[B, K, 3, F, H, W]`` in [0, 1]: one control video per ControlNet (K of them),
  frame axis 3, so context windows hand each window its frames;
- ``controlnet_active`` ``[B]``: 1 where the ControlNet runs. Guess mode with classifier-free
  guidance runs it on the conditional half only and gives the unconditional half zero residuals
  (diffusers' image ControlNet pipeline does this; its AnimateDiff ControlNet pipelines crash).

Each network call runs every ControlNet on the frames as images ``[(B·F), 4, h, w]`` and sums their
residuals, which the motion UNet adds at its one residual seam. The guidance window
(``control_guidance_start`` / ``end``) switches a ControlNet off at step i of N when
``i / N < start`` or ``(i + 1) / N > end``, N the steps of the call's (strength-cut) plan, as
diffusers computes it; outside its window a ControlNet is skipped (diffusers runs it and multiplies
its residuals by 0, the same numbers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..models.controlnet import ControlNetModel, MultiControlNetModel
from .video_input import split_videos, video_frames

ACTIVE = "controlnet_active"
# (down residuals, mid residual), each [(B·F), C, h', w']
# (cond, uncond, plan, num_frames, height, width) -> None, as AnimateDiffPipeline._generate calls it
AddInputs = Callable[..., None]
Residuals = tuple[list[torch.Tensor], torch.Tensor]


def select_rows(value: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """The rows of ``value`` belonging to the videos ``rows`` (bool ``[B]``): per-video ``[B, …]`` or
    per-frame ``[(B·F), …]`` tensors alike."""
    if value.shape[0] == batch:
        return value[rows]
    return value.unflatten(0, (batch, -1))[rows].flatten(0, 1)


def residuals_on_rows(
    x: torch.Tensor,
    context: torch.Tensor,
    active: torch.Tensor,
    inputs: Mapping[str, torch.Tensor],
    run: Callable[[torch.Tensor, torch.Tensor, Mapping[str, torch.Tensor]], Residuals],
) -> Residuals:
    """``run`` on the videos whose ``active`` flag is set; the others get zero residuals.

    ``x`` ``[B, 4, F, h, w]``, ``context`` per video or per frame, ``inputs`` per video ``[B, …]``.
    Residuals come back on every frame as images ``[(B·F), C, h', w']``.
    """
    batch, num_frames = x.shape[0], x.shape[2]
    rows = active.to(torch.bool)
    if bool(rows.all()):
        return run(x, context, inputs)
    picked = {name: value[rows] for name, value in inputs.items()}
    down, mid = run(x[rows], select_rows(context, rows, batch), picked)

    def widen(residual: torch.Tensor) -> torch.Tensor:  # [(b·F), C, h, w] → [(B·F), C, h, w], zeros elsewhere
        full = residual.new_zeros((batch, num_frames, *residual.shape[1:]))
        full[rows] = residual.unflatten(0, (-1, num_frames))
        return full.flatten(0, 1)

    return [widen(r) for r in down], widen(mid)


def guidance_windows(start: Any, end: Any, count: int) -> tuple[list[float], list[float]]:
    """``control_guidance_start`` / ``end`` as one fraction each per ControlNet (a single number
    serves all), checked: ``0 ≤ start < end ≤ 1``."""
    starts = list(start) if isinstance(start, (list, tuple)) else None
    ends = list(end) if isinstance(end, (list, tuple)) else None
    if starts is None:
        starts = [start] * (len(ends) if ends is not None else count)
    if ends is None:
        ends = [end] * len(starts)
    if len(starts) != len(ends) or len(starts) != count:
        raise ValueError(
            f"`control_guidance_start` and `control_guidance_end` must give one value per ControlNet ({count}), "
            f"got {len(starts)} and {len(ends)}"
        )
    for first, last in zip(starts, ends):
        for name, value in (("control_guidance_start", first), ("control_guidance_end", last)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"`{name}` must be a fraction of the steps in [0, 1], got {value!r}")
        if first >= last:
            raise ValueError(f"`control_guidance_start` ({first}) must be smaller than `control_guidance_end` ({last})")
    return [float(s) for s in starts], [float(e) for e in ends]


def conditioning_scales(scale: Any, count: int, argument: str = "controlnet_conditioning_scale") -> list[float]:
    """One finite factor per ControlNet from a number (for all) or a list (one each; a list of one
    serves a single ControlNet)."""
    scales = list(scale) if isinstance(scale, (list, tuple)) else [scale] * count
    if len(scales) != count:
        raise ValueError(f"`{argument}` must be a number or a list of {count} (one per ControlNet), got {len(scales)} values")
    for value in scales:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
            raise ValueError(f"`{argument}` must hold finite numbers, got {value!r}")
    return [float(v) for v in scales]


@dataclass(frozen=True)
class ControlSchedule:
    """Per-call ControlNet settings: each net's scale and whether it is on at each step."""

    scales: tuple[float, ...]
    keep: tuple[tuple[bool, ...], ...]  # [steps][nets]
    guess_mode: bool

    @classmethod
    def build(cls, scales: Sequence[float], starts: Sequence[float], ends: Sequence[float], num_steps: int, guess_mode: bool):
        keep = tuple(
            tuple(not (i / num_steps < s or (i + 1) / num_steps > e) for s, e in zip(starts, ends)) for i in range(num_steps)
        )
        return cls(tuple(scales), keep, guess_mode)

    def at(self, step: int) -> list[float]:
        """Each net's scale at ``step`` (0 outside its guidance window)."""
        keep = self.keep[min(step, len(self.keep) - 1)]
        return [scale if on else 0.0 for scale, on in zip(self.scales, keep)]


class ControlNetMixin:
    """ControlNet (one, or several as a list / MultiControlNetModel) for an AnimateDiff pipeline."""

    controlnet: ControlNetModel | MultiControlNetModel
    unet: Any
    _control: ControlSchedule | None = None
    _control_step: int = 0

    def _init_controlnet(self) -> None:
        """Called from ``__init__``: a list of ControlNets becomes a MultiControlNetModel; each must fit the UNet."""
        if isinstance(self.controlnet, (list, tuple)):
            self.controlnet = MultiControlNetModel(list(self.controlnet))
        if not isinstance(self.controlnet, (ControlNetModel, MultiControlNetModel)):
            raise TypeError(
                f"`controlnet` must be a ControlNetModel, a list of them or a MultiControlNetModel, got {type(self.controlnet).__name__}"
            )
        for index, net in enumerate(self.controlnets):
            net.check_fits(self.unet, "controlnet" if len(self.controlnets) == 1 else f"controlnet[{index}]")

    @classmethod
    def _check_given_components(cls, components: Mapping[str, Any]) -> None:
        given = dict(components)
        nets = given.get("controlnet")
        if isinstance(nets, (list, tuple)):
            if not nets or not all(isinstance(net, ControlNetModel) for net in nets):
                raise TypeError("`controlnet` as a list must hold ControlNetModel instances (at least one)")
            given.pop("controlnet")
        super()._check_given_components(given)  # type: ignore[misc]

    @property
    def controlnets(self) -> list[ControlNetModel]:
        """The ControlNets in order (one for a single ControlNetModel)."""
        return list(self.controlnet.nets) if isinstance(self.controlnet, MultiControlNetModel) else [self.controlnet]

    # ------------------------------------------------------------------ preparing a call
    def _control_frames(self, conditioning_frames: Any, height: int, width: int, num_frames: int) -> torch.Tensor:
        """``conditioning_frames`` → ``[V, K, 3, F, H, W]`` in [0, 1]: one video of ``num_frames`` frames per
        ControlNet (a single ControlNet takes the video itself, several a list of videos), V = 1; or, for a
        single ControlNet, a list of V videos, one per prompt (as diffusers' video-to-video pipeline takes)."""
        count = len(self.controlnets)
        if conditioning_frames is None:
            raise ValueError("`conditioning_frames` is required: the control video (a list of frames) for the ControlNet")
        if count == 1:
            videos = split_videos(conditioning_frames, "conditioning_frames")
        else:
            if not isinstance(conditioning_frames, (list, tuple)) or len(conditioning_frames) != count:
                raise ValueError(
                    f"`conditioning_frames` must be a list of {count} videos, one per ControlNet, got "
                    f"{len(conditioning_frames) if isinstance(conditioning_frames, (list, tuple)) else type(conditioning_frames).__name__}"
                )
            videos = [split_videos(video, f"conditioning_frames[{k}]")[0] for k, video in enumerate(conditioning_frames)]
        frames = []
        for index, video in enumerate(videos):
            pixels = video_frames(video, height, width, "conditioning_frames")  # [F', 3, H, W]
            if pixels.shape[0] != num_frames:
                where = "" if count == 1 else f"[{index}]"
                raise ValueError(
                    f"`conditioning_frames{where}` has {pixels.shape[0]} frames but the video has {num_frames}; "
                    "give one control frame per video frame"
                )
            frames.append(pixels.transpose(0, 1))  # [3, F, H, W]
        stacked = torch.stack(frames)  # [K, 3, F, H, W], or [V, 3, F, H, W] for one ControlNet
        return stacked.unsqueeze(1) if count == 1 else stacked.unsqueeze(0)

    def _add_control_inputs(
        self,
        cond: dict[str, torch.Tensor],
        uncond: dict[str, torch.Tensor] | None,
        frames: torch.Tensor,
        guess_mode: bool,
    ) -> None:
        """Put the control frames ``[V, K, 3, F, H, W]`` (V = 1: shared by the batch; else one per prompt,
        repeated for its videos) into both branches' inputs."""
        batch = next(iter(cond.values())).shape[0]
        if frames.shape[0] != 1 and batch % frames.shape[0] != 0:
            raise ValueError(
                f"`conditioning_frames` holds {frames.shape[0]} control videos for one ControlNet; give one video, "
                f"or one per prompt ({batch} videos in this call)"
            )
        # the pipeline's execution device: under CPU offload the ControlNet's own weights may be parked
        frames = frames.to(device=self.device, dtype=self.controlnets[0].dtype)
        # [B, K, 3, F, H, W]: a view when shared, prompt-major copies when one per prompt
        if frames.shape[0] == 1:
            per_video = frames.expand(batch, *frames.shape[1:])
        else:
            per_video = frames.repeat_interleave(batch // frames.shape[0], dim=0)
        cond["control_frames"] = per_video
        cond[ACTIVE] = torch.ones(batch, device=per_video.device)
        if uncond is not None:
            uncond["control_frames"] = per_video
            # guess mode with guidance: the ControlNet sees the conditional half only
            uncond[ACTIVE] = torch.zeros(batch, device=per_video.device) if guess_mode else cond[ACTIVE]

    def _control_hook(self, conditioning_frames: Any, scale: Any, guess_mode: Any, start: Any, end: Any) -> AddInputs:
        """Check the ControlNet arguments of a call now; returns the ``add_inputs`` hook that, once the
        plan is made, sets the call's schedule and puts the control frames into the loop's inputs."""
        count = len(self.controlnets)
        if not isinstance(guess_mode, bool):
            raise TypeError(f"`guess_mode` must be True or False, got {guess_mode!r}")
        if count == 1 and isinstance(scale, (list, tuple)):
            scale = list(scale)[:1]  # a single ControlNet takes a list's first value, as in diffusers
        scales = conditioning_scales(scale, count)
        starts, ends = guidance_windows(start, end, count)
        # ControlNets trained with global_pool_conditions always run in guess mode
        guess_mode = guess_mode or bool(self.controlnets[0].config.global_pool_conditions)

        def add_inputs(cond, uncond, plan, num_frames: int, height: int, width: int) -> None:
            frames = self._control_frames(conditioning_frames, height, width, num_frames)
            self._control = ControlSchedule.build(scales, starts, ends, plan.num_steps, guess_mode)
            self._add_control_inputs(cond, uncond, frames, guess_mode)

        return add_inputs

    # ------------------------------------------------------------------ during the loop
    def _before_step(self, index: int) -> None:
        self._control_step = index

    def _control_residuals(
        self, x: torch.Tensor, timestep: torch.Tensor, cond: Mapping[str, torch.Tensor], context: torch.Tensor
    ) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]:
        scales = self._control.at(self._control_step)
        if not any(scales):
            return None, None  # every ControlNet outside its guidance window (or at scale 0)
        guess_mode = self._control.guess_mode

        def run(latents: torch.Tensor, text: torch.Tensor, inputs: Mapping[str, torch.Tensor]) -> Residuals:
            images = latents.transpose(1, 2).flatten(0, 1)  # [b, 4, F, h, w] → [(b·F), 4, h, w]
            total_down, total_mid = None, None
            for k, (net, scale) in enumerate(zip(self.controlnets, scales)):
                if scale == 0:
                    continue
                control = inputs["control_frames"][:, k].transpose(1, 2).flatten(0, 1)  # [(b·F), 3, H, W]
                down, mid = net(images, timestep, text, control, scale, guess_mode)
                if total_down is None:
                    total_down, total_mid = list(down), mid
                else:
                    total_down = [a + b for a, b in zip(total_down, down)]
                    total_mid = total_mid + mid
            return total_down, total_mid

        return residuals_on_rows(x, context, cond[ACTIVE], {"control_frames": cond["control_frames"]}, run)

