"""Server configuration: the seed's ``SERVER_CONFIG`` keys as one validated settings object.

Precedence (lowest first): the defaults in :class:`media_cleaner.config.Settings`, ``MEDIA_CLEANER_*``
environment variables (e.g. ``MEDIA_CLEANER_MAX_CONCURRENT_TASKS=2``, ``MEDIA_CLEANER_DATA_DIR=/srv/mc``),
then the flags of ``run_server.py``.
"""
from __future__ import annotations

from media_cleaner.config import Settings


def load_settings(**overrides) -> Settings:
    """Settings from the environment, with explicit overrides (``None`` values are ignored)."""
    return Settings(**{key: value for key, value in overrides.items() if value is not None})


settings = load_settings()
SERVER_CONFIG = settings.as_server_config()
