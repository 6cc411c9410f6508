"""``GET /report/{id}`` and ``GET /report/{id}/preview.png``: the protection report of a completed task.

The worker measures the report when the task completes (:mod:`media_cleaner.evaluation.report`): PSNR and
SSIM, the MTCNN surrogate's detection rate on a frame sample, the speaker similarity, the time taken, and a
before/after sheet.
"""
from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from media_cleaner.service.tasks import Task, TaskStatus
from media_cleaner.api.deps import ServiceDep, TaskDep
from media_cleaner.api.errors import error_responses

router = APIRouter(tags=["report"])

_NOT_DONE = {TaskStatus.pending: "it is waiting in the queue",
             TaskStatus.processing: "it is still being processed",
             TaskStatus.failed: "the task failed",
             TaskStatus.cancelled: "the task was cancelled"}


def _completed_report(task: Task) -> dict:
    if task.status != TaskStatus.completed:
        raise HTTPException(409, f"The report is not ready: {_NOT_DONE[task.status]}. It appears when the task "
                                 f"is completed.")
    if not task.report:
        raise HTTPException(409, "This task has no report (it was completed by a server without reports).")
    return task.report


@router.get("/report/{task_id}", operation_id="get_protection_report", summary="The task's protection report",
            responses=error_responses(404, 409))
def report(task: TaskDep) -> dict:
    """Figures measured when the task completed: ``psnr``/``ssim`` (luma, sampled frames), ``detection``
    (the MTCNN surrogate's rates; white box), ``speaker`` (Resemblyzer similarity and match threshold;
    white box), ``protect_seconds``, and ``preview_url`` for the before/after sheet. A figure that could not
    be measured is left out with a ``note``; a report that failed has ``error``."""
    figures = dict(_completed_report(task))
    figures.pop("preview", None)   # a server path; clients use preview_url
    preview_url = f"/report/{task.task_id}/preview.png" if task.report.get("preview") else None
    return {"task_id": task.task_id, **figures, "preview_url": preview_url}


@router.get("/report/{task_id}/preview.png", operation_id="get_protection_preview",
            summary="The before/after sheet (PNG)", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}, "description": "original frames, the same protected "
                             "frames, and the perturbation amplified"}, **error_responses(404, 409, 410)})
def preview(task: TaskDep, service: ServiceDep) -> FileResponse:
    figures = _completed_report(task)
    if not figures.get("preview"):
        raise HTTPException(409, "This task's report has no preview sheet: "
                                 f"{figures.get('error', 'it was not rendered')}")
    path = service.media.serve(figures["preview"])
    if path is None:
        raise HTTPException(410, "The preview is no longer on the server (expired or removed).")
    return FileResponse(path, media_type="image/png", filename=f"{task.task_id}_preview.png")
