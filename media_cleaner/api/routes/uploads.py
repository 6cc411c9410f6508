"""``POST /upload`` (and its alias ``/upload_with_webhook``): receive, check and queue a video."""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import anyio
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from media_cleaner.service.tasks import Task, TaskView
from media_cleaner.service.files import upload_key, upload_part_name
from media_cleaner.params import (
    AUDIO_LEVEL_ALIASES,
    AUDIO_LEVELS,
    EPSILON_RANGE,
    EVERY_N_FRAMES_RANGE,
    PRESETS,
    VIDEO_STRENGTH_RANGE,
    ParameterError,
    ProtectionParams,
)
from media_cleaner.media.probe import MediaError, probe_media
from media_cleaner.service.auth import Principal
from media_cleaner.service.core import MediaCleanerService
from media_cleaner.service.webhooks import WebhookRefused, check_webhook_url
from media_cleaner.api.deps import CurrentUser, ServiceDep
from media_cleaner.api.errors import error_responses
from media_cleaner.api.multipart import discard, disk_full_error, receive_multipart

router = APIRouter(tags=["upload"])

QUEUE_FULL_RETRY_S = 60
TEXT_FIELD_LIMITS = {"user_id": 200, "notes": 5000, "webhook_url": 2048}
KNOWN_FIELDS = {"protection", "epsilon", "video_strength", "every_n_frames", "audio_level",
                *TEXT_FIELD_LIMITS}

UPLOAD_FORM_SCHEMA = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "The video: mp4, mov, avi, mkv, webm, flv or m4v"},
        "protection": {"type": "string", "enum": list(PRESETS), "default": "invisible",
                       "description": "A preset: invisible (hard to tell from the original, also enlarged; "
                                      "little protection against recognizers it never saw), balanced "
                                      "(identity protection, a visible texture on the face), strong "
                                      "(hides the face from detectors, MTCNN most; plainly visible). Sets epsilon "
                                      "and video_strength; either given explicitly wins"},
        "epsilon": {"type": "number", "minimum": EPSILON_RANGE[0], "maximum": EPSILON_RANGE[1], "default": 0.12,
                    "description": "L∞ cap of the frame perturbation in the [-1, 1] range (0.12 → ±15 of 255 levels)"},
        "video_strength": {"type": "number", "minimum": VIDEO_STRENGTH_RANGE[0],
                           "maximum": VIDEO_STRENGTH_RANGE[1], "default": 1.0,
                           "description": "Multiplies the budget (cap = epsilon × strength) and the attack effort"},
        "every_n_frames": {"type": "integer", "minimum": EVERY_N_FRAMES_RANGE[0],
                           "maximum": EVERY_N_FRAMES_RANGE[1], "default": 10,
                           "description": "Optimise on every N-th frame; frames between carry the latest perturbation"},
        "audio_level": {"type": "string", "enum": list(AUDIO_LEVELS) + list(AUDIO_LEVEL_ALIASES)[:3],
                        "default": "weak",
                        "description": "Voice mask budget; 'none' keeps the original sound"},
        # Empty examples: Swagger UI's "Try it out" otherwise sends "string" and https://example.com/ (a 403
        # with a key; on an open server the task would be posted to example.com).
        "user_id": {"type": "string", "maxLength": 200, "example": "",
                    "description": "Owner tag, used to filter GET /tasks; with API keys it is the key's user"},
        "notes": {"type": "string", "maxLength": 5000, "example": "", "description": "Free text kept with the task"},
        "webhook_url": {"type": "string", "maxLength": 2048, "example": "",
                        "description": "An http(s) URL called (POST, the task as JSON, HMAC-signed) when the task "
                                       "completes, fails or is cancelled; must be a public host"},
    },
}

UPLOAD_DOC = """Upload a video to protect. Answers **202** with the task; follow `Location` (`/status/{task_id}`)
until `status` is `completed`, then `GET /download/{task_id}`.

The file is streamed to disk and checked by probing its content, not only its name. Example:

    curl -F file=@talk.mp4 -F epsilon=0.12 -F audio_level=weak http://127.0.0.1:8000/upload
"""


def _check_capacity(service: MediaCleanerService, user: Principal | None, declared_bytes: int) -> None:
    """Refuse before reading the body: a full queue (429) or a disk that would fill up (507)."""
    settings = service.settings
    pending = service.store.count_pending()
    if pending >= settings.max_pending_tasks:
        raise HTTPException(429, f"The queue is full ({pending} videos waiting). Try again in a minute.",
                            headers={"Retry-After": str(QUEUE_FULL_RETRY_S)})
    if user is not None and settings.max_pending_per_user is not None:
        mine = service.store.count_pending(user.user_id)
        if mine >= settings.max_pending_per_user:
            raise HTTPException(429, f"You already have {mine} videos waiting (the limit per user is "
                                     f"{settings.max_pending_per_user}). Try again when one has finished.",
                                headers={"Retry-After": str(QUEUE_FULL_RETRY_S)})
    free = shutil.disk_usage(settings.input_dir).free
    if free - declared_bytes < settings.min_free_disk_gb * 1024 ** 3:
        raise disk_full_error()


def _check_media(settings, info) -> None:
    """Limits on what the probe found: refused up front, not after an hour of work."""
    if info.duration_s > settings.max_duration_s:
        raise HTTPException(413, f"The video is {info.duration_s / 60:.0f} minutes long; this server accepts "
                                 f"at most {settings.max_duration_s / 60:.0f} minutes. Trim it and upload again.")
    if info.width > settings.max_width or info.height > settings.max_height:
        raise HTTPException(413, f"The video is {info.width}×{info.height}; this server accepts at most "
                                 f"{settings.max_width}×{settings.max_height}. Scale it down and upload again.")
    if min(info.width, info.height) < settings.min_side:
        raise HTTPException(422, f"The video is only {info.width}×{info.height} pixels; at least "
                                 f"{settings.min_side} pixels per side are needed.")
    if info.fps > settings.max_fps:
        raise HTTPException(422, f"The video has {info.fps:g} frames per second; this server accepts at most "
                                 f"{settings.max_fps:g}.")


def _owner(user: Principal | None, requested: str | None) -> str | None:
    """The task's user_id: a key's own user (users may not claim another), or the form's value."""
    if user is None or (user.is_admin and requested):
        return requested
    if requested and requested != user.user_id:
        raise HTTPException(403, f"user_id {requested!r} is not yours; leave it out or send {user.user_id!r}.")
    return user.user_id


def _text_fields(fields: dict[str, str]) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for name, limit in TEXT_FIELD_LIMITS.items():
        value = fields.get(name, "").strip() or None
        if value is not None and len(value) > limit:
            raise ParameterError(name, f"{name} is {len(value)} characters long; at most {limit} are allowed")
        values[name] = value
    return values


async def _upload(request: Request, service: MediaCleanerService, user: Principal | None) -> JSONResponse:
    settings = service.settings
    declared = request.headers.get("content-length", "")
    await anyio.to_thread.run_sync(_check_capacity, service, user, int(declared) if declared.isdigit() else 0)
    task_id = uuid.uuid4().hex
    part_path = settings.input_dir / upload_part_name(task_id)
    received = await receive_multipart(request, part_path, settings.max_upload_bytes,
                                       settings.supported_video_formats,
                                       min_free_bytes=int(settings.min_free_disk_gb * 1024 ** 3))
    try:
        if received.path is None:
            raise HTTPException(422, "No file in the upload: send the video in the multipart field 'file' "
                                     "(curl -F file=@video.mp4 …).")
        extension = Path(received.filename).suffix.lower()   # checked by receive_multipart
        if received.size == 0:
            raise HTTPException(400, "The uploaded file is empty (0 bytes).")
        unknown = sorted(set(received.fields) - KNOWN_FIELDS)
        if unknown:
            named = ", ".join(map(repr, unknown[:5])) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise HTTPException(422, f"Unknown field(s) {named}; the upload accepts file, "
                                     f"{', '.join(sorted(KNOWN_FIELDS))}.")
        try:
            params = ProtectionParams.parse(
                received.fields.get("epsilon"), received.fields.get("video_strength"),
                received.fields.get("every_n_frames"), received.fields.get("audio_level"),
                defaults=settings.default_params, protection=received.fields.get("protection"))
            text = _text_fields(received.fields)
            text["user_id"] = _owner(user, text["user_id"])
            if text["webhook_url"]:
                await anyio.to_thread.run_sync(check_webhook_url, text["webhook_url"],
                                               settings.webhook_allow_private)   # resolves a name: not on the loop
        except ParameterError as exc:
            raise HTTPException(422, exc.message)
        except WebhookRefused as exc:
            raise HTTPException(422, str(exc))
        try:
            info = await anyio.to_thread.run_sync(probe_media, part_path, service.ffmpeg.path)
        except MediaError as exc:
            raise HTTPException(415, str(exc))
        _check_media(settings, info)

        key = upload_key(task_id, extension)
        stored = service.media.local_path(key)
        task = Task(task_id=task_id, input_video=key,
                    original_filename=received.filename, size_bytes=received.size, media=info.summary(),
                    **params.as_dict(), **text)

        def record() -> None:
            part_path.rename(stored)
            try:
                service.media.publish(key)
                service.store.add(task)
            except BaseException:
                stored.unlink(missing_ok=True)
                raise

        await anyio.to_thread.run_sync(record)
    except BaseException:
        discard(part_path)
        raise
    # Off the event loop: the distributed queue publishes to its broker here (a network round trip, and
    # retries while the broker is away; the task is recorded already, so it is not lost either way).
    await anyio.to_thread.run_sync(service.pool.notify, task_id)
    return JSONResponse(task.public(), status_code=202, headers={"Location": f"/status/{task_id}"})


_upload_kwargs = dict(
    status_code=202, response_model=TaskView,
    responses={202: {"description": "Accepted: the task, queued", "headers": {
        "Location": {"description": "Where to poll the task", "schema": {"type": "string"}}}},
        **error_responses(400, 401, 403, 413, 415, 422, 429, 507)},
    openapi_extra={"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": UPLOAD_FORM_SCHEMA}}}},
)


@router.post("/upload", operation_id="upload_video", summary="Upload a video to protect",
             description=UPLOAD_DOC, **_upload_kwargs)
async def upload_video(request: Request, service: ServiceDep, user: CurrentUser) -> JSONResponse:
    return await _upload(request, service, user)


@router.post("/upload_with_webhook", operation_id="upload_video_with_webhook",
             summary="Upload a video (alias of /upload, kept for older clients)",
             description="Same as `POST /upload`; set `webhook_url` to be called when the task ends.",
             **_upload_kwargs)
async def upload_video_with_webhook(request: Request, service: ServiceDep, user: CurrentUser) -> JSONResponse:
    return await _upload(request, service, user)
