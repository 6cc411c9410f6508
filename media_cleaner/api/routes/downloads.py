"""``GET /download/{id}``: the protected file, with a friendly name and byte ranges (resumable)."""
from __future__ import annotations


from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from media_cleaner.service.tasks import TaskStatus
from media_cleaner.service.files import download_name
from media_cleaner.api.deps import ServiceDep, TaskDep
from media_cleaner.api.errors import error_responses

router = APIRouter(tags=["download"])


@router.get("/download/{task_id}", operation_id="download_protected_video",
            summary="Download the protected video", response_class=FileResponse,
            responses={200: {"content": {"video/mp4": {}}, "description": "The protected mp4"},
                       206: {"description": "Part of the file (Range request)"},
                       **error_responses(401, 404, 409, 410)})
def download(task: TaskDep, service: ServiceDep) -> FileResponse:
    if task.status != TaskStatus.completed:
        hint = {TaskStatus.pending: "it is waiting in the queue",
                TaskStatus.processing: f"it is being processed ({task.progress:.0f} % done)",
                TaskStatus.failed: f"it failed: {task.error_message}",
                TaskStatus.cancelled: "it was cancelled"}[task.status]
        raise HTTPException(409, f"The protected video is not available: {hint}.")
    if task.expired_at:
        raise HTTPException(410, f"The protected video expired on {task.expired_at[:10]} and was deleted "
                                 f"(kept {service.settings.output_retention_hours:g} hours). Upload the "
                                 f"original again to get a new one.")
    path = service.media.serve(task.output_video or "")
    if path is None:
        raise HTTPException(410, "The protected video is no longer on the server (expired or removed). "
                                 "Upload the original again to get a new one.")
    return FileResponse(path, media_type="video/mp4", filename=download_name(task.original_filename))
