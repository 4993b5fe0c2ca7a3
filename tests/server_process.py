"""A real ``vidiff serve`` in a subprocess on a free loopback port, and a tiny stdlib HTTP client.

The server tests talk to the server exactly as a user's script would: over HTTP, with no access
to its objects. The client is ``urllib`` (no extra test dependency).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

STARTUP_SECONDS = 90  # importing torch on two busy cores can take a while


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``python -m vidiff serve`` with ``args``, launched (``wait_until_up()`` waits for it to answer;
    :meth:`start` does both); ``stop()`` (or ``kill()``) always ends it."""

    def __init__(self, data: Path, *args: str, token: str | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.log_path = Path(data).with_name(Path(data).name + f"-{self.port}.log")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "vidiff", "serve", "--port", str(self.port), "--data", str(data), "--device", "cpu", *args]
        if token:
            command += ["--token", token]
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    @classmethod
    def start(cls, data: Path, *args: str, token: str | None = None) -> "Server":
        """A started server, answering on its port."""
        server = cls(data, *args, token=token)
        server.wait_until_up()
        return server

    def wait_until_up(self) -> None:
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vidiff serve exited with {self.process.returncode}: {self.log()}")
            try:
                status, _, _ = self.request("GET", "/v1/health")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"vidiff serve did not answer within {STARTUP_SECONDS} s: {self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-3000:]

    def kill(self) -> None:
        """SIGKILL: no clean-up at all (a crash, a power cut)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        self._log.close()

    # ------------------------------------------------------------------------------ HTTP
    def request(self, method: str, path: str, body: Any = None, headers: dict | None = None,
                files: dict[str, tuple[str, bytes]] | None = None, auth: bool = True) -> tuple[int, dict, bytes]:
        """(status, headers, body bytes); ``body`` a dict → JSON, with ``files`` → multipart fields."""
        headers = dict(headers or {})
        if auth and self.token and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if files is not None:
            data, headers["Content-Type"] = multipart(body or {}, files)
        elif body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def json(self, method: str, path: str, body: Any = None, **kwargs) -> tuple[int, Any]:
        status, _, content = self.request(method, path, body, **kwargs)
        return status, json.loads(content)

    def submit(self, job: dict, files: dict | None = None) -> dict:
        status, video = self.json("POST", "/v1/videos", job, files=files)
        assert status == 201, (status, video)
        return video

    def wait(self, video_id: str, until=("succeeded", "failed", "cancelled"), timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, video = self.json("GET", f"/v1/videos/{video_id}")
            assert status == 200, video
            if video["status"] in until:
                return video
            time.sleep(0.05)
        raise AssertionError(f"video {video_id} is still {video['status']} after {timeout} s: {self.log()}")

    def wait_running(self, video_id: str, timeout: float = 120) -> dict:
        """Wait until the job has done at least one denoising step (so it is mid-run)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, video = self.json("GET", f"/v1/videos/{video_id}")
            if video["status"] == "running" and video["progress"]["step"] >= 1:
                return video
            assert video["status"] in ("queued", "running"), video
            time.sleep(0.02)
        raise AssertionError(f"video {video_id} never started: {self.log()}")


def multipart(fields: dict[str, Any], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """multipart/form-data: text ``fields`` (a list → the field repeated) and ``files`` {field: (name, bytes)}."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        for item in value if isinstance(value, list) else [value]:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{item}\r\n'.encode())
    for name, (filename, content) in files.items():
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n")
        parts.append(head.encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
