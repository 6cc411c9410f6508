"""Shared request dependencies, as ``Annotated`` aliases the routers declare.

``CurrentUser`` is the caller behind the ``X-API-Key`` header (None when the server has no keys configured:
open mode). ``TaskDep`` is a task the caller may see: another user's task answers 404, exactly like a task
that does not exist, so ids cannot be probed.

These dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool,
one hop (and one wake-up of the event loop) per dependency per request, which was a large part of a status
poll's CPU. An ``async def`` runs on the event loop itself, so it must never wait: each one below only reads
memory (the app's state, the key ring loaded at start, the store's lock-free reads; see each docstring). None
touches the disk or takes a lock a writer may hold while it writes (the store's lock is held during fsync).
"""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, Security
from fastapi.security import APIKeyHeader

from media_cleaner.service.auth import Principal
from media_cleaner.service.tasks import Task
from media_cleaner.service.core import MediaCleanerService
from media_cleaner.service.store.json_store import TaskNotFound

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="Your API key (only when the server has keys configured)")


async def get_service(request: Request) -> MediaCleanerService:
    """Non-blocking: an attribute of the app's state."""
    return request.app.state.service


ServiceDep = Annotated[MediaCleanerService, Depends(get_service)]


# Query parameters that look like a credential: refused, because URLs end up in access logs, proxies' logs and
# browser histories (and the server's log never shows their value, see logs.NoSecretsInURLs).
SECRET_QUERY_PARAMETERS = frozenset({"api_key", "apikey", "api-key", "key", "x-api-key", "token", "access_token"})


async def get_current_user(request: Request, service: ServiceDep,
                           key: Annotated[str | None, Security(api_key_header)]) -> Principal | None:
    """Non-blocking: one SHA-256 of the key and a look-up in the key ring, which lives in memory (loaded from
    its file once, at start-up), with no lock."""
    if any(name.lower() in SECRET_QUERY_PARAMETERS for name in request.query_params):
        raise HTTPException(400, "Do not put the API key in the URL (URLs are logged); send it in the X-API-Key "
                                 "header instead.")
    if not service.keys.configured:
        return None
    if not key:
        raise HTTPException(401, "This server needs an API key: send it in the X-API-Key header.",
                            headers={"WWW-Authenticate": "X-API-Key"})
    principal = service.keys.authenticate(key)
    if principal is None:
        raise HTTPException(401, "The API key is not valid (revoked or mistyped).",
                            headers={"WWW-Authenticate": "X-API-Key"})
    return principal


CurrentUser = Annotated[Principal | None, Depends(get_current_user)]

TaskIdPath = Annotated[str, Path(description="The id returned by POST /upload",
                                 examples=["3f2b9c1e8a7d4f60b1c2d3e4f5a6b7c8"], max_length=64)]


def may_see(user: Principal | None, task: Task) -> bool:
    return user is None or user.is_admin or task.user_id == user.user_id


async def get_task(task_id: TaskIdPath, service: ServiceDep, user: CurrentUser) -> Task:
    """Non-blocking: ``TaskStore.get`` takes no lock and reads no file (a dict look-up and a copy of one task
    in memory), so it never waits for a writer's fsync."""
    try:
        task = service.store.get(task_id)
    except TaskNotFound:
        task = None
    if task is None or not may_see(user, task):
        raise HTTPException(404, f"No task with id {task_id!r}. Check the id returned by POST /upload.")
    return task


TaskDep = Annotated[Task, Depends(get_task)]
