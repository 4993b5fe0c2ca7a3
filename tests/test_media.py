"""vidiff.media: images in, mp4 / gif / png out; files read back with PyAV and Pillow."""

from __future__ import annotations

import http.server
import os
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.utils import export_to_gif as diffusers_export_to_gif
from diffusers.utils import load_image as diffusers_load_image

from vidiff import media

FRAMES, HEIGHT, WIDTH = 6, 48, 64


def gradient_video(frames: int = FRAMES, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A smooth, moving colour gradient, uint8 [F, H, W, 3]."""
    t, y, x = np.meshgrid(np.arange(frames), np.arange(height), np.arange(width), indexing="ij")
    red = 40 + 160 * x / width + 4 * t
    green = 30 + 180 * y / height
    blue = 120 + 60 * np.sin(x / 9.0 + t / 3.0)
    return np.stack([red, green, blue], axis=-1).round().astype(np.uint8)


def read_mp4(path: str) -> dict:
    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return {
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "rate": stream.average_rate,
            "frames": np.stack(frames),
        }


def read_gif(path: str) -> tuple[np.ndarray, list[int], dict]:
    with PIL.Image.open(path) as gif:
        info = dict(gif.info)
        frames, durations = [], []
        for index in range(gif.n_frames):
            gif.seek(index)
            frames.append(np.asarray(gif.convert("RGB")))
            durations.append(gif.info["duration"])
    return np.stack(frames), durations, info


def files_in(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))  # includes hidden temporary files


# ------------------------------------------------------------------------------------------- mp4

VIDEO = gradient_video()
INPUT_FORMS = {
    "pil_list": lambda: [PIL.Image.fromarray(frame) for frame in VIDEO],
    "uint8_array": lambda: VIDEO.copy(),
    "array_list": lambda: list(VIDEO),
    "float_array": lambda: VIDEO.astype(np.float32) / 255.0,
    "batch_of_one_array": lambda: VIDEO[None].astype(np.float64) / 255.0,
    "batch_of_one_list": lambda: [[PIL.Image.fromarray(frame) for frame in VIDEO]],
    "torch_tensor": lambda: torch.from_numpy(VIDEO).float() / 255.0,
}


@pytest.mark.parametrize("form", sorted(INPUT_FORMS))
@pytest.mark.parametrize("fps", [7, 8])
def test_export_to_video_reads_back(tmp_path, form, fps):
    target = tmp_path / "clip.mp4"
    returned = media.export_to_video(INPUT_FORMS[form](), target, fps=fps)
    assert returned == str(target)
    video = read_mp4(returned)
    assert video["codec"] == "h264" and video["pix_fmt"] == "yuv420p"
    assert (video["width"], video["height"]) == (WIDTH, HEIGHT)
    assert video["frames"].shape == VIDEO.shape
    assert video["rate"] == fps
    error = np.abs(video["frames"].astype(np.float64) - VIDEO).mean()
    assert error < 3.0, f"mean abs error {error:.2f} of 255"
    assert files_in(tmp_path) == ["clip.mp4"]  # no temporary file left beside it


def test_export_to_video_fractional_fps_is_exact(tmp_path):
    path = media.export_to_video(VIDEO, tmp_path / "ntsc.mp4", fps=30000 / 1001)
    assert read_mp4(path)["rate"] == Fraction(30000, 1001)


def test_export_to_video_without_path_makes_a_temporary_mp4():
    path = media.export_to_video(VIDEO, fps=7)
    try:
        assert path.endswith(".mp4") and read_mp4(path)["frames"].shape == VIDEO.shape
    finally:
        os.remove(path)


def test_export_to_video_pads_odd_sizes_by_repeating_the_edge(tmp_path):
    odd = gradient_video(frames=3, height=33, width=47)
    video = read_mp4(media.export_to_video(odd, tmp_path / "odd.mp4"))
    assert (video["width"], video["height"]) == (48, 34)
    padded = np.pad(odd, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge").astype(np.float64)
    assert np.abs(video["frames"] - padded).mean() < 3.0


def test_export_to_video_quality_controls_compression(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    sizes = {}
    for name, options in {"best": {"crf": 0}, "default": {}, "worst": {"quality": 0}}.items():
        path = media.export_to_video(noise, tmp_path / f"{name}.mp4", **options)
        sizes[name] = os.path.getsize(path)
    assert sizes["best"] > sizes["default"] > sizes["worst"]


def test_float_frames_are_clipped_and_rounded():
    frame = np.array([[[-0.5, 0.2, 1.7], [0.7 / 255, 254.6 / 255, 1.0]]], dtype=np.float32)
    (converted,) = media.frames_as_uint8(frame[None])
    np.testing.assert_array_equal(converted, [[[0, 51, 255], [1, 255, 255]]])
    assert converted.dtype == np.uint8


def test_batch_of_two_videos_is_refused_and_writes_nothing(tmp_path):
    for batch in (np.stack([VIDEO, VIDEO]), [list(VIDEO), list(VIDEO)]):
        with pytest.raises(ValueError, match=r"batch of 2 videos.*frames\[0\]"):
            media.export_to_video(batch, tmp_path / "clip.mp4")
    assert files_in(tmp_path) == []


@pytest.mark.parametrize(
    ("frames", "error", "message"),
    [
        ([], ValueError, "no frames"),
        ([VIDEO[0], VIDEO[0, :40]], ValueError, "same size.*frame 1"),
        (np.zeros((2, 8, 8, 4), np.uint8), ValueError, r"\[H, W, 3\]"),
        (np.zeros((2, 3, 8, 8), np.uint8), ValueError, "channels first"),
        (np.zeros((8, 8, 3), np.uint8), ValueError, r"\[F, H, W, 3\]"),
        (np.zeros((2, 8, 8, 3), np.int64), TypeError, "dtype int64"),
        (np.full((2, 8, 8, 3), np.nan, np.float32), ValueError, "NaN"),
        (PIL.Image.fromarray(VIDEO[0]), TypeError, "video_frames"),
        ([VIDEO[0], "frame.png"], TypeError, "frame 1"),
    ],
)
def test_export_to_video_rejects_bad_frames(tmp_path, frames, error, message):
    with pytest.raises(error, match=message):
        media.export_to_video(frames, tmp_path / "clip.mp4")
    assert files_in(tmp_path) == []


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"fps": 0}, ValueError, "fps"),
        ({"fps": -7}, ValueError, "fps"),
        ({"fps": float("nan")}, ValueError, "fps"),
        ({"fps": "7"}, TypeError, "fps"),
        ({"crf": 52}, ValueError, "crf"),
        ({"quality": 11}, ValueError, "quality"),
    ],
)
def test_export_to_video_rejects_bad_options(tmp_path, options, error, message):
    with pytest.raises(error, match=message):
        media.export_to_video(VIDEO, tmp_path / "clip.mp4", **options)
    assert files_in(tmp_path) == []


def test_export_to_video_needs_an_existing_folder(tmp_path):
    missing = tmp_path / "not_there"
    with pytest.raises(FileNotFoundError, match="not_there"):
        media.export_to_video(VIDEO, missing / "clip.mp4")
    with pytest.raises(ValueError, match="is a folder"):
        media.export_to_video(VIDEO, tmp_path)
    with pytest.raises(TypeError, match="output_video_path"):
        media.export_to_video(VIDEO, 42)


def fail_on_second_frame(monkeypatch):
    """Make the frame conversion feeding the encoder raise once one frame has been encoded."""
    real, calls = media._rgb_frame, []

    def convert(frame):
        calls.append(frame)
        if len(calls) == 2:
            raise RuntimeError("encoder failed")
        return real(frame)

    monkeypatch.setattr(media, "_rgb_frame", convert)
    return calls


def fail_after_encoding(monkeypatch, folder: Path):
    """Encode every frame, then raise; returns the files (with sizes) present at that moment."""
    real, seen = media._encode, {}

    def encode_then_fail(container, stream, frames):
        real(container, stream, frames)
        seen.update({name: os.path.getsize(folder / name) for name in files_in(folder)})
        raise RuntimeError("encoder failed")

    monkeypatch.setattr(media, "_encode", encode_then_fail)
    return seen


def test_failure_after_one_frame_leaves_no_file(tmp_path, monkeypatch):
    calls = fail_on_second_frame(monkeypatch)
    with pytest.raises(RuntimeError, match="encoder failed"):
        media.export_to_video(VIDEO, tmp_path / "clip.mp4")
    assert len(calls) == 2  # it did fail mid-write, after encoding one frame
    assert files_in(tmp_path) == []


def test_failure_removes_the_partial_file_and_keeps_the_existing_one(tmp_path, monkeypatch):
    target = tmp_path / "clip.mp4"
    good = media.export_to_video(VIDEO[:2], target, fps=7)
    before = Path(good).read_bytes()
    seen = fail_after_encoding(monkeypatch, tmp_path)
    with pytest.raises(RuntimeError, match="encoder failed"):
        media.export_to_video(VIDEO, target, fps=8)
    partial = [name for name in seen if name.startswith(".clip.mp4.tmp-") and name.endswith(".mp4")]
    assert len(partial) == 1 and seen[partial[0]] > 0  # a half-written file did exist...
    assert files_in(tmp_path) == ["clip.mp4"]  # ...and is gone
    assert target.read_bytes() == before


@pytest.mark.parametrize("export", [media.export_to_video, media.export_to_gif])
def test_failure_without_path_leaves_no_temporary_file(tmp_path, monkeypatch, export):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen = fail_after_encoding(monkeypatch, tmp_path)
    with pytest.raises(RuntimeError, match="encoder failed"):
        export(VIDEO)
    assert len(seen) == 2  # the placeholder for the returned path and the partial file
    assert files_in(tmp_path) == []


def test_load_video_round_trip(tmp_path):
    path = media.export_to_video(VIDEO, tmp_path / "clip.mp4", crf=0)
    frames = media.load_video(path)
    assert len(frames) == FRAMES and frames[0].mode == "RGB" and frames[0].size == (WIDTH, HEIGHT)
    assert np.abs(np.stack([np.asarray(f) for f in frames]).astype(float) - VIDEO).mean() < 2.0
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        media.load_video(tmp_path / "missing.mp4")
    (tmp_path / "notes.txt").write_text("not a video")
    with pytest.raises(ValueError, match="notes.txt"):
        media.load_video(tmp_path / "notes.txt")


# ------------------------------------------------------------------------------------------- gif


def blocks(colour_a, colour_b) -> np.ndarray:
    """A 20x30 frame: left two thirds colour_a, the rest colour_b."""
    frame = np.empty((20, 30, 3), np.uint8)
    frame[:, :20], frame[:, 20:] = colour_a, colour_b
    return frame


def test_export_to_gif_keeps_identical_consecutive_frames(tmp_path):
    red, green, blue, white = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
    a, b, c = blocks(red, green), blocks(blue, white), blocks(green, blue)
    video = np.stack([a, a, a, b, b, c])
    path = media.export_to_gif([PIL.Image.fromarray(f) for f in video], tmp_path / "anim.gif")
    frames, durations, info = read_gif(path)
    assert info["loop"] == 0
    np.testing.assert_array_equal(frames, video)  # few colours: the palette is exact
    assert durations == [100] * 6  # default fps 10
    assert files_in(tmp_path) == ["anim.gif"]


@pytest.mark.parametrize("fps", [7, 8, 12.5, 24])
def test_export_to_gif_frame_durations_follow_fps(tmp_path, fps):
    path = media.export_to_gif(VIDEO / 255.0, tmp_path / "anim.gif", fps=fps)
    frames, durations, _ = read_gif(path)
    assert frames.shape == VIDEO.shape
    # GIF counts centiseconds: each delay is 1000/fps ms within 10 ms, and the rounding is
    # carried over, so the whole animation lasts FRAMES/fps within half a centisecond.
    assert all(abs(d - 1000 / fps) < 10 for d in durations)
    assert abs(sum(durations) - FRAMES * 1000 / fps) <= 5


def test_export_to_gif_pixels_match_diffusers(tmp_path):
    # Same quantizer as Pillow's gif writer, which diffusers uses, so the same palette and pixels.
    images = [PIL.Image.fromarray(frame) for frame in VIDEO]
    ours, _, _ = read_gif(media.export_to_gif(images, tmp_path / "ours.gif", fps=7))
    theirs, _, _ = read_gif(diffusers_export_to_gif(images, str(tmp_path / "theirs.gif"), fps=7))
    assert ours.shape == theirs.shape == VIDEO.shape
    np.testing.assert_array_equal(ours, theirs)


def test_export_to_gif_validates(tmp_path):
    with pytest.raises(ValueError, match="at most 100"):
        media.export_to_gif(VIDEO, tmp_path / "anim.gif", fps=120)
    with pytest.raises(ValueError, match="batch of 2 videos"):
        media.export_to_gif(np.stack([VIDEO, VIDEO]), tmp_path / "anim.gif")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        media.export_to_gif(VIDEO, tmp_path / "nowhere" / "anim.gif")
    assert files_in(tmp_path) == []


# ------------------------------------------------------------------------------------------ png


def test_export_to_frames_writes_numbered_pngs(tmp_path):
    folder = tmp_path / "frames"
    paths = media.export_to_frames(VIDEO[None], folder)
    assert [os.path.basename(p) for p in paths] == [f"frame_{i:04d}.png" for i in range(FRAMES)]
    assert files_in(folder) == [os.path.basename(p) for p in paths]
    for path, expected in zip(paths, VIDEO):
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(path)), expected)
    with pytest.raises(FileNotFoundError, match="missing_parent"):
        media.export_to_frames(VIDEO, tmp_path / "missing_parent" / "frames")


# ----------------------------------------------------------------------------------- load_image


def save(tmp_path: Path, name: str, image: PIL.Image.Image, **options) -> Path:
    path = tmp_path / name
    image.save(path, **options)
    return path


def test_load_image_from_path_and_pil(tmp_path):
    picture = PIL.Image.fromarray(VIDEO[0])
    path = save(tmp_path, "picture.png", picture)
    for source in (str(path), path):
        loaded = media.load_image(source)
        assert loaded.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(loaded), VIDEO[0])
    passed = media.load_image(picture)
    np.testing.assert_array_equal(np.asarray(passed), VIDEO[0])


def test_load_image_applies_exif_orientation(tmp_path):
    stored = blocks((255, 0, 0), (0, 0, 255))  # [20, 30]: red left, blue right
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored pixels must be turned 90° clockwise for display
    path = save(tmp_path, "phone.jpg", PIL.Image.fromarray(stored), exif=exif, quality=95)
    loaded = np.asarray(media.load_image(path)).astype(float)
    upright = np.rot90(stored, k=-1)  # clockwise: red on top, blue below
    assert loaded.shape == upright.shape == (30, 20, 3)
    assert np.abs(loaded - upright).mean() < 4.0


def test_load_image_modes_become_rgb_like_diffusers(tmp_path):
    alpha = np.linspace(0, 255, WIDTH).astype(np.uint8)[None, :, None].repeat(HEIGHT, axis=0)
    rgba = np.concatenate([VIDEO[0], alpha], axis=-1)  # alpha 0 in the first column
    images = {
        "gray.png": PIL.Image.fromarray(VIDEO[0, ..., 1]),
        "rgba.png": PIL.Image.fromarray(rgba, mode="RGBA"),
        "gray_alpha.png": PIL.Image.fromarray(rgba[..., [1, 3]], mode="LA"),
        "palette.png": PIL.Image.fromarray(VIDEO[0]).quantize(16),
        "cmyk.jpg": PIL.Image.fromarray(VIDEO[0]).convert("CMYK"),
    }
    for name, image in images.items():
        path = save(tmp_path, name, image)
        loaded = media.load_image(path)
        assert loaded.mode == "RGB" and loaded.size == (WIDTH, HEIGHT), name
        expected = np.asarray(diffusers_load_image(str(path)))
        np.testing.assert_array_equal(np.asarray(loaded), expected)
    # Alpha is dropped, not composited: a fully transparent pixel keeps its colour.
    without_alpha = np.asarray(media.load_image(tmp_path / "rgba.png"))
    np.testing.assert_array_equal(without_alpha[:, 0], VIDEO[0, :, 0])


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        media.load_image(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("hello, not an image")
    with pytest.raises(ValueError, match="notes.png.*not a readable image"):
        media.load_image(tmp_path / "notes.png")
    whole = (save(tmp_path, "whole.png", PIL.Image.fromarray(VIDEO[0]))).read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="cut.png.*not a readable image"):
        media.load_image(tmp_path / "cut.png")
    with pytest.raises(TypeError, match="`image` must be"):
        media.load_image(VIDEO[0])
    with pytest.raises(ValueError, match="timeout"):
        media.load_image(tmp_path / "whole.png", timeout=0)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow.png":
            time.sleep(1.5)  # longer than the client's timeout
        try:
            super().do_GET()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout test)

    def log_message(self, *args):
        pass  # keep pytest output clean


@pytest.fixture
def local_server(tmp_path):
    """Serve tmp_path on 127.0.0.1 from a thread; yields the base URL."""
    handler = lambda *args: _Handler(*args, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_load_image_from_url(tmp_path, local_server):
    save(tmp_path, "picture.png", PIL.Image.fromarray(VIDEO[0]))
    loaded = media.load_image(f"{local_server}/picture.png")
    np.testing.assert_array_equal(np.asarray(loaded), VIDEO[0])


def test_load_image_url_errors(tmp_path, local_server):
    with pytest.raises(OSError, match=r"/absent.png.*404"):
        media.load_image(f"{local_server}/absent.png")
    save(tmp_path, "slow.png", PIL.Image.fromarray(VIDEO[0]))
    with pytest.raises(TimeoutError, match=r"/slow.png.*timed out"):
        media.load_image(f"{local_server}/slow.png", timeout=0.3)
    (tmp_path / "page.html").write_text("<html></html>")
    with pytest.raises(ValueError, match=r"/page.html.*not a readable image"):
        media.load_image(f"{local_server}/page.html")
