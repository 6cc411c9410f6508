"""Server configuration: the seed's ``SERVER_CONFIG`` keys as one validated settings object.

Precedence (lowest first): the defaults in :class:`media_cleaner.config.Settings`, ``MEDIA_CLEANER_*``
environment variables (e.g. ``MEDIA_CLEANER_MAX_CONCURRENT_TASKS=2``, ``MEDIA_CLEANER_DATA_DIR=/srv/mc``),
then the flags of ``run_server.py``.

``settings`` and ``SERVER_CONFIG`` are read from the environment on first use, so a bad variable is
reported by whoever asks (run_server.py prints it as a one-line error) rather than at import.
"""
from __future__ import annotations

from media_cleaner.config import Settings, load_settings

__all__ = ["Settings", "load_settings"]   # and, read on first use, settings and SERVER_CONFIG


def __getattr__(name: str):
    if name == "settings":
        return load_settings()
    if name == "SERVER_CONFIG":
        return load_settings().as_server_config()
    raise AttributeError(name)
