"""Cheap purification an attacker tries before embedding a protected face, so identity is also judged after it.

Image protections are often undone by a little low-pass filtering. Each purification here is one an attacker
can run in a line, at a strength that leaves the picture looking the same or better:

- ``jpeg75``: JPEG at quality 75 (the common default of image libraries and upload pipelines);
- ``blur``: a Gaussian blur of sigma 1 px;
- ``down_up``: half size with area averaging, then back up with bicubic interpolation;
- ``hqdn3d``: ffmpeg's spatio-temporal denoiser at its defaults, over the whole clip (it uses neighbouring
  frames, so it runs on the video, not on the sampled frames alone).

The first three act on decoded RGB frames; :func:`hqdn3d_video` writes a lossless denoised copy of a video.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from media_cleaner.media.ffmpeg import FFmpegError, find_ffmpeg, run_ffmpeg, user_media_input_args
from media_cleaner.evaluation import EvaluationError

JPEG_QUALITY = 75
BLUR_SIGMA = 1.0
DOWN_UP_FACTOR = 0.5
# Reported in this order.
PURIFICATIONS = ("jpeg75", "blur", "down_up", "hqdn3d")


def _jpeg(rgb: np.ndarray) -> np.ndarray:
    import cv2
    # OpenCV's codec expects BGR: converting keeps the chroma conversion JPEG does the standard one.
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise EvaluationError("OpenCV could not JPEG-encode a frame")
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _blur(rgb: np.ndarray) -> np.ndarray:
    import cv2
    return cv2.GaussianBlur(rgb, (0, 0), BLUR_SIGMA)


def _down_up(rgb: np.ndarray) -> np.ndarray:
    import cv2
    height, width = rgb.shape[:2]
    small = cv2.resize(rgb, (max(1, round(width * DOWN_UP_FACTOR)), max(1, round(height * DOWN_UP_FACTOR))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


FRAME_PURIFICATIONS = {"jpeg75": _jpeg, "blur": _blur, "down_up": _down_up}


def purify_frames(name: str, frames: list[np.ndarray]) -> list[np.ndarray]:
    """``frames`` after the per-frame purification ``name`` (one of :data:`FRAME_PURIFICATIONS`)."""
    return [FRAME_PURIFICATIONS[name](frame) for frame in frames]


def hqdn3d_video(source: str | Path, target: str | Path, ffmpeg: str | None = None, threads: int = 2) -> Path:
    """``source`` through ffmpeg's ``hqdn3d`` denoiser, written losslessly (x264 at QP 0) to ``target``."""
    args = [find_ffmpeg(ffmpeg), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-threads", str(threads),
            *user_media_input_args(), "-i", str(source), "-map", "0:V:0", "-vf", "hqdn3d", "-c:v", "libx264",
            "-qp", "0", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-threads", str(threads), str(target)]
    try:
        run_ffmpeg(args)
    except FFmpegError as exc:
        raise EvaluationError(f"the hqdn3d purification of {Path(source).name} failed: {exc.reason}") from exc
    return Path(target)
