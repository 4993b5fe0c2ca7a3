"""The CLI's outputs: nothing lost, nothing hangs (issue 10).

Mostly unit tests of :mod:`vidiff.cli.outputs` (no subprocess: fast); a few runs of the real CLI
where only a process shows the behaviour (signals, a closed stdout, exit statuses).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.test_cli import SMALL, ok, read_pngs, vidiff
from vidiff.cli import outputs
from vidiff.cli.errors import RunError, UsageError

FRAMES = np.random.default_rng(0).random((2, 3, 16, 16, 3)).astype(np.float32)  # [B, F, H, W, 3]
FPS = 7.0


def write(folder: Path, names: list[str], overwrite: bool = False, videos: int = 1, sidecars=None) -> list[outputs.Target]:
    """Plan and write ``names`` (relative to ``folder``) as a run does."""
    targets = outputs.plan_outputs([str(folder / name) for name in names], videos, overwrite)
    outputs.write_outputs(targets, FRAMES, FPS, sidecars or [{"run": i} for i in range(len(targets))], overwrite)
    return targets


def listing(folder: Path) -> dict[str, bytes | str | None]:
    """Every entry under ``folder`` (hidden ones too) → its bytes (None for folders, its kind for
    anything else: reading a pipe would block)."""
    def content(path: Path) -> bytes | str | None:
        if path.is_dir():
            return None
        return path.read_bytes() if path.is_file() else stat.filemode(path.lstat().st_mode)

    return {str(p.relative_to(folder)): content(p) for p in sorted(folder.rglob("*"))}


def frames_folder(folder: Path, count: int) -> Path:
    folder.mkdir()
    for index in range(count):
        (folder / f"frame_{index:04d}.png").write_bytes(b"old frame")
    return folder


# ---------------------------------------------------- 2. --overwrite of a folder: only vidiff's own frames
def test_overwrite_refuses_a_folder_holding_other_files(tmp_path):
    folder = frames_folder(tmp_path / "out", 2)
    (folder / "thesis.tex").write_text("years of work")
    (folder / "chapters").mkdir()
    before = listing(tmp_path)
    with pytest.raises(UsageError, match=r"thesis\.tex.*frame_NNNN\.png"):
        outputs.plan_outputs([str(folder)], 1, overwrite=True)
    assert listing(tmp_path) == before


def test_overwrite_replaces_a_frames_folder_vidiff_wrote(tmp_path):
    frames_folder(tmp_path / "out", 5)
    (tmp_path / "out.json").write_text("{}")
    write(tmp_path, ["out"], overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"frame_{i:04d}.png" for i in range(3)]
    assert read_pngs(tmp_path / "out").shape == (3, 16, 16, 3)
    assert json.loads((tmp_path / "out.json").read_text()) == {"run": 0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.json"]  # no hidden leftovers


# --------------------------------------------- 3. a path whose kind does not match the output's: refused
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_file_named_like_a_frames_folder_is_refused(tmp_path, overwrite):
    (tmp_path / "somefile").write_bytes(b"keep me")
    with pytest.raises(UsageError, match=r"'.*somefile' is a file.*\.mp4"):
        outputs.plan_outputs([str(tmp_path / "somefile")], 1, overwrite)
    assert (tmp_path / "somefile").read_bytes() == b"keep me"


@pytest.mark.parametrize("name", ["/dev/null", "fifo.mp4", "link.gif", "fifo"])
def test_devices_pipes_and_links_to_them_are_refused(tmp_path, name):
    os.mkfifo(tmp_path / "fifo.mp4")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link.gif").symlink_to("/dev/null")
    path = name if name.startswith("/") else str(tmp_path / name)
    with pytest.raises(UsageError, match="not a regular file or folder"):
        outputs.plan_outputs([path], 1, overwrite=True)
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo.mp4").st_mode) and (tmp_path / "link.gif").is_symlink()


def test_a_folder_named_like_a_video_and_a_sidecar_that_is_a_folder_are_refused(tmp_path):
    (tmp_path / "clip.mp4").mkdir()
    with pytest.raises(UsageError, match="is a folder"):
        outputs.plan_outputs([str(tmp_path / "clip.mp4")], 1, overwrite=True)
    (tmp_path / "clip.gif.json").mkdir()
    with pytest.raises(UsageError, match="clip.gif.json' is a folder"):
        outputs.plan_outputs([str(tmp_path / "clip.gif")], 1, overwrite=True)


# ------------------------------------------------- 4. two runs, one name: the second fails, nothing lost
@pytest.mark.parametrize("name", ["clip.mp4", "clip.gif", "frames"])
def test_a_name_taken_after_planning_is_not_replaced(tmp_path, name):
    first = outputs.plan_outputs([str(tmp_path / name)], 1, overwrite=False)
    second = outputs.plan_outputs([str(tmp_path / name)], 1, overwrite=False)  # both checked: nothing there yet
    outputs.write_outputs(first, FRAMES, FPS, [{"run": 1}], False)
    before = listing(tmp_path)
    with pytest.raises(RunError, match="already exists"):
        outputs.write_outputs(second, FRAMES[::-1], FPS, [{"run": 2}], False)
    assert listing(tmp_path) == before  # the first run's files, and no temporaries of the second


def test_a_sidecar_taken_after_planning_fails_the_run_and_leaves_no_video(tmp_path):
    targets = outputs.plan_outputs([str(tmp_path / "clip.gif")], 1, overwrite=False)
    (tmp_path / "clip.gif.json").write_text("someone else's")
    with pytest.raises(RunError, match=r"clip\.gif\.json' already exists"):
        outputs.write_outputs(targets, FRAMES, FPS, [{"run": 1}], False)
    assert listing(tmp_path) == {"clip.gif.json": b"someone else's"}


# -------------------------------------------------------- 5. SIGTERM / SIGHUP: like Ctrl-C, then 143 / 129
def test_an_interrupt_between_the_renames_of_a_frames_overwrite_restores_the_old_folder(tmp_path, monkeypatch):
    frames_folder(tmp_path / "out", 2)
    before = listing(tmp_path)
    real_rename, real_replace = os.rename, os.replace

    def interrupted(real):
        def move(source, destination, *args, **kwargs):
            if ".tmp-" in os.fspath(source) and Path(destination) == tmp_path / "out":
                raise KeyboardInterrupt  # the signal lands just before the new folder moves in
            return real(source, destination, *args, **kwargs)
        return move

    monkeypatch.setattr(os, "rename", interrupted(real_rename))
    monkeypatch.setattr(os, "replace", interrupted(real_replace))
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path, ["out"], overwrite=True)
    monkeypatch.undo()
    assert listing(tmp_path) == before


class StrayTestSignal(Exception):
    """What the test process does with SIGHUP/SIGTERM outside the CLI's handlers (not die)."""


@pytest.fixture
def survivable_signals():
    def handler(signum, frame):
        raise StrayTestSignal(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGHUP, signal.SIGTERM)}
    yield
    for signum, old in previous.items():
        signal.signal(signum, old)


@pytest.mark.parametrize("signum, status", [(signal.SIGHUP, 129), (signal.SIGTERM, 143)])
def test_sighup_and_sigterm_end_the_cli_like_ctrl_c(tmp_path, monkeypatch, capsys, survivable_signals, signum, status):
    import importlib

    from vidiff.cli import run as cli_run

    cli_main = importlib.import_module("vidiff.cli.main")

    def run(command, explicit, show_progress):
        targets = outputs.plan_outputs([str(tmp_path / "clip.gif"), str(tmp_path / "frames")], 1, False)
        real_gif = outputs.export_to_gif

        def gif_then_signal(*args, **kwargs):
            real_gif(*args, **kwargs)
            os.kill(os.getpid(), signum)  # arrives while the frames are being written
        monkeypatch.setattr(outputs, "export_to_gif", gif_then_signal)
        outputs.write_outputs(targets, FRAMES, FPS, [{}, {}], False)
        return [target.path for target in targets]

    monkeypatch.setattr(cli_run, "run", run)
    monkeypatch.setattr(cli_main, "_configure_logging", lambda quiet: None)  # no process-wide logging changes
    handlers = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    assert cli_main.main(["svd", "img.png", "-q"]) == status
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "no partial output was left behind" in lines[0], lines
    assert list(tmp_path.iterdir()) == []
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the CLI's handlers are gone again


# ------------------------------------------------------- 6. several outputs: all of them, or none of them
def test_a_failing_later_output_leaves_no_earlier_one(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(outputs, "export_to_gif", broken)
    with pytest.raises(OSError, match="disk full"):
        write(tmp_path, ["a.mp4", "frames", "a.gif"])
    assert listing(tmp_path) == {}


def test_a_sidecar_that_cannot_be_written_leaves_no_video(tmp_path):
    with pytest.raises(TypeError):
        write(tmp_path, ["a.mp4", "b.gif"], sidecars=[{"ok": 1}, {"not json": object()}])
    assert listing(tmp_path) == {}


def test_a_failing_commit_restores_every_replaced_original(tmp_path, monkeypatch):
    frames_folder(tmp_path / "frames", 2)
    for name in ("a.mp4", "a.mp4.json", "frames.json", "a.gif", "a.gif.json"):
        (tmp_path / name).write_bytes(f"old {name}".encode())
    before = listing(tmp_path)
    real_replace = os.replace

    def full_disk_at_the_gif(source, destination, *args, **kwargs):
        if Path(destination) == tmp_path / "a.gif":
            raise OSError(28, "No space left on device")
        return real_replace(source, destination, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full_disk_at_the_gif)
    with pytest.raises(RunError, match="a.gif"):
        write(tmp_path, ["a.mp4", "frames", "a.gif"], overwrite=True)
    monkeypatch.undo()
    assert listing(tmp_path) == before


def test_numbered_outputs_are_all_written(tmp_path):
    write(tmp_path, ["clip.gif", "f"], videos=2, sidecars=[{"i": i} for i in range(4)])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "clip-1.gif", "clip-1.gif.json", "clip-2.gif", "clip-2.gif.json", "f-1", "f-1.json", "f-2", "f-2.json"]


# ------------------------------------------------ 2 + 3 through the CLI: refused before anything loads
def test_the_cli_refuses_mismatched_outputs_before_loading(tmp_path):
    random_path = tmp_path / "img.png"
    from tests.svd_checkpoint import random_image

    random_image(80, 56).save(random_path)
    (tmp_path / "somefile").write_bytes(b"keep me")
    frames_folder(tmp_path / "thesis", 1)
    (tmp_path / "thesis" / "thesis.tex").write_text("years of work")
    os.mkfifo(tmp_path / "fifo.mp4")
    before = listing(tmp_path)
    cases = {"/dev/null": "not a regular file or folder", "somefile": "is a file", "thesis": "thesis.tex",
             "fifo.mp4": "not a regular file or folder"}
    # A --model that does not exist: loading it would fail with exit status 1, so a 2 shows the
    # output was refused first.
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(cases, pool.map(
            lambda name: vidiff("svd", "img.png", "--model", "absent-model", "-o", name, "--overwrite", cwd=tmp_path), cases)))
    for name, message in cases.items():
        lines = results[name].stderr.splitlines()
        assert results[name].returncode == 2 and len(lines) == 1 and message in lines[0], (name, results[name].stderr)
    assert listing(tmp_path) == before


# ---------------------------------------- 15 + 16: a closed stdout is fine; the mp4 is byte-reproducible
def test_closed_stdout_is_not_a_failure_and_the_mp4_is_reproducible(tiny_svd, work):
    args = [sys.executable, "-m", "vidiff", "svd", "img.png", "--model", str(tiny_svd[0]), *SMALL, "--seed", "4", "-q"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([*args, "-o", "a.mp4"], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # `vidiff … | true`
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=300) == 0 and stderr == "", stderr
    # The same run on one CPU (x264 picks its thread count from the CPUs it may use).
    pinned = subprocess.run([*args, "-o", "b.mp4"], cwd=work, env=env, capture_output=True, text=True, timeout=300,
                            preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    ok(pinned)
    assert (work / "a.mp4").read_bytes() == (work / "b.mp4").read_bytes()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_export_to_video_does_not_depend_on_the_cpus_it_may_use(tmp_path):
    from vidiff.media import export_to_video

    video = np.random.default_rng(1).random((6, 128, 192, 3))
    cpus = os.sched_getaffinity(0)
    export_to_video(video, tmp_path / "all.mp4", fps=8)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        export_to_video(video, tmp_path / "one.mp4", fps=8)
    finally:
        os.sched_setaffinity(0, cpus)
    digests = [hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in ("all.mp4", "one.mp4")]
    assert digests[0] == digests[1]
