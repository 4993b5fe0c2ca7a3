"""User videos as pipeline inputs (``vidiff.pipelines.video_input``): every accepted form gives
``[B, 3, F, H, W]`` in [0, 1] at the output size, resized as ``frames.resize_images`` does; bad
forms are refused naming the argument. (``load_video``'s round trip with ``export_to_video`` /
``export_to_gif`` is covered in test_load_video.py.)
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from vidiff.pipelines import frames as frames_io
from vidiff.pipelines.video_input import split_videos, video_frames, videos_to_tensor

H, W = 24, 40  # the output size; the inputs are 30 × 44


def _array_video(frames: int = 3, seed: int = 0) -> np.ndarray:
    """``[F, 30, 44, 3]`` uint8."""
    return np.random.default_rng(seed).integers(0, 256, (frames, 30, 44, 3), dtype=np.uint8)


def _pil_video(frames: int = 3, seed: int = 0) -> list[PIL.Image.Image]:
    return [PIL.Image.fromarray(frame) for frame in _array_video(frames, seed)]


def _expected(array: np.ndarray, pil: bool) -> torch.Tensor:
    """One video ``[F, h, w, 3]`` uint8 → ``[3, F, H, W]`` as resize_images gives it."""
    pixels = torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255
    pils = [PIL.Image.fromarray(frame) for frame in array] if pil else None
    return frames_io.resize_images(pixels, pils, H, W).transpose(0, 1)


def test_list_of_pil_frames_is_one_video_resized_by_lanczos():
    out = videos_to_tensor(_pil_video(), H, W, "video")
    assert out.shape == (1, 3, 3, H, W) and out.dtype == torch.float32
    torch.testing.assert_close(out[0], _expected(_array_video(), pil=True), rtol=0, atol=0)
    # Lanczos, not nearest-neighbour: the two differ on random pixels
    assert not torch.equal(out[0], _expected(_array_video(), pil=False))


def test_list_of_videos_keeps_their_order():
    out = videos_to_tensor([_pil_video(seed=1), _pil_video(seed=2)], H, W, "video")
    assert out.shape == (2, 3, 3, H, W)
    torch.testing.assert_close(out[0], _expected(_array_video(seed=1), pil=True), rtol=0, atol=0)
    torch.testing.assert_close(out[1], _expected(_array_video(seed=2), pil=True), rtol=0, atol=0)


def test_numpy_video_and_batch_are_resized_nearest():
    one, two = _array_video(seed=3), _array_video(seed=4)
    out = videos_to_tensor(one, H, W, "video")
    assert out.shape == (1, 3, 3, H, W)
    torch.testing.assert_close(out[0], _expected(one, pil=False), rtol=0, atol=0)
    batch = videos_to_tensor(np.stack([one, two]), H, W, "video")
    assert batch.shape == (2, 3, 3, H, W)
    torch.testing.assert_close(batch[1], _expected(two, pil=False), rtol=0, atol=0)


def test_torch_video_frames_first_channels_second():
    array = _array_video(seed=5)
    tensor = torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255  # [F, 3, h, w]
    out = videos_to_tensor(tensor, H, W, "video")
    assert out.shape == (1, 3, 3, H, W)
    torch.testing.assert_close(out[0], _expected(array, pil=False), rtol=0, atol=0)


def test_list_of_array_frames_equals_the_stacked_array():
    array = _array_video(seed=6)
    as_list = videos_to_tensor(list(array), H, W, "video")
    torch.testing.assert_close(as_list, videos_to_tensor(array, H, W, "video"), rtol=0, atol=0)


def test_already_sized_frames_are_kept_exactly():
    array = np.random.default_rng(7).integers(0, 256, (2, H, W, 3), dtype=np.uint8)
    out = videos_to_tensor(array, H, W, "video")
    torch.testing.assert_close(out[0], torch.from_numpy(array).permute(3, 0, 1, 2).float() / 255, rtol=0, atol=0)


def test_one_frame_per_video_frame_count():
    assert video_frames(_pil_video(5), H, W, "video").shape == (5, 3, H, W)
    assert len(split_videos(_pil_video(2), "video")) == 1


@pytest.mark.parametrize(
    "video, error",
    [
        (None, TypeError),
        ("clip.mp4", TypeError),
        ([], TypeError),
        ([[]], ValueError),
        (np.zeros((0, 30, 44, 3), np.uint8), ValueError),
        (np.zeros((30, 44), np.uint8), ValueError),
        (np.zeros((1, 2, 3, 30, 44, 3), np.uint8), ValueError),
        ([_pil_video(3), _pil_video(2)], ValueError),  # different lengths
        ([_pil_video(1)[0], "frame"], TypeError),  # not all frames
    ],
)
def test_bad_videos_name_the_argument(video, error):
    with pytest.raises(error, match="my_video"):
        videos_to_tensor(video, H, W, "my_video")
