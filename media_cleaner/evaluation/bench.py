"""The speed bench (``python -m media_cleaner bench IN``): what protection costs in time and memory.

Each run times ``protect_video`` (the protectors are built before the clock starts: loading models is a
one-off the service pays at start-up) and a plain ffmpeg re-encode of the same input with the same encoder
settings (libx264 CRF/preset, AAC bitrate, threads), in alternating order so that a busy machine slows both
alike. The figure is the ratio protect / plain, median over the runs: the machine's speed cancels out.
"""
from __future__ import annotations

import resource
import shlex
import statistics
import tempfile
import time
from pathlib import Path

from media_cleaner.config import Settings
from media_cleaner.media.ffmpeg import FFmpegError, find_ffmpeg, run_ffmpeg, user_media_input_args
from media_cleaner.params import ProtectionParams
from media_cleaner.media.pipeline import protect_video
from media_cleaner.protection.registry import build_protectors
from media_cleaner.evaluation import EvaluationError
from media_cleaner.evaluation.dataset import pass_through_protectors
from media_cleaner.evaluation.media import probe


def plain_reencode_command(source: Path, target: Path, settings: Settings, threads: int, ffmpeg: str) -> list[str]:
    """The same encode the pipeline does (libx264 CRF/preset, yuv420p, AAC bitrate), with no protection."""
    return [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-threads", str(threads),
            *user_media_input_args(), "-i", str(source), "-map", "0:V:0", "-map", "0:a:0?", "-c:v", "libx264", "-crf", str(settings.video_crf),
            "-preset", settings.video_preset, "-pix_fmt", "yuv420p", "-threads", str(threads),
            "-c:a", "aac", "-b:a", settings.audio_bitrate, "-map_metadata", "-1", "-movflags", "+faststart",
            str(target)]


def _peak_rss_mb(who: int) -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(who).ru_maxrss / 1024


def bench(source: str | Path, params: ProtectionParams, *, runs: int = 3, threads: int = 2,
          settings: Settings | None = None, pass_through: bool = False) -> dict:
    """Time protect against a plain re-encode ``runs`` times; medians, ratio, frames/s and peak memory.

    ``pass_through``: the engines off, which measures what the pipeline alone costs."""
    if runs < 1:
        raise EvaluationError("--runs must be at least 1.")
    settings = settings or Settings()
    ffmpeg = find_ffmpeg(settings.ffmpeg)
    info = probe(source, ffmpeg)
    t0 = time.monotonic()
    protectors = (pass_through_protectors(params, threads) if pass_through
                  else build_protectors(params, threads=threads))
    build_seconds = time.monotonic() - t0
    protect_times, plain_times = [], []
    with tempfile.TemporaryDirectory(prefix="media_cleaner_bench_") as work:
        work = Path(work)
        plain = plain_reencode_command(Path(source), work / "plain.mp4", settings, threads, ffmpeg)
        for run in range(runs):
            def protect():
                start = time.monotonic()
                protect_video(source, work / "protected.mp4", protectors, info=info,
                              temp_dir=work / "tmp", threads=threads, crf=settings.video_crf,
                              preset=settings.video_preset, audio_bitrate=settings.audio_bitrate, ffmpeg=ffmpeg)
                protect_times.append(time.monotonic() - start)

            def reencode():
                start = time.monotonic()
                try:
                    run_ffmpeg(plain)
                except FFmpegError as exc:
                    raise EvaluationError(f"the plain re-encode failed: {exc.reason}") from exc
                plain_times.append(time.monotonic() - start)

            for step in ((protect, reencode) if run % 2 == 0 else (reencode, protect)):
                step()
    ratios = [p / q for p, q in zip(protect_times, plain_times)]
    protect_median = statistics.median(protect_times)
    parts = ["python", "-m", "media_cleaner", "bench", str(source), "--epsilon", str(params.epsilon),
             "--video-strength", str(params.video_strength), "--every-n-frames", str(params.every_n_frames),
             "--audio-level", params.audio_level, "--runs", str(runs), "--threads", str(threads)]
    if pass_through:
        parts.append("--pass-through")
    return {"input": str(source), "engines": "off (pass-through)" if pass_through else "on",
            "frames": info.frame_count, "size": [info.width, info.height],
            "duration_s": info.duration_s, "runs": runs, "threads": threads,
            "settings": {"epsilon": params.epsilon, "video_strength": params.video_strength,
                         "every_n_frames": params.every_n_frames, "audio_level": params.audio_level,
                         "crf": settings.video_crf, "preset": settings.video_preset,
                         "audio_bitrate": settings.audio_bitrate},
            "protect_seconds": protect_times, "plain_seconds": plain_times, "ratios": ratios,
            "ratio_median": statistics.median(ratios), "protect_median_s": protect_median,
            "plain_median_s": statistics.median(plain_times),
            "frames_per_second": info.frame_count / protect_median if protect_median > 0 else None,
            "engine_build_s": build_seconds,
            "peak_rss_mb": _peak_rss_mb(resource.RUSAGE_SELF),
            "peak_child_rss_mb": _peak_rss_mb(resource.RUSAGE_CHILDREN),
            "plain_command": shlex.join(["ffmpeg", *plain[1:-1], "plain.mp4"]),
            "command": shlex.join(parts)}


def format_bench(result: dict) -> str:
    width, height = result["size"]
    lines = [f"input: {result['input']} ({width}x{height}, {result['frames']} frames, {result['duration_s']:.2f} s)",
             f"settings: {result['settings']}, threads {result['threads']}, engines {result['engines']}", ""]
    for run, (p, q, r) in enumerate(zip(result["protect_seconds"], result["plain_seconds"], result["ratios"]), 1):
        lines.append(f"run {run}: protect {p:7.2f} s   plain re-encode {q:7.2f} s   ratio {r:5.2f}")
    lines += ["",
              f"ratio protect / plain re-encode (median of {result['runs']}): {result['ratio_median']:.2f}",
              (f"protect: median {result['protect_median_s']:.2f} s, {result['frames_per_second']:.1f} frames/s "
               f"(engines built in {result['engine_build_s']:.2f} s, not counted)"),
              (f"peak memory: this process {result['peak_rss_mb']:.0f} MB, largest ffmpeg child "
               f"{result['peak_child_rss_mb']:.0f} MB"),
              f"plain re-encode: {result['plain_command']}",
              "", "reproduce with:", f"  {result['command']}"]
    return "\n".join(lines)
