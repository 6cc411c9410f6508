"""Logging: ``server_logs/server.log`` (everything) and ``server_logs/queue.log`` (one line per task state
change, with its id), each rotating at ``log_max_bytes`` × ``log_backup_count``, plus the console."""
from __future__ import annotations

import logging
from logging.handlers import RotatingFileHandler

from .config import Settings

FORMAT = "%(asctime)s %(levelname)-7s [%(threadName)s] %(name)s: %(message)s"
_installed: list[logging.Handler] = []


def setup_logging(settings: Settings) -> None:
    """Install the handlers (again, replacing earlier ones: tests start several servers in one process)."""
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in _installed:
        root.removeHandler(handler)
        logging.getLogger("media_cleaner.queue").removeHandler(handler)
        handler.close()
    _installed.clear()

    formatter = logging.Formatter(FORMAT)

    def rotating(name: str) -> RotatingFileHandler:
        handler = RotatingFileHandler(settings.log_dir / name, maxBytes=settings.log_max_bytes,
                                      backupCount=settings.log_backup_count, encoding="utf-8")
        handler.setFormatter(formatter)
        _installed.append(handler)
        return handler

    console = logging.StreamHandler()
    console.setFormatter(formatter)
    _installed.append(console)

    root.setLevel(settings.log_level)
    root.addHandler(rotating("server.log"))
    root.addHandler(console)
    # uvicorn installs its own handlers; route its records through ours so they reach server.log.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("media_cleaner.queue").addHandler(rotating("queue.log"))
