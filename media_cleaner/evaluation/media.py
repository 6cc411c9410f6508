"""Reading what the evaluation compares: evenly sampled frames and the soundtrack of any video file.

Frames come out of ffmpeg upright (autorotation) as RGB uint8, the way a player shows them; sound comes out
as mono float32 at the rate asked for. Both work on any file ffmpeg reads, not only this service's outputs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from media_cleaner.media.ffmpeg import (
    SOUND_DEMUXERS,
    capture_ffmpeg,
    error_reason,
    find_ffmpeg,
    user_media_input_args,
)
from media_cleaner.media.probe import MediaInfo, probe_media
from media_cleaner.evaluation import EvaluationError


def require_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{what} {path} does not exist or is not a file.")
    return path


def probe(path: str | Path, ffmpeg: str | None = None) -> MediaInfo:
    return probe_media(require_file(path, "the video"), find_ffmpeg(ffmpeg))


def even_indices(frame_count: int, samples: int) -> list[int]:
    """``samples`` frame indices spread evenly over the clip (every frame when samples is 0 or too many)."""
    if samples <= 0 or samples >= frame_count:
        return list(range(frame_count))
    # Centre of each of `samples` equal slices, so the first and last frames (often fades) weigh no more.
    return sorted({int((i + 0.5) * frame_count / samples) for i in range(samples)})


def matching_indices(indices: list[int], count_from: int, count_to: int) -> list[int]:
    """The frames of a second clip (``count_to`` frames) at the same relative times as ``indices``."""
    if count_from == count_to:
        return list(indices)
    return [min(count_to - 1, round(i * count_to / count_from)) for i in indices]


def _capture(args: list[str], what: str, cancel=None) -> bytes:
    """Run ffmpeg, return its stdout; ``cancel`` (a CancelToken) may kill it from another thread."""
    returncode, out, err = capture_ffmpeg(args, registry=cancel)
    if cancel is not None:
        cancel.raise_if_cancelled()
    if returncode != 0:
        raise EvaluationError(f"could not decode {what}: {error_reason(err.decode('utf-8', 'replace'))}")
    return out


def read_frames_at(path: str | Path, times: list[float], info: MediaInfo, ffmpeg: str | None = None,
                   cancel=None) -> list[np.ndarray]:
    """The frames shown at ``times`` (seconds from the start), one fast seek each: cheap on long videos,
    where :func:`read_frames` would decode everything."""
    frames = []
    for seconds in times:
        args = [find_ffmpeg(ffmpeg), "-hide_banner", "-nostdin", "-loglevel", "error", "-ss", f"{seconds:.4f}",
                *user_media_input_args(), "-i", str(path), "-map", "0:V:0", "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        data = _capture(args, f"a frame of {Path(path).name}", cancel)
        size = info.width * info.height * 3
        if len(data) < size:
            raise EvaluationError(f"no frame at {seconds:.2f} s in {Path(path).name}")
        frames.append(np.frombuffer(data[:size], dtype=np.uint8).reshape(info.height, info.width, 3))
    return frames


def read_frames(path: str | Path, indices: list[int], info: MediaInfo, ffmpeg: str | None = None,
                threads: int = 2) -> list[np.ndarray]:
    """Frames ``indices`` (display order) of the video as upright RGB uint8 arrays, H×W×3."""
    if not indices:
        return []
    wanted = sorted(set(indices))
    # One decode for all frames: the select expression keeps just the wanted ones.
    select = "+".join(f"eq(n\\,{i})" for i in wanted)
    args = [find_ffmpeg(ffmpeg), "-hide_banner", "-nostdin", "-loglevel", "error", "-threads", str(threads),
            *user_media_input_args(), "-i", str(path), "-map", "0:V:0", "-vf", f"select={select}",
            "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    data = _capture(args, f"the frames of {Path(path).name}")
    size = info.width * info.height * 3
    count = len(data) // size
    frames = np.frombuffer(data, dtype=np.uint8)[: count * size].reshape(count, info.height,
                                                                                 info.width, 3)
    by_index = dict(zip(wanted, frames))
    # A clip whose last frames did not decode: reuse the last one rather than fail the whole evaluation.
    last = frames[-1] if count else np.zeros((info.height, info.width, 3), np.uint8)
    return [by_index.get(i, last) for i in indices]


def read_audio(path: str | Path, rate: int = 16000, ffmpeg: str | None = None,
               max_seconds: float | None = None, cancel=None) -> np.ndarray | None:
    """The first audio stream as mono float32 at ``rate`` Hz; None when the file has no sound. Reads videos
    and plain sound files (speech folders)."""
    args = [find_ffmpeg(ffmpeg), "-hide_banner", "-nostdin", "-loglevel", "error",
            *user_media_input_args(SOUND_DEMUXERS), "-i", str(path), "-map", "0:a:0?", "-vn", "-ac", "1", "-ar", str(rate)]
    if max_seconds:
        args += ["-t", str(max_seconds)]
    args += ["-f", "f32le", "-acodec", "pcm_f32le", "-"]
    samples = np.frombuffer(_capture(args, f"the sound of {Path(path).name}", cancel), dtype=np.float32)
    return samples.copy() if samples.size else None


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma (Y') of an RGB uint8 frame, float64 in 0–255: the plane PSNR and SSIM are taken on."""
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
