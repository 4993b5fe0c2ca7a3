"""Inputs that used to hang, exhaust memory or come out silently wrong (issue 10, "nothing lost,
nothing hangs"): slow and endless URLs, FIFOs and devices as images, absurd image sizes, NaN and
infinite arguments, wrongly typed components, half-written saves, 16-bit and float images."""

from __future__ import annotations

import http.server
import io
import os
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from tests.svd_checkpoint import SMALL_CALL, random_image
from tests.test_cli import vidiff
from vidiff import load_image
from vidiff.pipelines import frames as frames_io
from vidiff.pipelines import svd_preprocessing

I2V_CALL = {**SMALL_CALL, "prompt": "papers in a library"}


# ------------------------------------------------------------------------------ 7. URL images
class _Handler(http.server.BaseHTTPRequestHandler):
    """/png: a small image; /slow: a byte every 0.2 s; /endless: an endless body; /huge: a
    Content-Length of a terabyte. Every response stops after 20 s, so no test can hang on it."""

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def do_GET(self):
        if self.path == "/png":
            body = io.BytesIO()
            random_image(16, 12).save(body, format="PNG")
            return self._send(body.getvalue())
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        if self.path == "/huge":
            self.send_header("Content-Length", str(10**12))
        self.end_headers()
        chunk, pause = (b"\x89", 0.2) if self.path == "/slow" else (b"\0" * 65536, 0.0)
        stop = time.monotonic() + 20
        try:
            while time.monotonic() < stop:
                self.wfile.write(chunk)
                self.wfile.flush()
                time.sleep(pause)
        except OSError:  # the client gave up: what the tests want
            pass

    def _send(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_url_still_loads(server):
    assert load_image(f"{server}/png").size == (16, 12)


def test_url_trickling_bytes_hits_the_total_deadline(server):
    with pytest.raises(TimeoutError, match=r"/slow.*total_timeout"):
        load_image(f"{server}/slow", timeout=5, total_timeout=1.0)


def test_url_endless_body_hits_the_size_cap(server):
    with pytest.raises(ValueError, match=r"/endless.*max_bytes"):
        load_image(f"{server}/endless", max_bytes=1_000_000)


def test_url_announced_size_over_the_cap_is_refused_at_once(server):
    with pytest.raises(ValueError, match=r"/huge.*max_bytes"):
        load_image(f"{server}/huge", max_bytes=1_000_000, total_timeout=30)


@pytest.mark.parametrize("limits", [dict(total_timeout=0), dict(max_bytes=0), dict(max_pixels=-1)])
def test_bad_limits_are_named(limits):
    with pytest.raises(ValueError, match=next(iter(limits))):
        load_image(random_image(), **limits)


# ------------------------------------------------------------------------ 8. FIFOs and devices
@pytest.fixture
def fifo(tmp_path):
    """A FIFO named like an image; a watchdog opens its writing end after 10 s, so a reader that
    blocks on it gets EOF instead of hanging the test run."""
    path = tmp_path / "img.png"
    os.mkfifo(path)
    done = threading.Event()

    def unblock():
        if not done.wait(10):
            with open(path, "wb"):
                pass

    threading.Thread(target=unblock, daemon=True).start()
    yield path
    done.set()


def test_fifo_is_refused_by_load_image(fifo):
    with pytest.raises(ValueError, match="regular file"):
        load_image(fifo)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_character_device_is_refused_by_load_image():
    with pytest.raises(ValueError, match="regular file"):
        load_image("/dev/zero")


def test_fifo_is_a_usage_error_in_the_cli(fifo, tiny_svd):
    result = vidiff("svd", fifo.name, "--model", tiny_svd[0], cwd=fifo.parent, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "regular file" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------------ 9. absurd image sizes
def _png(path: Path, width: int, height: int) -> Path:
    PIL.Image.new("RGB", (width, height), (90, 120, 30)).save(path)
    return path


ABSURD = [PIL.Image.new("RGB", (1, 100_000)), PIL.Image.new("RGB", (4, 4)), np.zeros((2, 600, 3), np.uint8),
          torch.zeros(3, 7, 700)]


@pytest.mark.parametrize("image", ABSURD, ids=["1x100000", "4x4", "array-2x600", "tensor-7x700"])
def test_absurd_sizes_are_refused_by_svd(vidiff_svd, image):
    with pytest.raises(ValueError, match="`image`"):
        vidiff_svd(image, **SMALL_CALL)


@pytest.mark.parametrize("image", ABSURD, ids=["1x100000", "4x4", "array-2x600", "tensor-7x700"])
def test_absurd_sizes_are_refused_by_i2vgen_xl(vidiff_i2vgen_xl, image):
    with pytest.raises(ValueError, match="`image`"):
        vidiff_i2vgen_xl(image=image, **I2V_CALL)


def test_absurd_size_is_a_usage_error_before_loading(tmp_path):
    _png(tmp_path / "line.png", 10, 20_000)
    # A model that does not exist: the image must be refused first.
    result = vidiff("i2vgen-xl", "line.png", "a prompt", "--model", tmp_path / "no-model", cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "IMAGE" in result.stderr and "aspect ratio" in result.stderr and "Traceback" not in result.stderr


def _record_resizes(monkeypatch) -> list[tuple[int, int]]:
    sizes = []
    original = PIL.Image.Image.resize

    def resize(self, size, *args, **kwargs):
        sizes.append(tuple(size))
        return original(self, size, *args, **kwargs)

    monkeypatch.setattr(PIL.Image.Image, "resize", resize)
    return sizes


def test_cover_crop_never_builds_an_intermediate_larger_than_the_target(monkeypatch):
    sizes = _record_resizes(monkeypatch)
    (out,) = frames_io.cover_and_center_crop([PIL.Image.new("RGB", (16, 1024))], 1280, 704)
    assert out.size == (1280, 704)
    assert max(w * h for w, h in sizes) <= 1280 * 704


@pytest.mark.parametrize("size,target", [((80, 56), (48, 32)), ((56, 80), (48, 48)), ((33, 17), (64, 40)), ((301, 97), (96, 96))])
def test_cover_crop_keeps_the_old_pixels(size, target):
    """The cropped resize gives exactly what scaling the whole image, then cropping, gave."""
    image = random_image(*size, seed=3)
    width, height = target
    scale = min(image.width / width, image.height / height)
    scaled = image.resize((round(image.width // scale), round(image.height // scale)), resample=PIL.Image.Resampling.BOX)
    left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
    expected = np.asarray(scaled.crop((left, top, left + width, top + height)))
    (out,) = frames_io.cover_and_center_crop([image], width, height)
    assert np.array_equal(np.asarray(out), expected)


def test_svd_shrinks_a_huge_image_before_any_float_copy(vidiff_svd, monkeypatch):
    seen = []
    original = svd_preprocessing.svd_clip_input
    monkeypatch.setattr(svd_preprocessing, "svd_clip_input", lambda p, x: seen.append(x.shape) or original(p, x))
    monkeypatch.setattr(frames_io, "CLIP_SOURCE_MAX_PIXELS", 300 * 300)
    frames = vidiff_svd(PIL.Image.new("RGB", (1000, 700), (10, 200, 40)), **SMALL_CALL).frames
    assert frames.shape[0] == 1 and frames.shape[2:] == (32, 48, 3)
    (shape,) = seen
    assert shape[-2] * shape[-1] <= 300 * 300 and shape[-1] / shape[-2] == pytest.approx(1000 / 700, rel=0.02)


def test_load_image_caps_pixels_without_pillow_warnings(tmp_path, monkeypatch):
    path = _png(tmp_path / "big.png", 200, 100)
    with pytest.raises(ValueError, match=r"200x100 = 20000 pixels.*max_pixels=19999"):
        load_image(path, max_pixels=19_999)
    # Pillow warns above its MAX_IMAGE_PIXELS (the CLI would print that) and refuses above twice it.
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 15_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(path).size == (200, 100)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 5_000)
    with pytest.raises(ValueError, match="too many pixels"):
        load_image(path)


# ------------------------------------------------------------------------------ 14. Python API
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("image", [np.full((32, 48, 3), NAN, np.float32), torch.full((3, 32, 48), INF)], ids=["nan-array", "inf-tensor"])
def test_non_finite_images_are_refused(vidiff_svd, vidiff_i2vgen_xl, image):
    with pytest.raises(ValueError, match="`image`.*(NaN|infin)"):
        vidiff_svd(image, **SMALL_CALL)
    with pytest.raises(ValueError, match="`image`.*(NaN|infin)"):
        vidiff_i2vgen_xl(image=image, **I2V_CALL)


@pytest.mark.parametrize(
    "image,hint", [(np.full((32, 48, 3), 200.0, np.float32), "255"), (torch.full((3, 32, 48), -0.9), r"\[-1, 1\]")],
    ids=["0-255-floats", "signed-tensor"],
)
def test_float_images_outside_unit_range_are_refused(vidiff_svd, image, hint):
    with pytest.raises(ValueError, match=f"`image`.*{hint}"):
        vidiff_svd(image, **SMALL_CALL)


def test_sixteen_bit_and_float_images_are_scaled(tmp_path):
    ramp = np.array([[0, 257 * 128, 65535] * 4] * 8, dtype=np.uint16)  # [8, 12]
    path = tmp_path / "deep.png"
    PIL.Image.fromarray(ramp).save(path)
    assert PIL.Image.open(path).mode.startswith("I")
    assert np.asarray(load_image(path))[0, :3, 0].tolist() == [0, 128, 255]
    pixels, _ = frames_io.images_to_tensor(PIL.Image.open(path))
    assert pixels[0, :, 0, :3].numpy() == pytest.approx(np.array([[0.0, 128 / 255, 1.0]] * 3))
    array, _ = frames_io.images_to_tensor(np.stack([ramp] * 3, axis=-1))
    assert array[0, :, 0, :3].numpy() == pytest.approx(np.array([[0.0, 257 * 128 / 65535, 1.0]] * 3))
    floats = PIL.Image.fromarray(np.array([[0.0, 0.5, 1.0] * 4] * 8, dtype=np.float32))
    assert np.asarray(frames_io.images_to_pils(floats)[0])[0, :3, 0].tolist() == [0, 128, 255]
    with pytest.raises(ValueError, match="255"):
        frames_io.images_to_tensor(PIL.Image.fromarray(np.full((8, 12), 180.0, np.float32)))
    from vidiff.image_processing import CLIPImageProcessor

    processor = CLIPImageProcessor()
    assert torch.equal(processor(PIL.Image.open(path)), processor(load_image(path)))


def test_wrongly_typed_component_is_a_type_error_before_loading(tmp_path):
    from vidiff import AnimateDiffPipeline, StableVideoDiffusionPipeline

    missing = tmp_path / "nothing-here"  # loading would fail: the type check must come first
    with pytest.raises(TypeError, match="`unet`.*UNetMotionModel"):
        AnimateDiffPipeline.from_pretrained(missing, unet="foo")
    with pytest.raises(TypeError, match="`vae`.*AutoencoderKLTemporalDecoder.*Linear"):
        StableVideoDiffusionPipeline.from_pretrained(missing, vae=torch.nn.Linear(2, 2))


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_checkpoint_name_is_an_error(name):
    from vidiff import DDIMScheduler, MotionAdapter, StableVideoDiffusionPipeline, UNet2DConditionModel

    for loader in (StableVideoDiffusionPipeline, MotionAdapter, UNet2DConditionModel, DDIMScheduler):
        with pytest.raises(ValueError, match="name_or_path"):
            loader.from_pretrained(name)


def _failing_save(directory, **kwargs):
    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / "half.safetensors").write_bytes(b"partial")
    raise OSError("disk full")


def test_failed_save_leaves_no_new_folder(vidiff_svd, tmp_path, monkeypatch):
    monkeypatch.setattr(vidiff_svd.unet, "save_pretrained", _failing_save)
    with pytest.raises(OSError, match="disk full"):
        vidiff_svd.save_pretrained(tmp_path / "new" / "svd")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_an_existing_checkpoint_as_it_was(vidiff_svd, tmp_path, monkeypatch):
    from vidiff import StableVideoDiffusionPipeline

    target = tmp_path / "svd"
    vidiff_svd.save_pretrained(target)
    (target / "notes.txt").write_text("mine")
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    monkeypatch.setattr(vidiff_svd.unet, "save_pretrained", _failing_save)
    with pytest.raises(OSError, match="disk full"):
        vidiff_svd.save_pretrained(target)
    after = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert after == before and [p.name for p in tmp_path.iterdir()] == ["svd"]
    monkeypatch.undo()
    vidiff_svd.save_pretrained(target)  # saving over it works, and keeps the user's other files
    assert (target / "notes.txt").read_text() == "mine"
    StableVideoDiffusionPipeline.from_pretrained(target)
