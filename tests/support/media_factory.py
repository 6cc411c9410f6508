"""Small synthetic media files for the tests, made with ffmpeg's lavfi sources, and helpers to read them back.

Everything is generated on the fly into a folder the test gives (``tmp_path``), so the tests need no
fixture files. Making and reading back always use the ffmpeg of the imageio-ffmpeg package (and PyAV),
whichever ffmpeg the service under test uses (``MEDIA_CLEANER_FFMPEG``): the measuring tool stays fixed
while the binary under test changes, and older ones lack options the makers use (``-display_rotation``).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import av
import numpy as np

import imageio_ffmpeg
from media_cleaner.media.probe import probe_media

# Codecs each container can hold, used when the test does not name them.
_DEFAULT_CODECS = {
    ".webm": ("libvpx-vp9", "libopus"),
    ".avi": ("mpeg4", "libmp3lame"),
}
_MP4_LIKE = {".mp4", ".mov", ".m4v"}


TOOL_FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def _ffmpeg(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([TOOL_FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", *args],
                          check=True, capture_output=capture)


def make_video(path: Path, seconds: float = 2, size: str = "320x240", fps: int = 25, audio: bool = True,
               channels: int = 2, sample_rate: int = 48000, rotate: int | None = None, vfr: bool = False,
               pix_fmt: str = "yuv420p", codec: str | None = None, audio_codec: str | None = None,
               metadata: dict[str, str] | None = None, audio_delay_s: float = 0.0,
               retime: str | None = None) -> Path:
    """A ``testsrc2`` video (with a ``sine`` tone unless ``audio`` is False) in the container of ``path``.

    ``rotate``: display rotation flag in ffmpeg's counter-clockwise degrees (the pixels stay as coded).
    ``vfr``: drop 3 of every 10 frames, keeping the others' timestamps (irregular frame durations).
    ``audio_delay_s``: the sound starts this much after the picture.
    ``retime``: a ``setpts`` expression that gives the frames other timestamps (written as they are).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    video_codec, default_audio = _DEFAULT_CODECS.get(suffix, ("libx264", "aac"))
    codec = codec or video_codec
    audio_codec = audio_codec or default_audio
    inputs = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:duration={seconds}"]
    if audio:
        if audio_delay_s:
            inputs += ["-itsoffset", str(audio_delay_s)]
        inputs += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={sample_rate}:duration={seconds}"]
    options = ["-map", "0:v"] + (["-map", "1:a", "-c:a", audio_codec, "-ac", str(channels)] if audio else [])
    video_filter = f"format={pix_fmt}"
    if vfr:
        video_filter = f"select='not(between(mod(n\\,10)\\,3\\,5))',{video_filter}"
        options += ["-fps_mode", "vfr"]
    if retime:
        video_filter = f"setpts={retime},{video_filter}"
        options += ["-fps_mode", "passthrough"]
    options += ["-vf", video_filter, "-c:v", codec, "-pix_fmt", pix_fmt]
    if codec == "libx265":
        options += ["-x265-params", "log-level=error"]
    if codec == "libvpx-vp9":
        options += ["-deadline", "realtime", "-cpu-used", "8"]
    for key, value in (metadata or {}).items():
        options += ["-metadata", f"{key}={value}"]
    if metadata and suffix in _MP4_LIKE:
        options += ["-movflags", "use_metadata_tags"]
    if rotate is None:
        _ffmpeg("-y", *inputs, *options, str(path))
        return path
    # The rotation flag must be added by a remux: on an encode, ffmpeg would turn the pixels instead.
    unrotated = path.with_name(f"unrotated_{path.name}")
    _ffmpeg("-y", *inputs, *options, str(unrotated))
    _ffmpeg("-y", "-display_rotation", str(rotate), "-i", str(unrotated), "-map", "0", "-c", "copy",
            *(["-movflags", "use_metadata_tags"] if metadata and suffix in _MP4_LIKE else []), str(path))
    unrotated.unlink()
    return path


def make_audio_only(path: Path, seconds: float = 1) -> Path:
    _ffmpeg("-y", "-f", "lavfi", "-i", f"sine=duration={seconds}", "-c:a", "aac", str(path))
    return path


def make_truncated_mp4(path: Path, scratch: Path) -> Path:
    """The first half of an MP4 whose index (moov) is at the end, as after an interrupted upload."""
    whole = make_video(scratch / "whole.mp4", seconds=2)
    data = whole.read_bytes()
    assert data.find(b"moov") > len(data) // 2, "ffmpeg wrote the index at the start"
    path.write_bytes(data[: len(data) // 2])
    return path


# --- reading back ------------------------------------------------------------------------------------

def listing(path: Path) -> str:
    """What ``ffmpeg -i`` prints about the file (streams and metadata)."""
    result = subprocess.run([TOOL_FFMPEG, "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True)
    return result.stderr.decode("utf-8", "replace")


def frame_times(path: Path) -> list[float]:
    """Presentation times of the video frames, in seconds from the start of the file, in display order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = sorted(float(packet.pts * packet.time_base) for packet in container.demux(stream)
                       if packet.pts is not None)
        start = container.start_time / av.time_base if container.start_time is not None else 0.0
    return [time - start for time in times]


def stream_starts(path: Path) -> tuple[float, float]:
    """When the first video frame and the first audio sample are presented, in seconds."""
    firsts: dict[str, float] = {}
    with av.open(str(path)) as container:
        for frame in container.decode(video=0, audio=0):
            kind = "video" if isinstance(frame, av.VideoFrame) else "audio"
            firsts.setdefault(kind, float(frame.pts * frame.time_base))
            if len(firsts) == 2:
                break
    return firsts["video"], firsts["audio"]


def audio_samples(path: Path) -> np.ndarray:
    """The sound as a player hears it (priming and padding trimmed), float32 samples × channels."""
    channels = probe_media(path, TOOL_FFMPEG).channels
    result = _ffmpeg("-i", str(path), "-map", "0:a:0", "-f", "f32le", "-", capture=True)
    return np.frombuffer(result.stdout, dtype=np.float32).reshape(-1, channels)


def audio_packet_checksums(path: Path) -> list[str]:
    """Checksums of the audio packets, to tell a stream copy from a re-encode."""
    result = _ffmpeg("-i", str(path), "-map", "0:a:0", "-c", "copy", "-f", "framecrc", "-", capture=True)
    return [line.split(",")[5].strip() for line in result.stdout.decode().splitlines() if line.startswith("0,")]


def decode_frame(path: Path, index: int) -> np.ndarray:
    """Frame ``index`` (display order) as upright RGB uint8, the way a player would show it."""
    info = probe_media(path, TOOL_FFMPEG)
    result = _ffmpeg("-i", str(path), "-map", "0:V:0", "-vf", f"select=eq(n\\,{index})", "-frames:v", "1",
                     "-f", "rawvideo", "-pix_fmt", "rgb24", "-", capture=True)
    return np.frombuffer(result.stdout, dtype=np.uint8).reshape(info.height, info.width, 3)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def make_face_video(path: Path, seconds: float = 1.0, fps: int = 10, size: int = 384, audio: bool = True,
                    video_filter: str | None = None) -> Path:
    """A still clip of the astronaut's face (``size``², H.264) with a sine tone unless ``audio`` is False.

    At 384 px the face is about 90 px wide: large enough for dlib's CNN, which runs without upsampling."""
    import cv2
    from skimage import data
    frame = cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    count = int(seconds * fps)
    args = [TOOL_FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size}x{size}", "-r", str(fps), "-i", "-"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=300:sample_rate=16000:duration={seconds}"]
    if video_filter:
        args += ["-vf", video_filter]
    args += ["-c:v", "libx264", "-crf", "18", "-pix_fmt", "yuv420p"]
    if audio:
        args += ["-c:a", "aac", "-b:a", "128k", "-shortest"]
    subprocess.run(args + [str(path)], input=frame.tobytes() * count, check=True)
    return path
