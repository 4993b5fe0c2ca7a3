"""load_video: what export_to_video / export_to_gif / export_to_frames write reads back (frame count,
size, pixels), in the container formats users bring (mp4, webm, mov), from a folder of frames and a
URL; stride then max_frames; resizing; and clear errors for bad input."""

from __future__ import annotations

import http.server
import os
import tempfile
import threading
import time
from pathlib import Path

import av
import numpy as np
import PIL.Image
import pytest

from vidiff import load_video, media

FRAMES, HEIGHT, WIDTH = 7, 32, 48


def numbered_video(frames: int = FRAMES, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """[F, H, W, 3] uint8: frame k is a flat colour whose red is 30·k, so each frame says its index."""
    video = np.zeros((frames, height, width, 3), dtype=np.uint8)
    for index in range(frames):
        video[index] = (30 * index, 200 - 20 * index, 90)
    return video


VIDEO = numbered_video()


def indices(frames: list[PIL.Image.Image]) -> list[int]:
    """The index each frame shows (its mean red / 30, rounded), to check which frames were kept."""
    return [round(float(np.asarray(frame)[..., 0].mean()) / 30) for frame in frames]


def as_array(frames: list[PIL.Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(frame) for frame in frames]).astype(float)


def write_with_pyav(path: Path, codec: str, video: np.ndarray = VIDEO, rate: int = 8) -> Path:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], "yuv420p"
        for index, array in enumerate(video):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


# ----------------------------------------------------------------------------------- round trips


def test_mp4_round_trip_keeps_count_size_and_pixels(tmp_path):
    path = media.export_to_video(VIDEO, tmp_path / "clip.mp4", fps=8, crf=0)
    frames, fps = load_video(path, return_fps=True)
    assert len(frames) == FRAMES and all(f.mode == "RGB" and f.size == (WIDTH, HEIGHT) for f in frames)
    assert np.abs(as_array(frames) - VIDEO).max() <= 3  # lossless yuv420p: only colour rounding
    assert indices(frames) == list(range(FRAMES))
    assert fps == pytest.approx(8.0)


@pytest.mark.parametrize("name, codec", [("clip.webm", "libvpx-vp9"), ("clip.mov", "libx264")])
def test_webm_and_mov_decode(tmp_path, name, codec):
    path = write_with_pyav(tmp_path / name, codec)
    frames = load_video(str(path))
    assert len(frames) == FRAMES and frames[0].size == (WIDTH, HEIGHT)
    assert indices(frames) == list(range(FRAMES))


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_display_rotation_is_applied(tmp_path, degrees):
    """A phone's portrait clip: landscape frames plus a display matrix, which FFmpeg applies."""
    video = np.zeros((3, 16, 32, 3), dtype=np.uint8)
    video[:, :8, :8] = 255  # a white block in the top-left corner
    path = tmp_path / "portrait.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=8, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = 32, 16, "yuv420p"
        stream.set_display_rotation(degrees)  # counter-clockwise
        for index, array in enumerate(video):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    frames = load_video(path)
    expected = np.rot90(video, k=degrees // 90, axes=(1, 2))  # np.rot90 turns counter-clockwise
    assert frames[0].size == (expected.shape[2], expected.shape[1])
    assert np.abs(as_array(frames) - expected).max() <= 3


def test_gif_round_trip_gives_rgb_frames(tmp_path):
    path = media.export_to_gif(VIDEO, tmp_path / "clip.gif", fps=5)
    frames, fps = load_video(path, return_fps=True)
    assert len(frames) == FRAMES and all(f.mode == "RGB" and f.size == (WIDTH, HEIGHT) for f in frames)
    # Flat colours survive a palette exactly.
    np.testing.assert_array_equal(as_array(frames), VIDEO)
    assert fps == pytest.approx(5.0)


def test_gif_is_recognised_by_content_not_name(tmp_path):
    path = media.export_to_gif(VIDEO, tmp_path / "clip.gif")
    os.rename(path, tmp_path / "clip.bin")
    np.testing.assert_array_equal(as_array(load_video(tmp_path / "clip.bin")), VIDEO)


def test_frame_folder_round_trip_in_natural_order(tmp_path):
    media.export_to_frames(VIDEO, tmp_path / "frames")
    frames = load_video(tmp_path / "frames")
    np.testing.assert_array_equal(as_array(frames), VIDEO)
    # Unpadded numbers sort as numbers (2 before 10), and non-image or hidden files are ignored.
    folder = tmp_path / "unpadded"
    folder.mkdir()
    video = numbered_video(frames=8)
    for index in range(8):
        PIL.Image.fromarray(video[index]).save(folder / f"f{index * 5}.png")
    (folder / "notes.txt").write_text("sidecar")
    PIL.Image.fromarray(video[7]).save(folder / ".hidden.png")
    assert indices(load_video(folder)) == list(range(8))


# ---------------------------------------------------------------------------- sampling, resizing


@pytest.mark.parametrize("kind", ["mp4", "gif", "folder"])
@pytest.mark.parametrize(
    "stride, max_frames, expected",
    [(1, None, [0, 1, 2, 3, 4, 5, 6]), (2, None, [0, 2, 4, 6]), (1, 3, [0, 1, 2]),
     (2, 3, [0, 2, 4]), (3, 2, [0, 3]), (4, 5, [0, 4]), (10, None, [0])],
)
def test_stride_first_then_max_frames(tmp_path, kind, stride, max_frames, expected):
    if kind == "mp4":
        source = media.export_to_video(VIDEO, tmp_path / "clip.mp4", crf=0)
    elif kind == "gif":
        source = media.export_to_gif(VIDEO, tmp_path / "clip.gif")
    else:
        media.export_to_frames(VIDEO, tmp_path / "frames")
        source = tmp_path / "frames"
    frames = load_video(source, stride=stride, max_frames=max_frames)
    assert indices(frames) == expected


def test_fps_follows_stride(tmp_path):
    path = media.export_to_video(VIDEO, tmp_path / "clip.mp4", fps=12)
    assert load_video(path, stride=3, return_fps=True)[1] == pytest.approx(4.0)
    media.export_to_frames(VIDEO, tmp_path / "frames")
    with pytest.raises(ValueError, match="frame rate"):
        load_video(tmp_path / "frames", return_fps=True)


def test_size_resizes_with_lanczos(tmp_path):
    gradient = np.broadcast_to(np.linspace(0, 255, WIDTH, dtype=np.uint8)[None, :, None], (HEIGHT, WIDTH, 3))
    video = np.stack([gradient] * 3)
    path = media.export_to_gif(video, tmp_path / "gradient.gif")
    frames = load_video(path, size=(20, 12))
    assert [f.size for f in frames] == [(20, 12)] * 3
    expected = load_video(path)[0].resize((20, 12), PIL.Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(np.asarray(frames[0]), np.asarray(expected))


def test_folder_of_mixed_sizes_needs_size(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    PIL.Image.fromarray(VIDEO[0]).save(folder / "a1.png")
    PIL.Image.fromarray(VIDEO[1, :16]).save(folder / "a2.png")
    with pytest.raises(ValueError, match="differ in size.*size="):
        load_video(folder)
    assert [f.size for f in load_video(folder, size=(24, 16))] == [(24, 16)] * 2


def test_convert_method_gets_the_final_frames(tmp_path):
    path = media.export_to_gif(VIDEO, tmp_path / "clip.gif")
    seen = []

    def grey(frames):
        seen.append([(f.mode, f.size) for f in frames])
        return [f.convert("L") for f in frames]

    frames = load_video(path, grey, stride=2, size=(24, 16))
    assert seen == [[("RGB", (24, 16))] * 4]
    assert [f.mode for f in frames] == ["L"] * 4


# --------------------------------------------------------------------------------------- errors


def test_missing_unreadable_and_empty_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="`video`.*missing.mp4"):
        load_video(tmp_path / "missing.mp4")
    (tmp_path / "notes.txt").write_text("not a video")
    with pytest.raises(ValueError, match="notes.txt.*not a readable video"):
        load_video(tmp_path / "notes.txt")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.mp4"):
        load_video(tmp_path / "empty.mp4")
    (tmp_path / "broken.gif").write_bytes(b"GIF89a" + b"\x00" * 5)
    with pytest.raises(ValueError, match="broken.gif.*not a readable gif"):
        load_video(tmp_path / "broken.gif")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="nothing.*holds no frames"):
        load_video(tmp_path / "nothing")
    with pytest.raises(TypeError, match="`video` must be a path"):
        load_video(VIDEO)


def test_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ValueError, match="not a regular file"):
        load_video(tmp_path / "pipe")


@pytest.mark.parametrize(
    "options, error, message",
    [({"stride": 0}, ValueError, "stride"), ({"stride": 1.5}, TypeError, "stride"),
     ({"max_frames": 0}, ValueError, "max_frames"), ({"max_frames": True}, TypeError, "max_frames"),
     ({"size": (0, 8)}, ValueError, "size"), ({"size": 64}, TypeError, "size"),
     ({"timeout": 0}, ValueError, "timeout"), ({"max_pixels": -1}, ValueError, "max_pixels")],
)
def test_invalid_options_name_the_argument(tmp_path, options, error, message):
    path = media.export_to_gif(VIDEO, tmp_path / "clip.gif")
    with pytest.raises(error, match=message):
        load_video(path, **options)


@pytest.mark.parametrize("kind", ["mp4", "gif", "folder"])
def test_pixel_caps_refuse_large_frames_and_totals(tmp_path, kind):
    if kind == "mp4":
        source = media.export_to_video(VIDEO, tmp_path / "clip.mp4")
    elif kind == "gif":
        source = media.export_to_gif(VIDEO, tmp_path / "clip.gif")
    else:
        media.export_to_frames(VIDEO, tmp_path / "frames")
        source = tmp_path / "frames"
    with pytest.raises(ValueError, match="max_pixels"):
        load_video(source, max_pixels=WIDTH * HEIGHT - 1)
    assert len(load_video(source, max_pixels=WIDTH * HEIGHT)) == FRAMES
    with pytest.raises(ValueError, match="max_total_pixels"):
        load_video(source, max_total_pixels=3 * WIDTH * HEIGHT - 1, max_frames=3)
    assert len(load_video(source, max_total_pixels=3 * WIDTH * HEIGHT, max_frames=3)) == 3


# ------------------------------------------------------------------------------------------ URLs


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow.mp4":
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
    handler = lambda *args: _Handler(*args, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_downloads_then_decodes(tmp_path, local_server, monkeypatch):
    media.export_to_video(VIDEO, tmp_path / "clip.mp4", crf=0)
    media.export_to_gif(VIDEO, tmp_path / "clip.gif")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(downloads))  # where the download is staged
    frames = load_video(f"{local_server}/clip.mp4", stride=2)
    assert indices(frames) == [0, 2, 4, 6] and frames[0].size == (WIDTH, HEIGHT)
    np.testing.assert_array_equal(as_array(load_video(f"{local_server}/clip.gif")), VIDEO)
    (tmp_path / "page.html").write_text("<html></html>")
    with pytest.raises(ValueError, match=r"page.html.*not a readable video"):
        load_video(f"{local_server}/page.html")
    assert list(downloads.iterdir()) == []  # the temporary files are gone, after failures too


def test_url_errors_and_byte_cap(tmp_path, local_server):
    path = media.export_to_video(VIDEO, tmp_path / "clip.mp4")
    with pytest.raises(OSError, match=r"load_video.*absent.mp4.*404"):
        load_video(f"{local_server}/absent.mp4")
    with pytest.raises(ValueError, match=r"load_video.*max_bytes"):
        load_video(f"{local_server}/clip.mp4", max_bytes=os.path.getsize(path) - 1)
    os.link(path, tmp_path / "slow.mp4")
    with pytest.raises(TimeoutError, match=r"load_video.*slow.mp4.*timed out"):
        load_video(f"{local_server}/slow.mp4", timeout=0.3)


def test_gif_frames_match_diffusers_converted_to_rgb(tmp_path):
    """diffusers reads gifs with Pillow too but leaves frames in their own modes (the first is
    palette "P"); converted to RGB they must be our frames, pixel for pixel."""
    from diffusers.utils import load_video as diffusers_load_video

    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    video = np.stack([np.stack([(rows * 7 + k * 40) % 256, (cols * 5) % 256, (rows * cols + k) % 256], -1)
                      for k in range(4)]).astype(np.uint8)  # many colours: real palettes per frame
    path = media.export_to_gif(video, tmp_path / "busy.gif")
    theirs = [frame.convert("RGB") for frame in diffusers_load_video(path)]
    ours = load_video(path)
    assert len(ours) == len(theirs) == 4
    np.testing.assert_array_equal(as_array(ours), as_array(theirs))
