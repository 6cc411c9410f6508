#!/usr/bin/env python3
"""Start the Media Cleaner server: one uvicorn process with the worker pool inside it.

    python run_server.py --workers 3 --port 8000 [--host 0.0.0.0] [--data-dir /srv/media-cleaner]

One process on purpose: the JSON task store lives in this process, so several uvicorn processes would split
it. Every flag can also be set with a MEDIA_CLEANER_* environment variable (see server_config.py). The code
is :mod:`media_cleaner.api.server` (also installed as the ``media-cleaner-server`` command).
"""
import sys

from media_cleaner.api.server import main

if __name__ == "__main__":
    sys.exit(main())
