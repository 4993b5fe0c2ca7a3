"""``vidiff serve``: check the options, open the data folder, start one worker per device, serve HTTP."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

from ..cli.commands import COMMANDS
from ..cli.errors import UsageError
from .app import ServerState, create_app
from .store import JobStore
from ..cli.settings import worker_devices
from .worker import Worker

logger = logging.getLogger("vidiff.server")

TOKEN_ENV = "VIDIFF_SERVER_TOKEN"  # the token without putting it on the command line (ps shows that)
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# model_index.json "_class_name" → the vidiff commands that load it.
_CLASS_PIPELINES = {
    "StableVideoDiffusionPipeline": ["svd"], "I2VGenXLPipeline": ["i2vgen-xl"],
    "AnimateDiffPipeline": ["animatediff"], "StableDiffusionPipeline": ["animatediff"],
    "WanPipeline": ["wan"], "WanImageToVideoPipeline": ["wan"],
}


def is_loopback(host: str) -> bool:
    """True for hosts only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def model_table(entries: list[str]) -> dict[str, str]:
    """``--model NAME=PATH_OR_ID`` entries → {name: absolute path or Hub id}."""
    table: dict[str, str] = {}
    for entry in entries:
        name, sep, source = entry.partition("=")
        if not sep or not _MODEL_NAME.match(name) or not source:
            raise UsageError(f"--model expects NAME=PATH_OR_ID with NAME made of letters, digits, '_', '.', '-'; got {entry!r}")
        if name in table:
            raise UsageError(f"--model {name} is given twice")
        path = Path(source).expanduser()
        if path.exists():
            source = str(path.resolve())
        elif source.startswith(("/", ".", "~")):
            raise UsageError(f"--model {entry}: {source!r} does not exist")
        table[name] = source
    return table


def model_pipelines(table: dict[str, str]) -> dict[str, list[str]]:
    """Which commands each table model serves: from its model_index.json, or its being a command's
    default; unknown (a Hub id not in the cache): every command."""
    served = {}
    for name, source in table.items():
        pipelines = [n for n, command in COMMANDS.items() if command.default_model == source]
        index = Path(source) / "model_index.json"
        if not pipelines and index.is_file():
            try:
                pipelines = _CLASS_PIPELINES.get(json.loads(index.read_text()).get("_class_name"), [])
            except (OSError, ValueError):
                pipelines = []
        served[name] = pipelines or list(COMMANDS)
    return served


def check_options(explicit: dict[str, Any]) -> dict[str, Any]:
    """The options with defaults filled in; UsageError (exit 2) for a refused combination."""
    options = {
        "host": "127.0.0.1", "port": 8000, "data": "vidiff-server", "token": os.environ.get(TOKEN_ENV) or None,
        "model": [], "device": "auto", "max_upload_mb": 20.0, "pipelines_kept": 2, **explicit,
    }
    if not is_loopback(options["host"]) and not options["token"]:
        raise UsageError(
            f"--host {options['host']} can be reached from other machines: give --token SECRET (or set ${TOKEN_ENV}) "
            "so that every request must carry it, or bind --host 127.0.0.1"
        )
    if options["token"] is not None and len(options["token"]) < 8:
        raise UsageError("--token must be at least 8 characters (a long random string is best)")
    return options


def serve(explicit: dict[str, Any]) -> int:
    """Run the server until Ctrl-C/SIGTERM; returns the exit status."""
    import uvicorn

    options = check_options(explicit)
    models = model_table(options["model"])
    devices = worker_devices(options["device"])
    data = Path(options["data"]).expanduser().resolve()
    for folder in (data, data / "videos", data / "uploads"):
        folder.mkdir(parents=True, exist_ok=True)
    store = JobStore(data / "vidiff.sqlite3")
    requeued = store.requeue_interrupted()
    if requeued:
        logger.info("%d interrupted job(s) are back in the queue", requeued)
    wake = threading.Event()
    workers = [Worker(device, store, data, wake, options["pipelines_kept"]) for device in devices]
    state = ServerState(
        store=store, workers=workers, data=data, models=models, model_pipelines=model_pipelines(models),
        token=options["token"], max_upload_bytes=int(options["max_upload_mb"] * 2**20),
    )
    app = create_app(state)
    for worker in workers:
        worker.start()
    logger.info("serving http://%s:%d with %d worker(s) (%s), data in %s", options["host"], options["port"],
                len(workers), ", ".join(devices), data)
    server = uvicorn.Server(uvicorn.Config(app, host=options["host"], port=options["port"], log_level="warning"))
    try:
        server.run()
    finally:
        for worker in workers:
            worker.stop()
        store.close()
    return 0
