"""``vidiff serve``: an HTTP job queue (FastAPI + uvicorn) over the command line's runs.

:mod:`.store` keeps jobs in SQLite, :mod:`.worker` runs them (one thread per device),
:mod:`.requests` and :mod:`.uploads` check what clients send, :mod:`.app` is the HTTP API, and
:mod:`.serve` is the subcommand. Importing this package needs ``fastapi`` and ``uvicorn``.
"""
