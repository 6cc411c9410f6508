"""Task resources: ``GET /status/{id}``, ``GET /tasks``, ``DELETE /tasks/{id}``.

The two reads are ``async def``: they run on the event loop, skipping a thread-pool hop per request (the
clients poll them). They cannot block: the store's reads take no lock and touch no file (``TaskStore`` keeps
every task in memory; only writers take its lock, and hold it during fsync). ``DELETE`` writes the store, so
it stays a plain ``def`` and runs in the thread pool.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from media_cleaner.service.tasks import TaskList, TaskStatus, TaskView, utc_now
from media_cleaner.service.retention import delete_task_media
from media_cleaner.service.store.json_store import TaskNotFound
from media_cleaner.api.deps import CurrentUser, ServiceDep, TaskDep
from media_cleaner.api.errors import error_responses

router = APIRouter(tags=["tasks"])


@router.get("/status/{task_id}", operation_id="get_task_status", response_model=TaskView,
            summary="A task's status and progress", responses=error_responses(404),
            description="`progress` is 0–100 and `eta_s` the estimated seconds left while processing; "
                        "`queue_position` (1 = next) while pending; `download_url` appears once the protected "
                        "file is ready.")
async def get_status(task: TaskDep, service: ServiceDep) -> dict:
    view = task.public()
    if task.status == TaskStatus.pending:
        view["queue_position"] = service.store.queue_position(task.task_id)
    return view


@router.get("/tasks", operation_id="list_tasks", response_model=TaskList, summary="List tasks, newest first",
            responses=error_responses(401, 422))
async def list_tasks(service: ServiceDep, user: CurrentUser,
                     user_id: Annotated[str | None, Query(description="Only this owner's tasks",
                                                          max_length=200)] = None,
                     status: Annotated[TaskStatus | None, Query(description="Only tasks in this state")] = None,
                     limit: Annotated[int, Query(ge=1, le=500, description="Page size")] = 50,
                     offset: Annotated[int, Query(ge=0, description="Tasks to skip")] = 0) -> dict:
    # Non-blocking: TaskStore.list filters a lock-free snapshot in memory (no file, no lock).
    if user is not None and not user.is_admin:
        user_id = user.user_id   # a user lists only their own tasks, whatever they ask for
    tasks, total = service.store.list(user_id=user_id, status=status, limit=limit, offset=offset)
    return {"tasks": [t.public() for t in tasks], "total": total, "limit": limit, "offset": offset}


@router.delete("/tasks/{task_id}", operation_id="cancel_or_delete_task", responses=error_responses(404),
               summary="Cancel a queued or running task, or delete a finished one",
               description="A pending or processing task is cancelled (a running one stops within about a "
                           "second and its partial output is removed); the answer is the task. A finished "
                           "task is deleted with its files; the answer is `{\"task_id\": …, \"deleted\": true}`.")
def cancel_or_delete_task(task: TaskDep, service: ServiceDep) -> dict:
    # A plain def (thread pool): it writes the store (fsync, under the store's lock) and deletes files.
    store = service.store
    active = [TaskStatus.pending, TaskStatus.processing]
    # The new state is persisted first, then acted on: a crash in between leaves it cancelled.
    cancelled = store.transition(task.task_id, active, status=TaskStatus.cancelled,
                                 completed_at=utc_now(), eta_s=None)
    if cancelled is not None:
        service.pool.cancel(task.task_id)
        if cancelled.input_video:
            service.media.delete(cancelled.input_video)
        return cancelled.public()
    try:
        removed = store.delete(task.task_id)
    except TaskNotFound:   # deleted by a concurrent request
        return {"task_id": task.task_id, "deleted": True}
    delete_task_media(service.media, removed)
    return {"task_id": task.task_id, "deleted": True}
