"""The media pipeline: decode a video, pass every frame and the sound through the protectors, write an MP4.

:func:`protect_video` streams the whole way with constant memory: an ffmpeg decoder pipes upright RGB frames
to Python, the video protector changes them, and an ffmpeg encoder (libx264) reads them from a pipe; the
audio goes the same way as float PCM in chunks of a few seconds (or is copied when the audio level is
"none"). The encoder works at a constant frame rate, so the encoded packets are then remuxed with PyAV onto
the original frame timestamps (variable frame rate survives), and a final ffmpeg run muxes video and audio
with no metadata of the source and replaces the output file atomically.

What the output keeps: frame count, frame timestamps, duration, display orientation (frames are decoded
upright, so the output needs no rotation flag), audio channels, sample rate and length, and the A/V offset.
Deliberate changes: odd widths/heights lose their last column/row (yuv420p needs even sizes), the video is
8-bit yuv420p H.264 (10-bit and HDR inputs are converted to 8 bits without tone mapping, tags kept), and
all container/stream metadata (dates, GPS location, device make and model, encoder names) is dropped.

:class:`~.cancel.CancelToken` stops a run from another thread within about a second (:mod:`.cancel`). The
parts: the ffmpeg children and their watchdog (:mod:`.processes`), the colour plan (:mod:`.colours`), the
frame timestamps (:mod:`.retime`).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import ffmpeg
import numpy as np

from media_cleaner.media.cancel import CancelToken
from media_cleaner.media.ffmpeg import USER_MEDIA_INPUT, FFmpegError, find_ffmpeg, run_ffmpeg
from media_cleaner.media.colours import ColourPlan, plan_colours
from media_cleaner.media.probe import MediaError, MediaInfo, probe_media
from media_cleaner.media.processes import FFmpegProcess, Progress, Watchdog, read_exactly
from media_cleaner.media.retime import FrameClock, retime
from media_cleaner.protection.seams import AudioStreamInfo, Protectors, VideoStreamInfo

AUDIO_CHUNK_SECONDS = 10
# Codecs the MP4 muxer accepts as they are, so the original sound can be copied bit for bit.
MP4_AUDIO_CODECS = {"aac", "mp3", "alac", "ac3", "eac3", "opus"}
# An audio timestamp gap or offset larger than this is filled with silence (or trimmed) to keep A/V sync.
AUDIO_SYNC_TOLERANCE_S = 0.02
# Shares of the progress bar.
VIDEO_SHARE_WITH_AUDIO = 0.88
AUDIO_SHARE = 0.10
VIDEO_SHARE_ALONE = 0.98
# How long an ffmpeg child may keep the pipeline waiting (no frame read or written, no exit) before it is
# killed and the run fails. A working ffmpeg answers within milliseconds; the slow side is the protectors.
DEFAULT_STALL_TIMEOUT_S = 60.0


# --- the steps -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Settings:
    ffmpeg: str
    threads: int
    crf: int
    preset: str
    audio_bitrate: str

    def command(self, output, loglevel: str) -> list[str]:
        """The argv that runs ``output`` (an ffmpeg-python output node) with the options every run shares."""
        # ffmpeg-python writes global options after the output file; ffmpeg takes them from anywhere.
        return output.global_args("-hide_banner", "-nostdin", "-nostats", "-filter_threads", str(self.threads),
                                  "-loglevel", loglevel).compile(cmd=self.ffmpeg)


def _video_size(info: MediaInfo) -> tuple[int, int]:
    # yuv420p stores one chroma sample per 2×2 pixels, so the encoded size must be even.
    return info.width // 2 * 2, info.height // 2 * 2


def _decoder_command(info: MediaInfo, settings: _Settings, colours: ColourPlan) -> list[str]:
    width, height = _video_size(info)
    filters = []
    if (width, height) != (info.width, info.height):
        filters.append("crop=trunc(iw/2)*2:trunc(ih/2)*2:0:0")
    filters += ["showinfo=checksum=0",
                f"scale=w={width}:h={height}:in_color_matrix={colours.scale_matrix}", "format=rgb24"]
    # ffmpeg turns the frames upright itself (autorotate), before these filters. The chain stays one -vf
    # string: showinfo must sit at this place in it, and FrameClock parses its log ("info" level).
    source = ffmpeg.input(info.path, threads=settings.threads, **USER_MEDIA_INPUT)
    frames = source["V:0"].output(  # "V": the first real video stream, not cover art
        "pipe:", vf=",".join(filters), fps_mode="passthrough", format="rawvideo", pix_fmt="rgb24",
        an=None, sn=None, dn=None)  # None: a flag without a value
    return settings.command(frames, loglevel="info")


def _encoder_command(info: MediaInfo, settings: _Settings, colours: ColourPlan, target: Path) -> list[str]:
    width, height = _video_size(info)
    # Tagging through the frames: ffmpeg lets frame properties override the encoder's colour options.
    filters = [f"scale=out_color_matrix={colours.scale_matrix}:out_range=tv", "format=yuv420p",
               f"setparams=colorspace={colours.colorspace}:color_primaries={colours.primaries}"
               f":color_trc={colours.trc}:range=tv"]
    # Autorotation turned the pixels, so a 90°/270° turn also turns their aspect ratio.
    sample_aspect = 1 / info.sample_aspect if info.rotation in (90, 270) else info.sample_aspect
    if sample_aspect != 1:
        filters.append(f"setsar={sample_aspect.numerator}/{sample_aspect.denominator}")
    rate = info.frame_rate
    frames = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}",
                          framerate=f"{rate.numerator}/{rate.denominator}")
    # vcodec/acodec are ffmpeg's own aliases of -c:v/-c:a; audio_bitrate is written as -b:a.
    encoded = frames.output(str(target), vf=",".join(filters), vcodec="libx264", crf=settings.crf,
                            preset=settings.preset, threads=settings.threads, map_metadata=-1, format="mp4")
    return settings.command(encoded.overwrite_output(), loglevel="error")


def _audio_decoder_command(info: MediaInfo, settings: _Settings, rate: int, channels: int) -> list[str]:
    # Fill gaps and late starts with silence (or trim) so the PCM timeline starts where the video's does.
    align = f"aresample=min_comp=0.001:min_hard_comp={AUDIO_SYNC_TOLERANCE_S}:first_pts=0"
    source = ffmpeg.input(info.path, threads=settings.threads, **USER_MEDIA_INPUT)
    pcm = source["a:0"].output("pipe:", af=align, format="f32le", acodec="pcm_f32le", ar=rate, ac=channels,
                               vn=None, sn=None, dn=None)
    return settings.command(pcm, loglevel="error")


def _audio_encoder_command(settings: _Settings, rate: int, channels: int, target: Path) -> list[str]:
    pcm = ffmpeg.input("pipe:", format="f32le", ar=rate, ac=channels)
    encoded = pcm.output(str(target), acodec="aac", audio_bitrate=settings.audio_bitrate,
                         threads=settings.threads, map_metadata=-1, format="mp4")
    return settings.command(encoded.overwrite_output(), loglevel="error")


def _run_video(info: MediaInfo, protectors: Protectors, settings: _Settings, cancel: CancelToken,
               watchdog: Watchdog, progress: Callable[[float], None], share: float, target: Path,
               max_duration_s: float | None) -> FrameClock:
    """Decode → protect each frame → encode at a constant rate into ``target``; the frame timestamps.

    The frames' own timestamps must stay within ``max_duration_s`` of the first, and a decoder that
    complained must have delivered every frame the probe counted: otherwise the run fails (MediaError)."""
    width, height = _video_size(info)
    colours = plan_colours(info)
    clock = FrameClock(info.frame_rate)
    expected = max(1, info.frame_count)
    decoder = encoder = None

    protectors.video.begin(VideoStreamInfo(width=width, height=height, fps=info.fps,
                                           frame_count=info.frame_count, cancelled=lambda: cancel.cancelled))
    try:
        decoder = FFmpegProcess(_decoder_command(info, settings, colours), cancel, pipe_stdout=True,
                                 on_log_line=clock.feed, on_log_end=clock.end)
        encoder = FFmpegProcess(_encoder_command(info, settings, colours, target), cancel, pipe_stdin=True)
        index = 0
        while True:
            # A fresh array per frame: a protector may keep earlier frames.
            frame = np.empty((height, width, 3), dtype=np.uint8)
            with watchdog.waiting(decoder, "sending decoded frames"):
                count = read_exactly(decoder.stdout, memoryview(frame).cast("B"))
            watchdog.check()
            if count == 0:
                break
            if count < frame.nbytes:
                with watchdog.waiting(decoder, "exiting"):
                    decoder.finish()
                watchdog.check()
                raise MediaError(f"The video could not be decoded at frame {index}: {decoder.reason()}")
            with watchdog.waiting(decoder, "reporting frame timestamps"):
                pts_s = clock.seconds(index)
            watchdog.check()
            if pts_s is None:
                raise MediaError(f"The video could not be decoded at frame {index}: its timestamp is missing")
            if max_duration_s is not None and pts_s - float(clock.pts[0] * clock.time_base) > max_duration_s:
                raise MediaError(f"The video runs longer than this server accepts ({max_duration_s / 60:.0f} "
                                 f"minutes): frame {index} is shown at {pts_s / 60:.0f} minutes.")
            protected = protectors.video.protect_frame(frame, pts_s, index)
            if not isinstance(protected, np.ndarray) or protected.shape != frame.shape \
                    or protected.dtype != np.uint8:
                raise TypeError(f"The video protector returned {getattr(protected, 'shape', type(protected))} "
                                f"{getattr(protected, 'dtype', '')} for a {frame.shape} uint8 frame")
            try:
                with watchdog.waiting(encoder, "taking frames to encode"):
                    encoder.stdin.write(memoryview(np.ascontiguousarray(protected)).cast("B"))
            except BrokenPipeError:
                watchdog.check()
                with watchdog.waiting(encoder, "exiting"):
                    encoder.finish()
                watchdog.check()
                raise MediaError(f"The protected video could not be encoded: {encoder.reason()}")
            index += 1
            progress(share * min(1.0, index / expected))
        with watchdog.waiting(decoder, "exiting after the last frame"):
            decoder_status = decoder.finish()
        watchdog.check()
        if decoder_status != 0:
            raise MediaError(f"The video could not be decoded at frame {index}: {decoder.reason()}")
        if index == 0:
            raise MediaError("The video contains no frames that could be decoded.")
        if index != info.frame_count and decoder.complained():
            # The output promises every frame of the input; a damaged file would quietly lose some.
            raise MediaError(f"The video is damaged: {info.frame_count - index} of its {info.frame_count} frames "
                             f"could not be decoded ({decoder.reason()}). Repair or export it again and upload "
                             f"the new file.")
        with watchdog.waiting(encoder, "finishing the encoded video"):
            encoder_status = encoder.finish()
        watchdog.check()
        if encoder_status != 0:
            raise MediaError(f"The protected video could not be encoded: {encoder.reason()}")
        if len(clock.pts) != index:
            raise MediaError(f"The video decoder reported {len(clock.pts)} timestamps for {index} frames.")
        return clock
    finally:
        for process in (decoder, encoder):
            if process is not None:
                process.close()
        protectors.video.end()


def _run_audio(info: MediaInfo, protectors: Protectors, settings: _Settings, cancel: CancelToken,
               watchdog: Watchdog, progress: Callable[[float], None], start: float, share: float,
               target: Path) -> None:
    """Decode the sound to float PCM → protect it chunk by chunk → encode AAC into ``target``."""
    rate, channels = info.sample_rate or 48000, info.channels or 2  # when the listing did not say
    decode = _audio_decoder_command(info, settings, rate, channels)
    encode = _audio_encoder_command(settings, rate, channels, target)
    expected_samples = max(1, int(info.duration_s * rate))
    chunk_samples = AUDIO_CHUNK_SECONDS * rate
    decoder = encoder = None

    protectors.audio.begin(AudioStreamInfo(sample_rate=rate, channels=channels, duration_s=info.duration_s,
                                           cancelled=lambda: cancel.cancelled))
    try:
        decoder = FFmpegProcess(decode, cancel, pipe_stdout=True)
        encoder = FFmpegProcess(encode, cancel, pipe_stdin=True)
        done = 0
        while True:
            buffer = np.empty((chunk_samples, channels), dtype=np.float32)
            with watchdog.waiting(decoder, "sending decoded sound"):
                count = read_exactly(decoder.stdout, memoryview(buffer).cast("B"))
            watchdog.check()
            samples = count // (4 * channels)
            if samples == 0:
                break
            pcm = buffer[:samples]
            protected = protectors.audio.protect_chunk(pcm, done)
            if not isinstance(protected, np.ndarray) or protected.shape != pcm.shape:
                raise TypeError(f"The audio protector returned {getattr(protected, 'shape', type(protected))} "
                                f"for a {pcm.shape} chunk")
            protected = np.clip(protected, -1.0, 1.0).astype(np.float32, copy=False)
            try:
                with watchdog.waiting(encoder, "taking sound to encode"):
                    encoder.stdin.write(memoryview(np.ascontiguousarray(protected)).cast("B"))
            except BrokenPipeError:
                watchdog.check()
                with watchdog.waiting(encoder, "exiting"):
                    encoder.finish()
                watchdog.check()
                raise MediaError(f"The protected sound could not be encoded: {encoder.reason()}")
            done += samples
            progress(start + share * min(1.0, done / expected_samples))
        with watchdog.waiting(decoder, "exiting after the sound"):
            decoder_status = decoder.finish()
        watchdog.check()
        if decoder_status != 0:
            raise MediaError(f"The sound could not be decoded: {decoder.reason()}")
        with watchdog.waiting(encoder, "finishing the encoded sound"):
            encoder_status = encoder.finish()
        watchdog.check()
        if encoder_status != 0:
            raise MediaError(f"The protected sound could not be encoded: {encoder.reason()}")
    finally:
        for process in (decoder, encoder):
            if process is not None:
                process.close()
        protectors.audio.end()


def _mux_command(settings: _Settings, info: MediaInfo, video: Path, video_start_s: float,
                 audio: Path | None, target: Path) -> list[str]:
    # The video input starts at its first frame's time so it keeps its offset to the sound.
    streams = [ffmpeg.input(str(video), itsoffset=f"{video_start_s:.6f}")["v:0"]]
    codecs = {"vcodec": "copy"}
    if audio is not None:  # the protected sound, already aligned to the timeline's start
        streams.append(ffmpeg.input(str(audio))["a:0"])
        codecs["acodec"] = "copy"
    elif info.has_audio:  # the original sound, with the original file's timeline
        streams.append(ffmpeg.input(info.path, **USER_MEDIA_INPUT)["a:0"])
        if info.audio_codec in MP4_AUDIO_CODECS:
            codecs["acodec"] = "copy"
        else:
            codecs.update(acodec="aac", audio_bitrate=settings.audio_bitrate, threads=settings.threads)
    # Nothing of the source's metadata (dates, GPS location, device, encoder names, chapters) survives.
    # Options with a stream specifier (":s:v", ":a") are not Python identifiers: given by their literal names.
    scrub = {"map_metadata": -1, "map_metadata:s:v": -1, "map_metadata:s:a": -1, "map_chapters": -1,
             "fflags": "+bitexact", "flags:v": "+bitexact", "flags:a": "+bitexact"}
    muxed = ffmpeg.output(*streams, str(target), **codecs, **scrub, movflags="+faststart", format="mp4")
    return settings.command(muxed.overwrite_output(), loglevel="error")


def protect_video(input_path: str | os.PathLike, output_path: str | os.PathLike, protectors: Protectors, *,
                  progress: Callable[[float], None] | None = None,
                  cancel: CancelToken | None = None, temp_dir: str | os.PathLike, threads: int = 1,
                  crf: int = 17, preset: str = "fast", audio_bitrate: str = "192k", ffmpeg: str | None = None,
                  info: MediaInfo | None = None, stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
                  max_duration_s: float | None = None) -> MediaInfo:
    """Write the protected version of ``input_path`` to ``output_path`` (MP4); the input's description.

    ``protectors`` change the frames and the sound (:mod:`media_cleaner.protection.registry` builds the engines
    for a task; ``protectors.audio`` None keeps the original sound). ``progress`` receives a growing
    fraction in [0, 1]. ``cancel`` stops the run (:class:`TaskCancelled`). Scratch files live in a fresh
    folder under ``temp_dir`` that is always removed; ``output_path`` appears only complete. ``threads``
    caps every ffmpeg child. An ffmpeg child that keeps the run waiting for ``stall_timeout_s`` is killed and
    the run fails (:class:`MediaError`), as does a video whose frames run past ``max_duration_s``. Unusable
    media raise :class:`MediaError`; protector errors propagate.
    """
    settings = _Settings(find_ffmpeg(ffmpeg), max(1, int(threads)), crf, preset, audio_bitrate)
    cancel = cancel or CancelToken()
    report = Progress(progress)
    output_path = Path(output_path)
    info = info or probe_media(input_path, settings.ffmpeg)
    if info.path != str(input_path):
        info = replace(info, path=str(input_path))
    protect_audio = info.has_audio and protectors.audio is not None
    video_share = VIDEO_SHARE_WITH_AUDIO if protect_audio else VIDEO_SHARE_ALONE

    Path(temp_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="protect-", dir=temp_dir))
    # Written next to the output so the final rename is atomic (same file system).
    partial = output_path.with_name(f".{output_path.name}.{uuid.uuid4().hex}.partial")
    watchdog = Watchdog(stall_timeout_s, cancel)
    try:
        cancel.raise_if_cancelled()
        encoded = work / "video_encoded.mp4"
        clock = _run_video(info, protectors, settings, cancel, watchdog, report, video_share, encoded,
                           max_duration_s)
        audio = None
        if protect_audio:
            audio = work / "audio.m4a"
            _run_audio(info, protectors, settings, cancel, watchdog, report, video_share, AUDIO_SHARE, audio)
        cancel.raise_if_cancelled()
        retimed = work / "video_retimed.mp4"
        retime(encoded, retimed, clock, info.frame_rate, cancel)
        video_start_s = float(clock.pts[0] * clock.time_base)
        try:
            # A stream copy runs far faster than real time: the media's duration is a generous deadline.
            run_ffmpeg(_mux_command(settings, info, retimed, video_start_s, audio, partial), registry=cancel,
                       timeout_s=stall_timeout_s + info.duration_s)
        except FFmpegError as exc:
            cancel.raise_if_cancelled()
            raise MediaError(f"The protected video could not be written: {exc.reason}") from exc
        cancel.raise_if_cancelled()
        os.replace(partial, output_path)
        report(1.0)
        return info
    finally:
        watchdog.close()
        partial.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
