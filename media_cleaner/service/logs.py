"""Logging: ``server_logs/server.log`` (everything) and ``server_logs/queue.log`` (one line per task state
change, with its id), each rotating at ``log_max_bytes`` × ``log_backup_count``, plus the console."""
from __future__ import annotations

import logging
import re
from logging.handlers import RotatingFileHandler

from media_cleaner.config import Settings

FORMAT = "%(asctime)s %(levelname)-7s [%(threadName)s] %(name)s: %(message)s"
_installed: list[logging.Handler] = []
POLL_PATHS = ("/status/", "/tasks", "/stats", "/health")


class QuietPolls(logging.Filter):
    """Drops uvicorn's access line of a successful poll (GET /status/…, /tasks, /stats, /health); uploads,
    downloads, deletes and every error are still logged. Clients poll about once a second each: fifty of them
    wrote 50 lines a second, which rotated start-up lines and stack traces out of the logs within hours and
    cost about as much CPU as answering the poll. At log level DEBUG every request is logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args   # uvicorn's: (client, method, path with query, HTTP version, status code)
        if isinstance(args, tuple) and len(args) == 5:
            method, path, status = args[1], args[2], args[4]
            if method in ("GET", "HEAD") and isinstance(status, int) and 200 <= status < 400 \
                    and isinstance(path, str) and path.startswith(POLL_PATHS):
                return False
        return True


class NoSecretsInURLs(logging.Filter):
    """Blanks the value of credential-like query parameters (``?api_key=…``) in uvicorn's access lines. Such
    requests are refused (400), but the access line is written all the same."""

    _SECRET = re.compile(r"([?&](?:api[_-]?key|key|x-api-key|token|access_token)=)[^&\s]*", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], self._SECRET.sub(r"\1***", args[2]), *args[3:])
        return True


def setup_logging(settings: Settings, stem: str = "server") -> None:
    """Install the handlers (again, replacing earlier ones: tests start several servers in one process).
    ``stem``: the logs' names; a distributed worker logs to ``worker-<its name>.log`` and ``….queue.log`` in
    the shared folder, as a rotating file must have one writer."""
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
    root.addHandler(rotating(f"{stem}.log"))
    root.addHandler(console)
    # uvicorn installs its own handlers; route its records through ours so they reach server.log.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    access = logging.getLogger("uvicorn.access")
    for old in [f for f in access.filters if isinstance(f, (QuietPolls, NoSecretsInURLs))]:
        access.removeFilter(old)
    access.addFilter(NoSecretsInURLs())
    if settings.log_level != "DEBUG":
        access.addFilter(QuietPolls())
    queue_log = "queue.log" if stem == "server" else f"{stem}.queue.log"
    logging.getLogger("media_cleaner.queue").addHandler(rotating(queue_log))
