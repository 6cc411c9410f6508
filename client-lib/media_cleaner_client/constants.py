"""Every tunable of the client, and how to name it in the hints it prints."""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Callable, Optional, Union

import httpx

__version__ = "1.0.0"

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
ENV_BASE_URL = "MEDIA_CLEANER_URL"
ENV_API_KEY = "MEDIA_CLEANER_API_KEY"
API_KEY_HEADER = "X-API-Key"
USER_AGENT = f"media-cleaner-client/{__version__} httpx/{httpx.__version__}"


def _cli_name() -> str:
    """How to run this client again, for the hints it prints: the interpreter as the user can type it (a venv's
    python relative to the current folder, else ``python3``: plain ``python`` is missing on stock Debian)."""
    def near(path: str, otherwise: str) -> str:   # relative to the current folder when inside it
        try:
            relative = os.path.relpath(path)
        except ValueError:   # another drive (Windows)
            return otherwise
        return otherwise if relative.startswith("..") else relative

    interpreter = near(sys.executable, "python3")
    if os.sep not in interpreter and interpreter != "python3":
        interpreter = "." + os.sep + interpreter
    # The repository's client.py when there is one (a checkout), else the installed console script.
    checkout = Path(__file__).resolve().parents[2] / "client.py"
    if not checkout.is_file():
        return "media-cleaner-client"
    script = near(str(checkout), str(checkout))
    return f"{shlex.quote(interpreter)} {shlex.quote(script)}"


CLI_NAME = _cli_name()
SERVER_START_HINT = CLI_NAME.rsplit(" ", 1)[0] + " run_server.py"

# connect: TCP/TLS set-up; read: longest silence while waiting for a response byte; write: longest
# single socket write (uploads of big videos over a slow link need a generous one); pool: waiting
# for a free connection.
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=120.0, write=600.0, pool=30.0)

UPLOAD_CHUNK_SIZE = 1024 * 1024          # bytes read from disk and sent per chunk

POLL_INTERVAL = 1.0                      # first wait between two status polls, seconds
POLL_BACKOFF = 1.5                       # the interval grows by this factor while nothing changes
POLL_MAX_INTERVAL = 10.0                 # ... up to this cap
WAIT_CONNECTION_RETRIES = 3              # consecutive unreachable-server polls tolerated by wait()

MAX_RETRIES = 2                          # re-sends of a request answered 429/503
RETRY_BACKOFF = 2.0                      # seconds before a re-send when the server gave no Retry-After
RETRY_AFTER_CAP = 120.0                  # never sleep longer than this on one Retry-After
DOWNLOAD_RETRIES = 3                     # resumptions (HTTP Range) of a download that broke mid-body
DOWNLOAD_RETRY_DELAY = 1.0

UPLOAD_FIELDS = ("epsilon", "video_strength", "every_n_frames", "audio_level", "user_id", "notes", "webhook_url",
                 "protection")

ProgressCallback = Callable[[int, Optional[int]], None]
PathLike = Union[str, "os.PathLike[str]"]


