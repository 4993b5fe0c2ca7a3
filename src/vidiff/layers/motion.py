"""AnimateDiff's motion module: a transformer whose sequences run over the frames of each pixel.

A motion module is inserted after every spatial stage of a Stable Diffusion 1.5 UNet. It sees the
UNet's image batch ``[(B·F), C, H, W]``, lets each latent pixel attend to itself in the other
frames (self-attention only, with a sinusoidal code of the frame index), and adds the result back
to its input — so a zero-initialised ``proj_out`` makes it an identity, which is how it was trained.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .chunking import Chunking, run_chunked
from .free_noise import FreeNoiseWindows, windowed_block
from .frames import frame_sequences_to_video, images_to_video, video_to_frame_sequences, video_to_images
from .transformer import BasicTransformerBlock


class MotionModule(nn.Module):
    """Temporal transformer over ``[(B·F), C, H, W]`` → same shape (diffusers' ``AnimateDiffTransformer3D``).

    Parameter names follow the checkpoints: ``norm`` (GroupNorm over channels, statistics spanning
    all frames of a video), ``proj_in``, ``transformer_blocks.N`` (:class:`BasicTransformerBlock`
    with a ``pos_embed`` table of ``max_seq_length`` frames) and ``proj_out``.

    Args:
        in_channels: channels ``C`` of the UNet stage it follows.
        num_attention_heads: heads of every attention.
        attention_head_dim: width per head; default ``in_channels // num_attention_heads`` (AnimateDiff's).
        num_layers: transformer blocks in sequence.
        norm_num_groups: groups of the input GroupNorm; must divide ``in_channels``.
        cross_attention_dim: context width for ``attn2``; None in every released motion module.
        activation_fn: feed-forward activation (``"geglu"``, ``"gelu"``, ``"gelu-approximate"``).
        attention_bias: whether ``to_q``/``to_k``/``to_v`` have biases.
        max_seq_length: the most frames a call may have (length of the position table).
        double_self_attention: make ``attn2`` a second self-attention (AnimateDiff's layout).
        norm_elementwise_affine: whether the blocks' LayerNorms have weights and biases.
        positional_embeddings: ``"sinusoidal"`` (AnimateDiff) or None: no position code and no
            frame limit (diffusers' ``TransformerTemporalModel``, as in I2VGen-XL).

    Two switches, set by a pipeline and off (None) by default; neither touches the weights:

    - ``frame_windows``: a :class:`~vidiff.layers.free_noise.FreeNoiseWindows` makes every block
      attend within FreeNoise's windows of frames, so a call may have more than ``max_seq_length``
      frames (each window at most that many);
    - ``sequence_chunking``: a :class:`~vidiff.layers.chunking.Chunking` along dim 0 runs
      ``proj_in``, the blocks and ``proj_out`` on slices of that many pixel sequences (FreeNoise's
      split inference): the same numbers, smaller temporaries.
    """

    frame_windows: FreeNoiseWindows | None = None
    sequence_chunking: Chunking | None = None

    def __init__(
        self,
        in_channels: int,
        num_attention_heads: int = 8,
        attention_head_dim: int | None = None,
        num_layers: int = 1,
        norm_num_groups: int = 32,
        cross_attention_dim: int | None = None,
        activation_fn: str = "geglu",
        attention_bias: bool = False,
        max_seq_length: int = 32,
        double_self_attention: bool = True,
        norm_elementwise_affine: bool = True,
        positional_embeddings: str | None = "sinusoidal",
    ) -> None:
        super().__init__()
        _check_sizes(in_channels, num_attention_heads, norm_num_groups, max_seq_length)
        if attention_head_dim is None:
            attention_head_dim = in_channels // num_attention_heads
        inner_dim = num_attention_heads * attention_head_dim
        self.in_channels = in_channels
        # Without a position table nothing bounds the number of frames.
        self.max_seq_length = max_seq_length if positional_embeddings is not None else None
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        self.proj_in = nn.Linear(in_channels, inner_dim)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner_dim,
                num_attention_heads,
                attention_head_dim,
                cross_attention_dim=cross_attention_dim,
                activation_fn=activation_fn,
                attention_bias=attention_bias,
                double_self_attention=double_self_attention,
                norm_elementwise_affine=norm_elementwise_affine,
                positional_embeddings=positional_embeddings,
                num_positional_embeddings=max_seq_length,
            )
            for _ in range(num_layers)
        )
        self.proj_out = nn.Linear(inner_dim, in_channels)

    def forward(
        self,
        hidden_states: torch.Tensor,
        num_frames: int,
        encoder_hidden_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mix each pixel across its video's frames.

        Args:
            hidden_states: ``[(B·F), C, H, W]``, the frames of one video consecutive.
            num_frames: ``F``; at most ``max_seq_length`` (with ``frame_windows``: at least its
                ``context_length``, and any number above).
            encoder_hidden_states: context ``[(B·H·W), L, cross_attention_dim]`` for a module built
                with ``cross_attention_dim`` (none of the released ones); ignored otherwise.

        Returns:
            ``[(B·F), C, H, W]``: the input plus the temporal transformer's output.
        """
        self._check_input(hidden_states, num_frames)
        height, width = hidden_states.shape[-2:]
        video = images_to_video(hidden_states, num_frames)  # [B, C, F, H, W], a view
        sequences = video_to_frame_sequences(self.norm(video))  # [(B·H·W), F, C]
        chunking = self.sequence_chunking  # pixel sequences are independent: slices along dim 0
        context = () if encoder_hidden_states is None else (encoder_hidden_states,)  # [(B·H·W), L, D]
        sequences = run_chunked(self.proj_in, chunking, sequences)  # [(B·H·W), F, inner]
        for block in self.transformer_blocks:
            run_block = functools.partial(self._block, block)
            sequences = run_chunked(run_block, chunking, sequences, *context)
        update = run_chunked(self.proj_out, chunking, sequences)
        update = frame_sequences_to_video(update, height, width)  # [B, C, F, H, W] view
        # The residual comes first so the sum takes its frame-major memory layout, which makes the
        # conversion back to an image batch a free view.
        return video_to_images(video + update)

    def _block(
        self, block: BasicTransformerBlock, sequences: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One transformer block on ``[N, F, inner]``: plain, or on FreeNoise's windows of frames."""
        if self.frame_windows is None:
            return block(sequences, context)
        return windowed_block(block, sequences, context, self.frame_windows)

    def _check_input(self, hidden_states: torch.Tensor, num_frames: int) -> None:
        if hidden_states.ndim != 4 or hidden_states.shape[1] != self.in_channels:
            raise ValueError(
                f"hidden_states must be [(B·F), {self.in_channels}, H, W], got shape {tuple(hidden_states.shape)}"
            )
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
        if self.frame_windows is not None:
            self._check_windows(num_frames)
        elif self.max_seq_length is not None and num_frames > self.max_seq_length:
            raise ValueError(
                f"num_frames={num_frames} exceeds the motion module's max_seq_length={self.max_seq_length}; "
                "generate at most that many frames per window"
            )
        if hidden_states.shape[0] % num_frames:
            raise ValueError(
                f"hidden_states holds {hidden_states.shape[0]} frames, not a whole number of videos of "
                f"num_frames={num_frames}"
            )


    def _check_windows(self, num_frames: int) -> None:
        length = self.frame_windows.context_length
        if self.max_seq_length is not None and length > self.max_seq_length:
            raise ValueError(
                f"FreeNoise context_length={length} exceeds the motion module's max_seq_length={self.max_seq_length}"
            )
        if num_frames < length:
            raise ValueError(f"num_frames={num_frames} is less than the FreeNoise context_length={length}")


def _check_sizes(in_channels: int, num_attention_heads: int, norm_num_groups: int, max_seq_length: int) -> None:
    """Reject sizes that would otherwise fail deep inside torch with an unrelated message."""
    if num_attention_heads < 1 or in_channels < num_attention_heads:
        raise ValueError(
            f"num_attention_heads must be between 1 and in_channels={in_channels}, got {num_attention_heads}"
        )
    if norm_num_groups < 1 or in_channels % norm_num_groups:
        raise ValueError(
            f"norm_num_groups={norm_num_groups} must divide the motion module's in_channels={in_channels}"
        )
    if max_seq_length < 1:
        raise ValueError(f"max_seq_length must be at least 1, got {max_seq_length}")
