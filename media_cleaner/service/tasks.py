"""The task record and its lifecycle states (pending → processing → completed | failed | cancelled)."""
from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema


class TaskStatus(str, Enum):
    pending = "pending"
    processing = "processing"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (TaskStatus.completed, TaskStatus.failed, TaskStatus.cancelled)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def claimed_fields(task: "Task") -> dict[str, Any]:
    """What changes when a worker starts ``task`` (pending -> processing): every store claims the same way."""
    return {"status": TaskStatus.processing, "started_at": utc_now(), "attempts": task.attempts + 1,
            "progress": 0.0, "eta_s": None, "error_message": None}


class Task(BaseModel):
    """One protection job. Unknown fields from a newer (or older) tasks.json are kept, not dropped."""

    model_config = ConfigDict(extra="allow", use_enum_values=False)

    task_id: str = Field(examples=["3f2b9c1e8a7d4f60b1c2d3e4f5a6b7c8"])
    input_video: str | None = Field(None, description="Stored upload, relative to the data folder")
    original_filename: str = Field(examples=["talk.mp4"])
    status: TaskStatus = TaskStatus.pending
    progress: float = Field(0.0, ge=0, le=100, description="Percent done")
    eta_s: float | None = Field(None, description="Estimated seconds left while processing")
    epsilon: float = Field(examples=[0.12])
    video_strength: float = Field(examples=[1.0])
    audio_level: str = Field(examples=["weak"])
    every_n_frames: int = Field(examples=[10])
    user_id: str | None = None
    notes: str | None = None
    webhook_url: str | None = None
    created_at: str = Field(default_factory=utc_now)
    started_at: str | None = None
    completed_at: str | None = None
    attempts: int = Field(0, description="Times a worker has started this task (runs a server crash interrupted "
                                         "are given back when the engines run in processes of their own)")
    server_crashes: int = Field(0, description="Times a crash of the server interrupted this task")
    output_video: str | None = Field(None, description="Protected file, relative to the data folder")
    error_message: str | None = None
    media: dict[str, Any] | None = Field(None, description="Probe of the input: duration, size, fps, frames, audio")
    report: dict[str, Any] | None = Field(None, description="Protection figures, once measured")
    size_bytes: int | None = Field(None, description="Size of the uploaded file")
    expired_at: str | None = Field(None, description="When the protected file was deleted by retention")
    webhook_status: str | None = Field(None, description="pending, delivered or failed")
    webhook_attempts: int = 0

    def public(self) -> dict[str, Any]:
        """The JSON a client sees, with a download link once the file is ready; no server paths."""
        data = self.model_dump(mode="json", exclude={"input_video", "output_video"})
        data["download_url"] = f"/download/{self.task_id}" if self.status == TaskStatus.completed else None
        return data


class TaskView(Task):
    """A task as the API returns it: without the server's paths of its files."""

    input_video: SkipJsonSchema[str | None] = Field(None, exclude=True)
    output_video: SkipJsonSchema[str | None] = Field(None, exclude=True)

    download_url: str | None = Field(None, examples=["/download/3f2b9c1e8a7d4f60b1c2d3e4f5a6b7c8"])
    queue_position: int | None = Field(None, description="While pending, in GET /status: 1 = the next to start")


class TaskList(BaseModel):
    tasks: list[TaskView]
    total: int = Field(description="Tasks matching the filters, before paging")
    limit: int
    offset: int


class ErrorBody(BaseModel):
    detail: Any = Field(description="What went wrong and what to do about it",
                        examples=["epsilon 0.5 is above the maximum 0.2 (allowed 0.04–0.2)"])
