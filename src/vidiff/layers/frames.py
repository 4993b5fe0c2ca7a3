"""Named reshapes between the three layouts a video network works in.

Letters: B videos, C channels, F frames, H×W pixels (or latent cells), S = H·W tokens per frame.

* ``[B, C, F, H, W]``  — vidiff's public video layout (and what 3-D convolutions want);
* ``[(B·F), C, H, W]`` — an image batch, frames of one video consecutive, for 2-D layers;
* ``[(B·F), S, C]``    — per-frame token sequences, for spatial attention;
* ``[(B·S), F, C]``    — per-pixel frame sequences, for temporal attention.

Functions that return views say so; the others copy (a permutation cannot be a plain view).
"""

from __future__ import annotations

import torch


def split_frames(batch: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``[(B·F), ...]`` → ``[B, F, ...]`` as a view: regroup a per-frame batch by video."""
    if batch.shape[0] % num_frames:
        raise ValueError(f"a batch of {batch.shape[0]} is not whole videos of num_frames={num_frames}")
    return batch.view(batch.shape[0] // num_frames, num_frames, *batch.shape[1:])


def merge_frames(videos: torch.Tensor) -> torch.Tensor:
    """``[B, F, ...]`` → ``[(B·F), ...]``, the inverse of :func:`split_frames` (a view when possible)."""
    return videos.reshape(videos.shape[0] * videos.shape[1], *videos.shape[2:])


def video_to_images(video: torch.Tensor) -> torch.Tensor:
    """``[B, C, F, H, W]`` → ``[(B·F), C, H, W]`` (contiguous copy, frames of a video consecutive)."""
    batch, channels, frames, height, width = video.shape
    return video.transpose(1, 2).reshape(batch * frames, channels, height, width)


def images_to_video(images: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``[(B·F), C, H, W]`` → ``[B, C, F, H, W]`` as a strided view (no copy)."""
    return split_frames(images, num_frames).transpose(1, 2)


def images_to_tokens(images: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` → ``[N, H·W, C]`` (copy): every pixel becomes a token."""
    count, channels, height, width = images.shape
    return images.permute(0, 2, 3, 1).reshape(count, height * width, channels)


def tokens_to_images(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[N, H·W, C]`` → ``[N, C, H, W]`` as a strided view (channels-last memory)."""
    count, _, channels = tokens.shape
    return tokens.view(count, height, width, channels).permute(0, 3, 1, 2)


def tokens_to_frame_sequences(tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``[(B·F), S, C]`` → ``[(B·S), F, C]`` (copy): one sequence over time per pixel."""
    batch_frames, seq_len, channels = tokens.shape
    batch = batch_frames // num_frames
    return (
        tokens.view(batch, num_frames, seq_len, channels)
        .transpose(1, 2)
        .reshape(batch * seq_len, num_frames, channels)
    )


def frame_sequences_to_tokens(sequences: torch.Tensor, seq_len: int) -> torch.Tensor:
    """``[(B·S), F, C]`` → ``[(B·F), S, C]`` (copy), the inverse of :func:`tokens_to_frame_sequences`."""
    batch_seq, num_frames, channels = sequences.shape
    batch = batch_seq // seq_len
    return (
        sequences.view(batch, seq_len, num_frames, channels)
        .transpose(1, 2)
        .reshape(batch * num_frames, seq_len, channels)
    )


def video_to_frame_sequences(video: torch.Tensor) -> torch.Tensor:
    """``[B, C, F, H, W]`` → ``[(B·H·W), F, C]`` (copy): one sequence over time per pixel."""
    batch, channels, frames, height, width = video.shape
    return video.permute(0, 3, 4, 2, 1).reshape(batch * height * width, frames, channels)


def frame_sequences_to_video(sequences: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[(B·H·W), F, C]`` → ``[B, C, F, H, W]`` as a strided view (no copy), the inverse of
    :func:`video_to_frame_sequences`."""
    batch_pixels, frames, channels = sequences.shape
    batch = batch_pixels // (height * width)
    return sequences.view(batch, height, width, frames, channels).permute(0, 4, 3, 1, 2)
