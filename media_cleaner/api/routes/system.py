"""Service-wide resources: ``GET /stats`` (queue counts and limits in force) and ``GET /health``.

Both are ``async def`` (run on the event loop, no thread-pool hop): they read only memory. The store's
``counts()`` takes no lock (a snapshot of the in-memory tasks), the settings are in memory, and
``WorkerPool.busy()`` takes the pool's ``_running_lock``, which is only ever held for a dict operation on
the running tasks (at shutdown, also to set cancel flags and send kill signals): never across a wait, I/O
or a task's run. The distributed queue's figures come from the workers' heartbeats in Redis, read at most
once a second and cached in between (a few milliseconds at most, with 2-second socket timeouts).
"""
from __future__ import annotations

from fastapi import APIRouter

from media_cleaner import __version__
from media_cleaner.params import (
    AUDIO_LEVELS,
    EPSILON_RANGE,
    EVERY_N_FRAMES_RANGE,
    PRESETS,
    VIDEO_STRENGTH_RANGE,
)
from media_cleaner.api.deps import CurrentUser, ServiceDep

router = APIRouter(tags=["service"])


@router.get("/stats", operation_id="get_stats", summary="Queue counts and the limits in force")
async def stats(service: ServiceDep, user: CurrentUser) -> dict:
    settings = service.settings
    return {
        "queue": service.store.counts(),
        "workers": {"count": service.pool.size, "busy": service.pool.busy(),
                    "threads_per_worker": settings.threads_per_worker},
        "backend": service.pool.health(),
        "limits": {"max_concurrent_tasks": settings.max_concurrent_tasks,
                   "max_video_size_gb": settings.max_video_size_gb,
                   "max_upload_bytes": settings.max_upload_bytes,
                   "supported_video_formats": settings.supported_video_formats,
                   "max_attempts": settings.max_attempts,
                   "max_duration_s": settings.max_duration_s,
                   "max_resolution": [settings.max_width, settings.max_height],
                   "max_fps": settings.max_fps,
                   "max_pending_tasks": settings.max_pending_tasks,
                   "max_pending_per_user": settings.max_pending_per_user},
        "retention": {"keep_inputs": settings.keep_inputs,
                      "output_retention_hours": settings.output_retention_hours,
                      "task_retention_days": settings.task_retention_days},
        "auth": "api-key" if service.keys.configured else "open",
        "store": settings.store,
        "ffmpeg": service.ffmpeg.public() if service.ffmpeg else None,
        "defaults": settings.default_params.as_dict(),
        "presets": {name: {"epsilon": epsilon, "video_strength": strength}
                    for name, (epsilon, strength) in PRESETS.items()},
        "ranges": {"epsilon": EPSILON_RANGE, "video_strength": VIDEO_STRENGTH_RANGE,
                   "every_n_frames": EVERY_N_FRAMES_RANGE, "audio_level": AUDIO_LEVELS},
    }


@router.get("/health", operation_id="get_health", summary="Liveness: answers while the server runs")
async def health(service: ServiceDep) -> dict:
    # "degraded": a worker has made no progress for the ffmpeg watchdog's time (a child is about to be
    # killed, or the engines are stuck); the server itself still answers.
    # With the distributed queue, also "degraded" while the broker is unreachable or no worker is alive.
    stalled = service.pool.stalled()
    backend = service.pool.health()
    distributed_trouble = backend["backend"] == "celery" and (
        backend["broker"] != "ok" or not backend["workers_alive"] or "store" in backend)
    return {"status": "degraded" if stalled or distributed_trouble else "ok", "version": __version__,
            "workers": service.pool.size, "busy": service.pool.busy(), "stalled": stalled, "backend": backend,
            "ffmpeg": service.ffmpeg.public() if service.ffmpeg else None}
