"""The page at ``/`` in a real browser: headless Debian ``chromium`` driven by Playwright, against a
real ``vidiff serve`` subprocess (tiny demo Wan and SVD checkpoints, started with a token so that the
page's token handling — static files, fetch, EventSource, <video> — is exercised on every request).

The page submits a tiny Wan job, its progress bar reaches 100 %, the finished video plays in the
gallery, and "run again" makes a second one; an image dropped on the page makes an SVD video; a
running job is cancelled; an API error shows next to the form; a 360 px screen needs no sideways
scrolling. Screenshots are saved under ``test-artifacts/`` in the
repository root (git-ignored); the test prints where. Chromium must be installed (``bash .ci/run``
installs it): without it these tests fail, they do not skip.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import sync_playwright

from tests.server_process import Server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
TOKEN = "page-test-token-1234"
TINY_JOB = {"num_frames": "5", "num_inference_steps": "2", "height": "64", "width": "96", "seed": "0"}
WAIT_MS = 120_000  # generous: the first job loads the pipeline on two busy cores

# Records, from before the page's own scripts run, every value any <progress> bar takes (as a
# fraction of its max) and every progress text shown: the test sees what a user would have seen,
# even when a bar is at 100 % for only a moment before its card moves to the gallery.
WATCH_PROGRESS = """
window.progressSeen = [];
window.progressTexts = [];
new MutationObserver((records) => {
  for (const record of records) {
    const node = record.target.nodeType === 1 ? record.target : record.target.parentElement;
    if (node && node.tagName === "PROGRESS" && node.hasAttribute("value")) {
      window.progressSeen.push(node.value / node.max);
    }
    if (node && node.classList && node.classList.contains("progress-text")) window.progressTexts.push(node.textContent);
  }
}).observe(document, {subtree: true, childList: true, characterData: true, attributes: true, attributeFilter: ["value"]});
"""

# A <video> that is really playing: decoded enough to show a frame, not paused, no error, and
# presenting new frames (its count of decoded frames grew since an earlier poll).
PLAYING = """
(selector) => {
  window.framesAtFirstLook = window.framesAtFirstLook || new Map();
  for (const v of document.querySelectorAll(selector)) {
    if (v.readyState < 2 || v.paused || v.error) continue;
    const frames = v.getVideoPlaybackQuality().totalVideoFrames;
    if (!window.framesAtFirstLook.has(v)) window.framesAtFirstLook.set(v, frames);
    else if (frames > window.framesAtFirstLook.get(v)) {
      return {width: v.videoWidth, height: v.videoHeight, src: v.currentSrc};
    }
  }
  return null;
}
"""


@pytest.fixture(scope="module")
def server(demo_checkpoints, tmp_path_factory):
    """A real server on a free loopback port (tiny Wan and SVD as "tiny-wan", "tiny-svd"), with a token."""
    models = ["--model", f"tiny-wan={demo_checkpoints.wan}", "--model", f"tiny-svd={demo_checkpoints.svd}"]
    running = Server.start(tmp_path_factory.mktemp("page-server") / "data", *models, token=TOKEN)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium (never a downloaded one: CI machines have no route to Playwright's CDN)."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"chromium is not installed ({CHROMIUM} missing): `apt-get install chromium` "
                    "(`bash .ci/run` and `make browser` do)")
    with sync_playwright() as playwright:
        # Chromium's sandbox cannot start as root (CI containers): it must be switched off there.
        arguments = ["--no-sandbox"] if os.geteuid() == 0 else []
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=arguments)
        yield chromium
        chromium.close()


def _save(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def _open(browser, server: Server, width: int, height: int):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(WAIT_MS)
    page.add_init_script(WATCH_PROGRESS)
    page.goto(f"{server.base}/?token={TOKEN}")
    page.wait_for_selector("#pipeline option[value=wan]", state="attached")
    return page


def _fill_tiny_wan(page, prompt: str) -> None:
    page.select_option("#pipeline", "wan")
    page.select_option("#model", "tiny-wan")
    page.fill("#prompt", prompt)
    for field, value in TINY_JOB.items():
        page.fill(f"#{field}", value)


def test_page_makes_a_video_that_plays_in_the_gallery(server, browser):
    page = _open(browser, server, 1280, 900)
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    _fill_tiny_wan(page, "a red ball bouncing")
    page.click("#submit")

    page.wait_for_function("window.progressSeen.some((f) => f >= 1)")
    assert any("/events?token=" in url for url in requested), "the page did not follow the job's event stream"
    assert any("100 %" in text for text in page.evaluate("window.progressTexts"))
    playing = page.wait_for_function(PLAYING, arg="#gallery video", polling=200).json_value()
    assert (playing["width"], playing["height"]) == (96, 64)
    assert "/content" in playing["src"]
    card = page.locator("#gallery .card").first
    assert "a red ball bouncing" in card.inner_text()  # its settings are shown
    assert page.locator("#form-error").is_hidden()
    _save(page, "page-desktop.png")

    # "Run again" posts the same job: a second finished video with the same settings.
    card.locator("button.again").click()
    page.wait_for_function("document.querySelectorAll('#gallery video').length >= 2")
    videos = server.json("GET", "/v1/videos")[1]["videos"]
    assert [v["status"] for v in videos[:2]] == ["succeeded", "succeeded"]
    assert videos[0]["job"] == videos[1]["job"]
    page.close()


def test_page_shows_the_api_error_next_to_the_form(server, browser):
    page = _open(browser, server, 1280, 900)
    _fill_tiny_wan(page, "a bad request")
    page.fill("#num_frames", "0")
    page.click("#submit")
    error = page.locator("#form-error")
    error.wait_for(state="visible")
    assert "--num-frames" in error.inner_text() and "got 0" in error.inner_text()
    assert "invalid" in (page.locator("#num_frames").get_attribute("class") or "")
    page.close()


def test_page_fits_a_phone_screen(server, browser):
    # A finished video with a long unbroken prompt is in the gallery: the widest thing the page shows.
    job = {"pipeline": "wan", "model": "tiny-wan", "prompt": "a" * 300, **TINY_JOB}
    video = server.submit(job)
    assert server.wait(video["id"])["status"] == "succeeded"
    page = _open(browser, server, 360, 740)
    page.wait_for_selector(f"#gallery .card[data-id='{video['id']}'] video")
    widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert widths[0] <= widths[1] == 360, f"horizontal scrolling on a 360 px screen: content {widths[0]} px wide"
    _save(page, "page-phone.png")
    page.close()


def _png(height: int, width: int) -> bytes:
    """A small colour ramp as PNG bytes (what a user would drop on the page)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def test_page_takes_a_dropped_image_and_runs_it_again(server, browser):
    page = _open(browser, server, 1280, 900)
    page.select_option("#pipeline", "svd")
    page.select_option("#model", "tiny-svd")
    assert page.locator("#prompt-field").is_hidden()  # SVD takes no prompt
    # A file dropped on the zone, as a drag from the desktop delivers it.
    dropped = page.evaluate_handle(
        """(bytes) => { const carrier = new DataTransfer();
           carrier.items.add(new File([new Uint8Array(bytes)], "ramp.png", {type: "image/png"})); return carrier; }""",
        list(_png(64, 96)),
    )
    page.dispatch_event("#image-field", "drop", {"dataTransfer": dropped})
    assert page.locator("#image-preview").is_visible()
    for field, value in {**TINY_JOB, "num_frames": "4", "seed": "1"}.items():
        page.fill(f"#{field}", value)
    page.click("#submit")
    card = page.locator("#gallery .card:has(video)", has_text="upload:").first
    card.wait_for()
    assert page.locator("#form-error").is_hidden()

    # "Run again" sends the same job with this tab's copy of the image (the server keeps uploads).
    card.locator("button.again").click()
    page.wait_for_function(
        "[...document.querySelectorAll('#gallery .card.succeeded')]"
        ".filter((card) => card.textContent.includes('upload:')).length >= 2"
    )
    assert page.locator("#form-error").is_hidden()
    first, second = [v for v in server.json("GET", "/v1/videos")[1]["videos"] if v["job"]["pipeline"] == "svd"][:2]
    assert first["status"] == second["status"] == "succeeded" and first["job"] == second["job"]
    assert first["job"]["image"].startswith("upload:")
    page.close()


def test_page_cancels_a_running_job(server, browser):
    page = _open(browser, server, 1280, 900)
    _fill_tiny_wan(page, "a job to cancel")
    page.fill("#num_inference_steps", "5000")  # still running when the button is pressed (it stops at the next step)
    page.click("#submit")
    card = page.locator("#queue .job", has_text="a job to cancel")
    card.locator(".status", has_text="running").wait_for()
    page.wait_for_function("window.progressSeen.some((f) => f > 0 && f < 1)")  # the bar moves while it runs
    card.locator("button.cancel").click()
    page.locator("#gallery .card.cancelled", has_text="a job to cancel").wait_for()
    assert card.count() == 0
    page.close()
