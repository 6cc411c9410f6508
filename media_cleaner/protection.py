"""The two narrow seams where protection engines plug into the media pipeline.

A :class:`VideoProtector` sees every decoded frame (upright RGB, uint8, H×W×3) with its presentation time
and returns the frame to encode. An :class:`AudioProtector` sees the decoded PCM (float32, samples ×
channels, at the stream's own rate) in consecutive chunks and returns exactly as many samples.

:func:`build_protectors` puts the voice mask (:mod:`media_cleaner.voice_mask`) on the audio seam; the
pass-through implementations give the media back unchanged.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from .params import ProtectionParams


@dataclass(frozen=True)
class VideoStreamInfo:
    """What a video protector knows about the stream before the first frame."""

    width: int            # upright (display) width of the frames it will receive
    height: int
    fps: float            # average frame rate (the stream may be variable)
    frame_count: int      # expected number of frames (0 when unknown)
    # Optional cancellation hook: True once the task is cancelled. An engine that spends seconds inside one
    # protect_frame call (the face cloak's keyframe attack) polls it to stop within about a second.
    should_stop: Callable[[], bool] | None = None


@dataclass(frozen=True)
class AudioStreamInfo:
    sample_rate: int
    channels: int
    duration_s: float
    # Optional cancellation hook, as for video: the voice mask checks it between optimisation steps.
    should_stop: Callable[[], bool] | None = None


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


_import_lock = threading.Lock()


def import_model_packages() -> None:
    """Import torch and the model packages once, under one lock.

    The engines, the task report and the start-up warm-up import them lazily from different threads, and two
    threads importing torchvision at once can see it half-initialised ("cannot import name … from partially
    initialized module 'torchvision.ops'"). After the first call this is a cheap no-op.
    """
    with _import_lock:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
        import facenet_pytorch  # noqa: F401
        import resemblyzer  # noqa: F401
        from . import face_cloak, voice_mask  # noqa: F401


def torch_device() -> str:
    """Where the engines run: "cuda" when a GPU is usable, else "cpu"."""
    import torch   # imported here: the service starts (and the pass-through runs) without loading torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_protectors(params: ProtectionParams, *, device: str | None = None, threads: int = 1) -> Protectors:
    """The engines for one task, configured from its parameters.

    ``device`` is where torch work runs (None: :func:`torch_device`), ``threads`` the worker's share of
    the cores.
    """
    import_model_packages()
    audio = None   # "none": the pipeline copies the original sound stream
    if params.audio_level != "none":
        from .voice_mask import VoiceMask   # imported here: torch and the encoder load only for a task
        audio = VoiceMask(params.audio_level, device=device, threads=threads)
    from .face_cloak import FaceCloak   # imported here: torch and MTCNN load only for a task
    video = FaceCloak(params, device=device or torch_device(), threads=threads)
    return Protectors(video=video, audio=audio)


def warm_up_engines() -> None:
    """Load models and compile what is slow to start, so the first task does not pay for it.

    :func:`media_cleaner.jobs.warm_up` calls this once at start-up, where the jobs will run.
    """
    import_model_packages()
    from .voice_mask.engine import warm_up as warm_up_voice_mask
    warm_up_voice_mask(torch_device())
    from .face_cloak.engine import warm_up as warm_up_face_cloak
    warm_up_face_cloak(torch_device())
