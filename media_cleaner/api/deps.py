"""Shared request dependencies, as ``Annotated`` aliases the routers declare."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request

from ..models import Task
from ..service import MediaCleanerService
from ..store import TaskNotFound


def get_service(request: Request) -> MediaCleanerService:
    return request.app.state.service


ServiceDep = Annotated[MediaCleanerService, Depends(get_service)]

TaskIdPath = Annotated[str, Path(description="The id returned by POST /upload",
                                 examples=["3f2b9c1e8a7d4f60b1c2d3e4f5a6b7c8"], max_length=64)]


def get_task(task_id: TaskIdPath, service: ServiceDep) -> Task:
    try:
        return service.store.get(task_id)
    except TaskNotFound:
        raise HTTPException(404, f"No task with id {task_id!r}. Check the id returned by POST /upload.")


TaskDep = Annotated[Task, Depends(get_task)]
