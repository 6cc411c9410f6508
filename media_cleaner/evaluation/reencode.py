"""The social-platform style re-encode: what a scraper actually downloads, so every figure is also measured
after it.

Platforms shrink uploads and compress them hard. We imitate that with the shorter side scaled to at most
720 lines (720p, portrait too), libx264 CRF 28 and AAC 128 kbit/s: a perturbation that does not survive
this protects only the file as delivered, not the copies people will find online.
"""
from __future__ import annotations

from pathlib import Path

from media_cleaner.media.ffmpeg import (
    SOUND_DEMUXERS,
    FFmpegError,
    find_ffmpeg,
    run_ffmpeg,
    user_media_input_args,
)
from media_cleaner.evaluation import EvaluationError

MAX_LINES = 720
CRF = 28
AUDIO_BITRATE = "128k"

# Shorter side to at most 720 (even, as yuv420p needs), the other side kept in proportion (-2: even).
SCALE = (f"scale=w='if(gte(iw,ih),-2,min({MAX_LINES},trunc(iw/2)*2))':h='if(gte(iw,ih),min({MAX_LINES},trunc(ih/2)*2),-2)'"
         ":flags=bicubic")


def reencode_command(source: str | Path, target: str | Path, ffmpeg: str | None = None,
                     threads: int = 2) -> list[str]:
    """The ffmpeg argv; ``ffmpeg`` is the executable (looked up with :func:`find_ffmpeg` when None)."""
    return [ffmpeg or find_ffmpeg(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-threads", str(threads), *user_media_input_args(), "-i", str(source), "-map", "0:V:0", "-map", "0:a:0?",
            "-vf", SCALE, "-c:v", "libx264", "-crf", str(CRF), "-preset", "medium", "-pix_fmt", "yuv420p",
            "-threads", str(threads), "-c:a", "aac", "-b:a", AUDIO_BITRATE, "-map_metadata", "-1",
            "-movflags", "+faststart", str(target)]


def platform_reencode(source: str | Path, target: str | Path, ffmpeg: str | None = None,
                      threads: int = 2, cancel=None) -> Path:
    """Write the platform re-encode of ``source`` to ``target`` (an .mp4); return ``target``."""
    try:
        run_ffmpeg(reencode_command(source, target, find_ffmpeg(ffmpeg), threads), registry=cancel)
    except FFmpegError as exc:
        raise EvaluationError(f"the platform re-encode of {Path(source).name} failed: {exc.reason}") from exc
    return Path(target)


def aac_control(source: str | Path, target: str | Path, ffmpeg: str | None = None) -> Path:
    """The clean soundtrack of ``source`` through the re-encode's AAC alone (an .m4a at ``target``): the control
    a protected sound after the re-encode is compared with, so that the codec's own change is not counted."""
    args = [find_ffmpeg(ffmpeg), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            *user_media_input_args(SOUND_DEMUXERS), "-i", str(source), "-map", "0:a:0", "-vn", "-c:a", "aac", "-b:a", AUDIO_BITRATE, str(target)]
    try:
        run_ffmpeg(args)
    except FFmpegError as exc:
        raise EvaluationError(f"the AAC control of {Path(source).name} failed: {exc.reason}") from exc
    return Path(target)
