"""One task's heavy work: protect the video, then measure its protection report.

A :class:`Job` carries everything that work needs and nothing of the server's state (it is picklable), so the
same :func:`run_job` runs in a worker thread or in an engine process (:mod:`media_cleaner.service.queue.engine_process`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from media_cleaner.evaluation.report import build_task_report
from media_cleaner.evaluation.report import warm_up as warm_up_report
from media_cleaner.params import ProtectionParams
from media_cleaner.media.ffmpeg import find_ffmpeg
from media_cleaner.media.probe import MediaInfo, probe_media
from media_cleaner.media.cancel import CancelToken, TaskCancelled
from media_cleaner.media.pipeline import protect_video
from media_cleaner.protection.seams import Protectors
from media_cleaner.protection.registry import warm_up_engines

log = logging.getLogger("media_cleaner.queue")

ProtectorFactory = Callable[[ProtectionParams, int], Protectors]
# The protection's share of a task's progress when a report follows; the report fills the rest.
PROTECT_SHARE = 0.9


@dataclass(frozen=True)
class Job:
    task_id: str
    input_path: Path
    output_path: Path
    params: ProtectionParams
    temp_dir: Path              # the task's scratch folder; the worker removes it
    threads: int                # the worker's share of the cores, for ffmpeg and torch
    crf: int
    preset: str
    audio_bitrate: str
    ffmpeg: str | None
    stall_timeout_s: float      # the ffmpeg watchdog (pipeline)
    max_duration_s: float | None  # checked again on the decoded frames' timestamps
    preview_path: Path | None   # where the report's before/after sheet goes; None: no report
    data_dir: Path              # the report names its sheet relative to this folder


def run_job(job: Job, make_protectors: ProtectorFactory, progress: Callable[[float], None],
            cancel: CancelToken) -> dict:
    """Protect ``job.input_path`` into ``job.output_path``; the task's report (JSON-safe).

    Pipeline errors propagate (MediaError, TaskCancelled, …); a report that cannot be made does not.
    """
    started = time.monotonic()
    # ffmpeg is looked up and the input probed once for the whole job: the pipeline and the report share them.
    ffmpeg = find_ffmpeg(job.ffmpeg)
    info = probe_media(job.input_path, ffmpeg)
    protectors = make_protectors(job.params, job.threads)
    # The report takes seconds to tens of seconds whatever the video's length: its share of the bar.
    protect_share = 1.0 if job.preview_path is None else PROTECT_SHARE
    protect_video(job.input_path, job.output_path, protectors,
                  progress=lambda fraction: progress(protect_share * fraction), cancel=cancel,
                  temp_dir=job.temp_dir, threads=job.threads, crf=job.crf, preset=job.preset,
                  audio_bitrate=job.audio_bitrate, ffmpeg=ffmpeg, info=info, stall_timeout_s=job.stall_timeout_s,
                  max_duration_s=job.max_duration_s)
    protect_seconds = time.monotonic() - started
    if job.preview_path is None:
        return {"protect_seconds": round(protect_seconds, 2)}
    return _report(job, job.preview_path, protect_seconds, cancel,
                   lambda fraction: progress(protect_share + (1 - protect_share) * fraction), ffmpeg, info)


def _report(job: Job, preview: Path, protect_seconds: float, cancel: CancelToken,
            progress: Callable[[float], None], ffmpeg: str, info: MediaInfo) -> dict:
    """The task's protection report (cheap figures and the before/after sheet). A failure to make it is
    recorded in the report and never fails the task; only a cancel (TaskCancelled) gets through."""
    try:
        report = build_task_report(job.input_path, job.output_path, preview,
                                   protect_seconds=round(protect_seconds, 2), ffmpeg=ffmpeg, cancel=cancel,
                                   progress=progress, original_info=info)
    except TaskCancelled:
        preview.unlink(missing_ok=True)
        raise
    except Exception as exc:
        cancel.raise_if_cancelled()   # a killed ffmpeg child surfaces as an error: it was the cancel
        log.warning("task %s: the protection report could not be made: %s", job.task_id, exc, exc_info=True)
        preview.unlink(missing_ok=True)
        return {"protect_seconds": round(protect_seconds, 2),
                "error": f"The protection report could not be made ({type(exc).__name__}: {exc})."}
    report["preview"] = str(preview.relative_to(job.data_dir))
    return report


def warm_up(report: bool, threads: int | None = None) -> None:
    """Load what the first task would otherwise load: the engines' models and, with ``report``, the task
    report's; ``threads`` sets torch's share first. Runs wherever the jobs will run (a worker's background
    thread, or an engine process at its start). Failures are logged, never raised: the first task reports the
    same problem in its own words."""
    started = time.monotonic()
    try:
        if threads is not None:
            import torch
            torch.set_num_threads(threads)
        warm_up_engines()
    except Exception:
        log.exception("warming up the protection engines failed")
    else:
        log.info("protection engines ready (%.1f s)", time.monotonic() - started)
    if report:
        try:
            warm_up_report()
        except Exception:
            log.warning("loading the protection report's models failed", exc_info=True)
