"""canny_frames: OpenCV's Canny edges of every frame as 3-channel RGB images (as diffusers'
ControlNet docs make them), checked against cv2 called directly; thresholds validated."""

from __future__ import annotations

import cv2
import numpy as np
import PIL.Image
import pytest
import torch

from vidiff import canny_frames, load_video, media


def shapes_frame(shift: int, height: int = 40, width: int = 56) -> np.ndarray:
    """[H, W, 3] uint8: a bright square and a dim disc on a grey field, moved right by ``shift``."""
    rows, cols = np.mgrid[:height, :width]
    frame = np.full((height, width, 3), 60, dtype=np.uint8)
    frame[8:24, 6 + shift:22 + shift] = (250, 40, 40)
    frame[(rows - 26) ** 2 + (cols - 38 - shift) ** 2 < 64] = (70, 64, 60)  # weak contrast: a step of 10
    return frame


VIDEO = np.stack([shapes_frame(shift) for shift in range(3)])  # [3, 40, 56, 3]


def reference(frame: np.ndarray, low: float, high: float) -> np.ndarray:
    """diffusers' documented recipe: cv2.Canny on the RGB array, the map stacked on 3 channels."""
    edges = cv2.Canny(frame, low, high)
    return np.concatenate([edges[:, :, None]] * 3, axis=2)


@pytest.mark.parametrize("low, high", [(100, 200), (10, 30), (50.5, 400)])
def test_matches_cv2_on_every_frame(low, high):
    edges = canny_frames(list(VIDEO), low, high)
    assert len(edges) == len(VIDEO)
    for frame, edge in zip(VIDEO, edges):
        assert edge.mode == "RGB" and edge.size == (frame.shape[1], frame.shape[0])
        np.testing.assert_array_equal(np.asarray(edge), reference(frame, low, high))
    assert np.asarray(edges[0]).any()  # the square's border is an edge at every setting


def test_thresholds_change_what_counts_as_an_edge():
    # The dim disc's border passes a low threshold but not the defaults.
    loose, strict = np.asarray(canny_frames(VIDEO[:1], 10, 30)[0]), np.asarray(canny_frames(VIDEO[:1])[0])
    assert (loose > 0).sum() > (strict > 0).sum() > 0
    assert set(np.unique(loose)) <= {0, 255}


def test_accepts_the_video_forms_of_the_exporters(tmp_path):
    expected = [reference(frame, 100, 200) for frame in VIDEO]
    forms = [VIDEO, torch.from_numpy(VIDEO), [PIL.Image.fromarray(frame) for frame in VIDEO],
             VIDEO.astype(np.float32) / 255.0]
    for form in forms:
        np.testing.assert_array_equal(np.stack([np.asarray(e) for e in canny_frames(form)]), expected)
    # A round trip through a gif and load_video, the way users get frames (flat colours survive).
    frames = load_video(media.export_to_gif(VIDEO, tmp_path / "clip.gif"))
    np.testing.assert_array_equal(np.stack([np.asarray(e) for e in canny_frames(frames)]), expected)


@pytest.mark.parametrize(
    "low, high, error, message",
    [(-1, 200, ValueError, "low_threshold"), (100, float("inf"), ValueError, "high_threshold"),
     (200, 100, ValueError, "must not exceed"), ("100", 200, TypeError, "low_threshold"),
     (100, None, TypeError, "high_threshold"), (True, 200, TypeError, "low_threshold")],
)
def test_thresholds_are_validated(low, high, error, message):
    with pytest.raises(error, match=message):
        canny_frames(VIDEO, low, high)


def test_bad_video_names_the_argument():
    with pytest.raises(ValueError, match="`video`"):
        canny_frames([])
    with pytest.raises(TypeError, match="`video`"):
        canny_frames("dance.mp4")
