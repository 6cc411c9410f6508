"""Start the Media Cleaner server: one uvicorn process with the worker pool inside it (``run_server.py`` and the
``media-cleaner-server`` command call :func:`main`).

One process on purpose: the JSON task store lives in this process, so several uvicorn processes would split
it. Every flag can also be set with a MEDIA_CLEANER_* environment variable (see server_config.py).
"""
from __future__ import annotations

import argparse
import sys

import uvicorn
from pydantic import ValidationError
from pydantic_settings import SettingsError

from media_cleaner.api import create_app
from media_cleaner.api.http_protocol import HTTP_PROTOCOL
from media_cleaner.service.auth import KeyConfigError
from media_cleaner.media.ffmpeg import FFmpegNotFound
from media_cleaner.service.core import MediaCleanerService
from media_cleaner.service.store.json_store import StoreError
from media_cleaner.config import load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the Media Cleaner server.")
    parser.add_argument("--host", help="interface to bind (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument("--workers", type=int, dest="max_concurrent_tasks",
                        help="videos processed at once (worker threads, default 3)")
    parser.add_argument("--data-dir", help="root of videos_input/, videos_output/, videos_temp/, "
                                           "server_logs/, queue_db/ (default: current folder)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)
    args = parser.parse_args(argv)
    try:
        settings = load_settings(**vars(args))
    except ValidationError as exc:
        parser.error("invalid setting: " + "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()))
    except SettingsError as exc:   # e.g. a MEDIA_CLEANER_* list variable that is not JSON
        parser.error(f"invalid setting in the environment: {exc}")

    service = MediaCleanerService(settings)
    try:
        service.start()
    except (StoreError, FFmpegNotFound, KeyConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if service.keys.configured:
        print(f"API keys: {len(service.keys.principals())} configured; every endpoint but /health needs one.")
    elif settings.host in ("127.0.0.1", "localhost", "::1"):
        print("No API keys configured: the API is open, so it only listens on this machine (localhost).")
    else:
        print(f"WARNING: no API keys configured and listening on {settings.host}: anyone who can reach this "
              f"port can upload, list and download videos. Configure keys (SERVER_DEPLOYMENT.md).",
              file=sys.stderr)
    base = f"http://{'127.0.0.1' if settings.host in ('0.0.0.0', '::') else settings.host}:{settings.port}"
    workers = (f"Media Cleaner API on the distributed queue {settings.queue_name!r} (workers: python -m "
               f"media_cleaner worker)" if settings.backend == "celery" else
               f"Media Cleaner {settings.max_concurrent_tasks} workers")
    print(f"{workers}, data in {settings.data_dir}\n"
          f"  API:  {base}/upload  (curl -F file=@video.mp4 {base}/upload)\n"
          f"  Docs: {base}/docs", flush=True)
    try:
        uvicorn.run(create_app(service=service), host=settings.host, port=settings.port, log_config=None,
                    timeout_graceful_shutdown=10, http=HTTP_PROTOCOL)
    finally:
        service.stop()   # also when uvicorn could not bind the port
    return 0
