"""The server's job table: SQLite (stdlib ``sqlite3``) in ``<data>/vidiff.sqlite3``.

One row per submitted job. A job's life: ``queued`` → ``running`` → ``succeeded`` | ``failed``;
``DELETE`` turns a queued or running job ``cancelled``. Every change is committed at once, so a
killed server loses nothing: on the next start :meth:`JobStore.requeue_interrupted` puts the jobs
it was running back in the queue, and the workers take the queued ones oldest first.

Two JSON documents per row: ``job`` (what the client sent, uploads shown as ``upload:<name>``;
what the API returns) and ``run_job`` (the same job as the worker runs it: upload paths, model
table paths and the picked seed filled in).
"""

from __future__ import annotations

import datetime
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

TERMINAL = ("succeeded", "failed", "cancelled")
STATUSES = ("queued", "running") + TERMINAL

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- submission order (the queue's order)
    id TEXT UNIQUE NOT NULL,                 -- hex id the API shows
    job TEXT NOT NULL,                       -- JSON: the job as submitted
    run_job TEXT NOT NULL,                   -- JSON: the job as the worker runs it
    status TEXT NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,         -- denoising steps done
    total INTEGER NOT NULL DEFAULT 0,        -- denoising steps in all
    eta_seconds REAL,                        -- seconds left, from the time per step so far
    error TEXT,                              -- one line, for a failed job
    outputs TEXT NOT NULL,                   -- JSON list of formats ["mp4", "gif"]
    files TEXT,                              -- JSON {format: path} of the written videos
    created TEXT NOT NULL,                   -- ISO 8601, UTC
    started TEXT,
    finished TEXT,
    updated REAL NOT NULL DEFAULT 0          -- time.time() of the last change (event streams poll it)
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
"""


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


class JobStore:
    """Thread-safe access to the job table (one connection, one lock; WAL so readers never wait
    on a writer of another process, e.g. ``sqlite3`` opened by hand while the server runs)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a killed process
        self._db.executescript(_SCHEMA)
        # Every step reported per running job, in memory (step, total, eta): an event stream that
        # polls less often than steps end still reports each step.
        self._steps: dict[str, list[tuple[int, int, float | None]]] = {}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, params: tuple = ()) -> int:
        """Run one statement in its own transaction; returns the number of rows changed."""
        with self._lock:
            return self._db.execute(sql, params).rowcount

    # ---------------------------------------------------------------- submitting and reading
    def add(self, job_id: str, job: dict[str, Any], run_job: dict[str, Any], outputs: list[str], total: int) -> None:
        self._write(
            "INSERT INTO jobs (id, job, run_job, status, total, outputs, created, updated) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
            (job_id, json.dumps(job), json.dumps(run_job), total, json.dumps(outputs), now_iso(), time.time()),
        )

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _as_dict(row)

    def list(self) -> list[dict[str, Any]]:
        """Every job, newest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY seq DESC").fetchall()
        return [_as_dict(row) for row in rows]

    # ---------------------------------------------------------------- the workers' side
    def _forget_steps(self, job_id: str) -> None:
        with self._lock:
            self._steps.pop(job_id, None)

    def requeue_interrupted(self) -> int:
        """Jobs left ``running`` by a server that stopped go back to the queue (same place in it)."""
        return self._write(
            "UPDATE jobs SET status = 'queued', step = 0, eta_seconds = NULL, started = NULL, updated = ? WHERE status = 'running'",
            (time.time(),),
        )

    def claim_next(self) -> dict[str, Any] | None:
        """Mark the oldest queued job ``running`` and return it (None when the queue is empty)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT * FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1").fetchone()
                if row is not None:
                    self._steps[row["id"]] = []
                    self._db.execute(
                        "UPDATE jobs SET status = 'running', step = 0, started = ?, updated = ? WHERE id = ?",
                        (now_iso(), time.time(), row["id"]),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return None if row is None else {**_as_dict(row), "status": "running"}

    def progress(self, job_id: str, step: int, total: int, eta_seconds: float | None) -> str | None:
        """Record a step; returns the job's status now (``cancelled`` tells the worker to stop)."""
        with self._lock:
            self._write(
                "UPDATE jobs SET step = ?, total = ?, eta_seconds = ?, updated = ? WHERE id = ? AND status = 'running'",
                (step, total, eta_seconds, time.time(), job_id),
            )
            row = self._db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None and row["status"] == "running":
                self._steps.setdefault(job_id, []).append((step, total, eta_seconds))
        return None if row is None else row["status"]

    def steps_since(self, job_id: str, seen: int) -> list[tuple[int, int, float | None]]:
        """The steps the job's current run reported after the first ``seen`` of them."""
        with self._lock:
            return list(self._steps.get(job_id, [])[seen:])

    def finish(self, job_id: str, status: str, error: str | None = None, files: dict[str, str] | None = None) -> bool:
        """End a running job; False when it was no longer running (cancelled meanwhile)."""
        changed = self._write(
            "UPDATE jobs SET status = ?, error = ?, files = ?, eta_seconds = NULL, finished = ?, updated = ?"
            + (", step = total" if status == "succeeded" else "")
            + " WHERE id = ? AND status = 'running'",
            (status, error, json.dumps(files) if files else None, now_iso(), time.time(), job_id),
        )
        self._forget_steps(job_id)
        return changed == 1

    def requeue(self, job_id: str) -> None:
        """Put a running job back in the queue (the server is stopping while it runs)."""
        self._forget_steps(job_id)
        self._write(
            "UPDATE jobs SET status = 'queued', step = 0, eta_seconds = NULL, started = NULL, updated = ? WHERE id = ? AND status = 'running'",
            (time.time(), job_id),
        )

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False when it had already ended."""
        changed = self._write(
            "UPDATE jobs SET status = 'cancelled', eta_seconds = NULL, finished = ?, updated = ? "
            "WHERE id = ? AND status IN ('queued', 'running')",
            (now_iso(), time.time(), job_id),
        )
        return changed == 1


def _as_dict(row: sqlite3.Row) -> dict[str, Any]:
    record = dict(row)
    for key in ("job", "run_job", "outputs", "files"):
        record[key] = json.loads(record[key]) if record[key] else None
    return record
