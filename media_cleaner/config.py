"""Server settings: one validated object, read from defaults, ``MEDIA_CLEANER_*`` environment variables and
``run_server.py`` flags (in that order of precedence, lowest first).

``data_dir`` is the root of the five folders the service owns (created on start):
``videos_input/``, ``videos_output/``, ``videos_temp/``, ``server_logs/``, ``queue_db/``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from media_cleaner.params import (
    AUDIO_LEVELS,
    DEFAULT_AUDIO_LEVEL,
    DEFAULT_EPSILON,
    DEFAULT_EVERY_N_FRAMES,
    DEFAULT_VIDEO_STRENGTH,
    EPSILON_RANGE,
    EVERY_N_FRAMES_RANGE,
    VIDEO_STRENGTH_RANGE,
    ProtectionParams,
    normalize_audio_level,
)

SUPPORTED_VIDEO_FORMATS = [".mp4", ".mov", ".avi", ".mkv", ".webm", ".flv", ".m4v"]
DATA_FOLDERS = ("videos_input", "videos_output", "videos_temp", "server_logs", "queue_db")


class Settings(BaseSettings):
    """Everything an operator can set. Environment: ``MEDIA_CLEANER_<FIELD>`` (e.g. MEDIA_CLEANER_PORT)."""

    model_config = SettingsConfigDict(env_prefix="MEDIA_CLEANER_", extra="ignore", validate_assignment=True)

    # Network
    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 exposes the server to the network")
    port: int = Field(8000, ge=1, le=65535)
    cors_origins: list[str] = Field(default_factory=list,
                                    description='Browser origins allowed to call the API, e.g. ["https://app.example"]')

    # Queue and limits
    max_concurrent_tasks: int = Field(3, ge=1, le=64, description="Worker threads (videos processed at once)")
    max_video_size_gb: float = Field(2.0, gt=0, le=1024)
    supported_video_formats: list[str] = Field(default_factory=lambda: list(SUPPORTED_VIDEO_FORMATS))
    max_attempts: int = Field(3, ge=1, le=20, description="A task interrupted this many times fails")
    ffmpeg_stall_timeout_s: float = Field(60.0, ge=1.0, le=3600.0,
                                          description="An ffmpeg child that reads or writes no frame for this "
                                                      "long is killed and its task fails; /health reports a "
                                                      "worker without progress for this long")
    task_stall_timeout_s: float = Field(900.0, ge=1.0, le=86400.0,
                                        description="An engine process that reports no progress for this long "
                                                    "(hung, or stopped with SIGSTOP) is killed and its task "
                                                    "fails")
    progress_write_interval_s: float = Field(1.0, ge=0.0, le=60.0,
                                             description="At most one store write per task per interval for progress")

    # Input limits, checked on the probe before a task exists (refused up front, not after an hour of work)
    max_duration_s: float = Field(3 * 3600, gt=0, description="Longest video accepted, in seconds")
    max_width: int = Field(7680, ge=16, description="Largest display width accepted (8K)")
    max_height: int = Field(7680, ge=16, description="Largest display height accepted")
    min_side: int = Field(16, ge=2, description="Smallest width/height accepted (a 1×1 video has no face)")
    max_fps: float = Field(240.0, gt=0, description="Highest average frame rate accepted")
    max_pending_tasks: int = Field(100, ge=1, description="Queue size; beyond it uploads get 429")
    max_pending_per_user: int | None = Field(None, ge=1, description="Per-user queue share (None: no limit)")
    min_free_disk_gb: float = Field(1.0, ge=0, description="Uploads are refused (507) below this free space")

    # Access (API keys: see SERVER_DEPLOYMENT.md; without keys the server should stay on localhost)
    api_keys_file: Path | None = Field(None, description="File of hashed API keys (python -m media_cleaner keys)")
    api_keys: str | None = Field(None, description="Hashed keys inline, 'sha256hex:user:role' separated by commas")

    # Retention
    keep_inputs: bool = Field(False, description="Keep the uploaded original after its task finishes")
    output_retention_hours: float = Field(7 * 24, gt=0, description="Protected files are deleted after this")
    task_retention_days: float = Field(30, gt=0, description="Finished tasks leave tasks.json after this")
    cleanup_interval_s: float = Field(600, gt=0, description="How often expired files and tasks are removed")

    # Where tasks are recorded: "json" (queue_db/tasks.json, the embedded default) or "redis" (shared by several
    # machines; SERVER_DEPLOYMENT.md, "When one machine is not enough")
    store: Literal["json", "redis"] = Field("json", description="Task store: json (embedded) or redis (shared)")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="The Redis of the redis store")
    redis_prefix: str = Field("mc:", description="Prefix of the store's keys in Redis")

    # Who runs the tasks: "threads" (worker threads inside the server, the embedded default) or "celery" (Celery
    # workers on any number of machines, `python -m media_cleaner worker`; needs the redis store and a data
    # folder every machine shares)
    backend: Literal["threads", "celery"] = Field("threads", description="threads (embedded) or celery (distributed)")
    broker_url: str | None = Field(None, description="Celery's broker (default: redis_url)")
    queue_name: str = Field("media-cleaner", pattern=r"^[\w.-]+$", description="Celery queue the tasks go to")
    worker_lease_s: float = Field(30.0, ge=1.0, le=3600.0,
                                  description="A worker renews a lease on each task it runs; a task whose lease "
                                              "ran out (the worker was killed or lost) is run again elsewhere")
    visibility_timeout_s: float = Field(24 * 3600, ge=60.0,
                                        description="Celery redelivers an unacknowledged message after this; "
                                                    "longer than the longest task")

    # Webhooks
    webhook_secret: str | None = Field(None, description="HMAC-SHA256 key that signs webhook bodies")
    webhook_allow_private: bool = Field(False, description="Allow webhooks to loopback/private/link-local hosts")
    webhook_max_attempts: int = Field(6, ge=1, le=20)
    webhook_timeout_s: float = Field(10.0, gt=0)

    # Processing defaults (a request may override them within their ranges)
    default_epsilon: float = Field(DEFAULT_EPSILON, ge=EPSILON_RANGE[0], le=EPSILON_RANGE[1])
    default_video_strength: float = Field(DEFAULT_VIDEO_STRENGTH, ge=VIDEO_STRENGTH_RANGE[0], le=VIDEO_STRENGTH_RANGE[1])
    default_every_n_frames: int = Field(DEFAULT_EVERY_N_FRAMES, ge=EVERY_N_FRAMES_RANGE[0], le=EVERY_N_FRAMES_RANGE[1])
    default_audio_level: str = Field(DEFAULT_AUDIO_LEVEL, description=f"one of {', '.join(AUDIO_LEVELS)}")
    task_reports: bool = Field(True, description="Measure a protection report and preview sheet for every task")
    warm_up: bool = Field(True, description="Load the protection models at start-up, not on the first task")
    video_crf: int = Field(17, ge=0, le=51, description="libx264 quality; low so that perturbations survive")
    video_preset: str = Field("fast", description="libx264 preset (speed/size trade-off)")
    audio_bitrate: str = Field("192k")
    engine_processes: bool = Field(True, description="Run each worker's engines in a child process of its own, so "
                                                     "that the API stays fast while the workers are busy")
    engine_factory: str = Field("media_cleaner.protection.registry:build_protectors", pattern=r"^[\w.]+:\w+$",
                                description="'module:function' that builds a task's protectors in an engine "
                                            "process, called as f(params, threads=...)")

    # Paths and tools
    data_dir: Path = Field(Path("."), description="Root of videos_input/, videos_output/, videos_temp/, server_logs/, queue_db/")
    ffmpeg: str | None = Field(None, description="ffmpeg binary to use (else ffmpeg/ folder, imageio-ffmpeg, PATH)")

    # Logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_max_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    log_backup_count: int = Field(5, ge=0, le=100)

    @field_validator("default_audio_level")
    @classmethod
    def _audio_level(cls, value: str) -> str:
        return normalize_audio_level(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value):
        return value.upper() if isinstance(value, str) else value

    @field_validator("supported_video_formats")
    @classmethod
    def _extensions(cls, values: list[str]) -> list[str]:
        return [v.lower() if v.startswith(".") else "." + v.lower() for v in values]

    @model_validator(mode="after")
    def _celery_needs_redis(self) -> "Settings":
        if self.backend == "celery" and self.store != "redis":
            raise ValueError("backend 'celery' needs the shared task store: set MEDIA_CLEANER_STORE=redis "
                             "(workers on other machines cannot read queue_db/tasks.json)")
        return self

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @model_validator(mode="after")
    def _absolute_data_dir(self) -> "Settings":
        resolved = self.data_dir.expanduser().resolve()
        if resolved != self.data_dir:
            object.__setattr__(self, "data_dir", resolved)
        return self

    # Derived paths: one place, so nothing else joins folder names by hand.
    @property
    def input_dir(self) -> Path:
        return self.data_dir / "videos_input"

    @property
    def output_dir(self) -> Path:
        return self.data_dir / "videos_output"

    @property
    def temp_dir(self) -> Path:
        return self.data_dir / "videos_temp"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "server_logs"

    @property
    def queue_dir(self) -> Path:
        return self.data_dir / "queue_db"

    @property
    def tasks_file(self) -> Path:
        return self.queue_dir / "tasks.json"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_video_size_gb * 1024 ** 3)

    @property
    def default_params(self) -> ProtectionParams:
        return ProtectionParams(self.default_epsilon, self.default_video_strength,
                                self.default_every_n_frames, self.default_audio_level)

    @property
    def threads_per_worker(self) -> int:
        """Each worker's share of the cores, so that N workers never oversubscribe the machine."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // self.max_concurrent_tasks)

    def create_folders(self) -> None:
        for name in DATA_FOLDERS:
            (self.data_dir / name).mkdir(parents=True, exist_ok=True)

    def as_server_config(self) -> dict:
        """The seed's ``SERVER_CONFIG`` shape (kept for scripts that read it)."""
        return {
            "host": self.host,
            "port": self.port,
            "max_concurrent_tasks": self.max_concurrent_tasks,
            "max_video_size_gb": self.max_video_size_gb,
            "supported_video_formats": list(self.supported_video_formats),
            "processing": {
                "default_epsilon": self.default_epsilon,
                "default_video_strength": self.default_video_strength,
                "default_every_n_frames": self.default_every_n_frames,
                "default_audio_level": self.default_audio_level,
                "video_crf": self.video_crf,
                "video_preset": self.video_preset,
                "audio_bitrate": self.audio_bitrate,
            },
            "paths": {name: str(self.data_dir / name) for name in DATA_FOLDERS},
            "logging": {"level": self.log_level, "max_bytes": self.log_max_bytes,
                        "backup_count": self.log_backup_count},
        }


def load_settings(**overrides) -> Settings:
    """Settings from the environment, with explicit overrides (``None`` values are ignored): the flags of
    ``run_server.py`` win over ``MEDIA_CLEANER_*`` variables, which win over the defaults."""
    return Settings(**{key: value for key, value in overrides.items() if value is not None})
