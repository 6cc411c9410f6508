"""The two narrow seams where protection engines plug into the media pipeline.

A :class:`VideoProtector` sees every decoded frame (upright RGB, uint8, H×W×3) with its presentation time
and returns the frame to encode. An :class:`AudioProtector` sees the decoded PCM (float32, samples ×
channels, at the stream's own rate) in consecutive chunks and returns exactly as many samples. The
pass-through implementations give the media back unchanged.

This module imports no engine (and no torch): the pipeline and the engines both depend on it, never on each
other. :mod:`.registry` is the one place that knows the engines.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class VideoStreamInfo:
    """What a video protector knows about the stream before the first frame."""

    width: int            # upright (display) width of the frames it will receive
    height: int
    fps: float            # average frame rate (the stream may be variable)
    frame_count: int      # expected number of frames (0 when unknown)
    # Optional cancellation hook: True once the task is cancelled. An engine that spends seconds inside one
    # protect_frame call (the face cloak's keyframe attack) polls it to stop within about a second.
    cancelled: Callable[[], bool] | None = None


@dataclass(frozen=True)
class AudioStreamInfo:
    sample_rate: int
    channels: int
    duration_s: float
    # Optional cancellation hook, as for video: the voice mask checks it between optimisation steps.
    cancelled: Callable[[], bool] | None = None


@runtime_checkable
class VideoProtector(Protocol):
    def begin(self, info: VideoStreamInfo) -> None:
        """Called once before the first frame."""

    def protect_frame(self, frame: np.ndarray, pts_s: float, index: int) -> np.ndarray:
        """Return the frame to encode: same shape and dtype (uint8 RGB, H×W×3) as ``frame``."""

    def end(self) -> None:
        """Called once after the last frame (also after a failure or a cancel)."""


@runtime_checkable
class AudioProtector(Protocol):
    def begin(self, info: AudioStreamInfo) -> None:
        """Called once before the first chunk."""

    def protect_chunk(self, pcm: np.ndarray, start_sample: int) -> np.ndarray:
        """Return protected PCM with exactly ``pcm.shape`` (float32, samples × channels, in [-1, 1])."""

    def end(self) -> None:
        """Called once after the last chunk."""


class PassThroughVideo:
    """Gives every frame back unchanged (the seam before the face cloak lands)."""

    def begin(self, info: VideoStreamInfo) -> None:
        pass

    def protect_frame(self, frame: np.ndarray, pts_s: float, index: int) -> np.ndarray:
        return frame

    def end(self) -> None:
        pass


class PassThroughAudio:
    """Gives the PCM back unchanged (the seam before the voice mask lands)."""

    def begin(self, info: AudioStreamInfo) -> None:
        pass

    def protect_chunk(self, pcm: np.ndarray, start_sample: int) -> np.ndarray:
        return pcm

    def end(self) -> None:
        pass


@dataclass
class Protectors:
    video: VideoProtector
    audio: AudioProtector | None   # None: keep the original sound (audio_level "none")
