"""What is inside a media file, found with ffmpeg alone (there is no ffprobe).

:func:`probe_media` runs ffmpeg once: the stream listing it prints on stderr gives codecs, sizes, colour
tags, rotation and the audio format, and a ``framecrc`` dump of the video packets (a stream copy, nothing is
decoded) gives the exact frame count and every frame's timestamp, hence the average rate and whether the
rate is variable. Files that cannot be used raise :class:`MediaError` with a message meant for the person
who uploaded the file.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg

from media_cleaner.media.ffmpeg import USER_MEDIA_INPUT, capture_ffmpeg, error_reason, find_ffmpeg

# A frame duration further than this from the typical one makes the stream variable-rate
# (container timestamps are rounded, to the millisecond in mkv/webm/flv).
VFR_TOLERANCE = 0.1
# The probe copies the video packets without decoding them: a few seconds even for a long film.
PROBE_TIMEOUT_S = 300.0


class MediaError(Exception):
    """The media cannot be processed; the message is written for a non-technical user (no server paths)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class MediaInfo:
    path: str
    container: str                 # ffmpeg's demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2" or "matroska,webm"
    duration_s: float
    width: int                     # display size: the coded size turned by ``rotation``
    height: int
    coded_width: int
    coded_height: int
    rotation: int                  # clockwise degrees a player turns the coded picture: 0, 90, 180, 270
    fps: float                     # average frame rate over the frame timestamps
    frame_rate: Fraction           # the same as an exact fraction, for command lines
    frame_count: int
    vfr: bool
    video_codec: str
    pix_fmt: str
    sample_aspect: Fraction        # pixel aspect ratio of the coded picture (1 for square pixels)
    color_matrix: str | None       # ffmpeg names: bt709, smpte170m, bt470bg, bt2020nc, ... (None: untagged)
    color_primaries: str | None
    color_trc: str | None
    color_range: str | None        # "tv" (limited) or "pc" (full)
    has_audio: bool
    audio_codec: str | None
    sample_rate: int | None
    channels: int | None

    def summary(self) -> dict:
        """The facts about the input that a task record shows."""
        return {
            "duration_s": round(self.duration_s, 3),
            "width": self.width,
            "height": self.height,
            "fps": round(self.fps, 3),
            "frames": self.frame_count,
            "has_audio": self.has_audio,
            "rotation": self.rotation,
            "vfr": self.vfr,
            "video_codec": self.video_codec,
            "audio_codec": self.audio_codec,
            "channels": self.channels,
            "sample_rate": self.sample_rate,
        }


# --- the stream listing on stderr -------------------------------------------------------------------------

_INPUT = re.compile(r"^Input #0, (.+?), from ")
_DURATION = re.compile(r"^\s*Duration: (?:(\d+):(\d+):(\d+(?:\.\d+)?)|N/A)")
_STREAM = re.compile(r"^\s*Stream #0:(\d+)\S*: (Video|Audio|Subtitle|Data|Attachment): (.*)$")
_ROTATION = re.compile(r"(?:display ?matrix).*rotation of (-?\d+(?:\.\d+)?) degrees", re.IGNORECASE)
_SIZE = re.compile(r"^(\d+)x(\d+)(?: \[SAR (\d+):(\d+) DAR \d+:\d+\])?")
_SAMPLE_RATE = re.compile(r"^(\d+) Hz$")
_NAMED_LAYOUTS = {"mono": 1, "stereo": 2, "binaural": 2, "downmix": 2, "quad": 4, "hexagonal": 6,
                  "octagonal": 8, "cube": 8, "hexadecagonal": 16}
_COLOR_RANGES = {"tv", "pc"}
_FIELD_ORDERS = {"progressive", "top first", "bottom first", "top coded first (swapped)",
                 "bottom coded first (swapped)"}


def _split_top_level(text: str) -> list[str]:
    """Split an ffmpeg stream description at the commas that are not inside parentheses."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return parts


def _channel_count(layout: str) -> int | None:
    name = layout.split("(")[0].strip()
    if re.fullmatch(r"\d+(\.\d+)+", name):
        return sum(int(part) for part in name.split("."))
    if name in _NAMED_LAYOUTS:
        return _NAMED_LAYOUTS[name]
    match = re.fullmatch(r"(\d+) channels", name)
    return int(match.group(1)) if match else None


def _parse_pix_fmt(token: str) -> tuple[str, dict]:
    """``yuv420p(tv, bt709, progressive)`` → ("yuv420p", {"range": "tv", "matrix": "bt709", ...})."""
    match = re.fullmatch(r"(\w+)(?:\((.*)\))?", token)
    if not match:
        return token, {}
    colors: dict = {}
    for item in (match.group(2) or "").split(","):
        item = item.strip()
        if item in _COLOR_RANGES:
            colors["range"] = item
        elif "/" in item:
            matrix, primaries, trc = (None if part == "unknown" else part for part in item.split("/"))
            colors.update(matrix=matrix, primaries=primaries, trc=trc)
        elif item and item not in _FIELD_ORDERS and not item.startswith(("left", "center", "top", "bottom")):
            colors.update(matrix=item, primaries=item, trc=item)  # ffmpeg prints one name when all agree
    return match.group(1), colors


def _parse_video(description: str) -> dict:
    parts = _split_top_level(description)
    video = {"codec": parts[0].split()[0], "pix_fmt": "unknown", "colors": {}, "width": 0, "height": 0,
             "sar": Fraction(1)}
    for part in parts[1:]:
        size = _SIZE.match(part)
        if size and not video["width"]:
            video["width"], video["height"] = int(size.group(1)), int(size.group(2))
            if size.group(3) and int(size.group(3)) and int(size.group(4)):
                video["sar"] = Fraction(int(size.group(3)), int(size.group(4)))
        elif video["pix_fmt"] == "unknown" and not video["width"] and re.match(r"^\w+(\(|$)", part):
            video["pix_fmt"], video["colors"] = _parse_pix_fmt(part)
    return video


def _parse_audio(description: str) -> dict:
    parts = _split_top_level(description)
    audio = {"codec": parts[0].split()[0], "sample_rate": None, "channels": None}
    for index, part in enumerate(parts[1:], start=1):
        rate = _SAMPLE_RATE.match(part)
        if rate:
            audio["sample_rate"] = int(rate.group(1))
            if index + 1 < len(parts):
                audio["channels"] = _channel_count(parts[index + 1])
            break
    return audio


def _parse_listing(stderr: str) -> dict:
    listing: dict = {"container": None, "duration_s": None, "video": None, "audio": None}
    current = None  # the stream whose side data is being listed
    for line in stderr.splitlines():
        if listing["container"] is None and (match := _INPUT.match(line)):
            listing["container"] = match.group(1)
        elif match := _DURATION.match(line):
            if match.group(1) is not None:
                hours, minutes, seconds = match.groups()
                listing["duration_s"] = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        elif match := _STREAM.match(line):
            kind, description = match.group(2), match.group(3)
            current = None
            # Cover art is listed as a video stream; it is not the video.
            if kind == "Video" and listing["video"] is None and "(attached pic)" not in description:
                current = listing["video"] = _parse_video(description) | {"rotation": 0}
            elif kind == "Audio" and listing["audio"] is None:
                listing["audio"] = _parse_audio(description)
        elif current is not None and (match := _ROTATION.search(line)):
            # ffmpeg prints the counter-clockwise angle of the display matrix; players turn clockwise by -angle.
            current["rotation"] = int(round(-float(match.group(1)))) % 360 // 90 * 90
        elif line.startswith(("Output #", "Stream mapping")):
            break
    return listing


# --- the packet dump on stdout ----------------------------------------------------------------------------

def _parse_framecrc(dump: str) -> tuple[Fraction, list[int], list[int]]:
    """Time base, sorted presentation timestamps and durations of the packets of output stream 0."""
    time_base, timestamps, durations = None, [], []
    for line in dump.splitlines():
        if line.startswith("#tb 0:"):
            num, den = line.split(":", 1)[1].strip().split("/")
            time_base = Fraction(int(num), int(den))
        elif line.startswith("0,"):
            fields = line.split(",")
            timestamps.append(int(fields[2]))
            durations.append(int(fields[3]))
    timestamps.sort()
    return time_base or Fraction(1, 1000), timestamps, durations


def _frame_rate(time_base: Fraction, timestamps: list[int], durations: list[int], listed_fps: float) -> Fraction:
    if len(timestamps) >= 2 and timestamps[-1] > timestamps[0]:
        span = (timestamps[-1] - timestamps[0]) * time_base
        measured = Fraction(len(timestamps) - 1) / span
        # Containers round timestamps (mkv to 1 ms): prefer the usual rate that rounding could have hidden.
        slack = measured * 2 * time_base / span
        for usual in (Fraction(round(measured)), Fraction(round(measured * Fraction(1001, 1000)) * 1000, 1001)):
            if usual > 0 and abs(usual - measured) <= slack:
                return usual
        return measured.limit_denominator(1_000_000)
    if durations and durations[0] > 0:
        return (1 / (durations[0] * time_base)).limit_denominator(1_000_000)
    return Fraction(listed_fps or 25).limit_denominator(1001)


def _is_variable_rate(timestamps: list[int], time_base: Fraction) -> bool:
    steps = [b - a for a, b in zip(timestamps, timestamps[1:])]
    if len(steps) < 2:
        return False
    typical = sorted(steps)[len(steps) // 2]
    # Rounded container timestamps jitter by one tick; that is not a variable rate.
    slack = max(typical * VFR_TOLERANCE, 1.0 + 1e-9)
    return any(abs(step - typical) > slack for step in steps)


# --- errors a person can act on ---------------------------------------------------------------------------

# The first bytes of the still-picture and sound-only formats people upload by mistake: the demuxer whitelist
# refuses them before ffmpeg names them, so they are told apart here for a helpful message.
_PICTURE_SIGNATURES = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"II*\x00", b"MM\x00*")
_SOUND_SIGNATURES = (b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2", b"fLaC")


def _sniff(path: Path) -> str | None:
    """"picture", "sound" or None, from the file's first bytes."""
    try:
        with open(path, "rb") as file:
            head = file.read(16)
    except OSError:
        return None
    riff = head[8:12] if head.startswith(b"RIFF") else b""
    if head.startswith(_PICTURE_SIGNATURES) or riff == b"WEBP":
        return "picture"
    if head.startswith(_SOUND_SIGNATURES) or riff == b"WAVE":
        return "sound"
    return None


def _open_error(stderr: str, path: Path) -> MediaError:
    if "not on whitelist" in stderr:
        kind = _sniff(path)
        if kind == "picture":
            return MediaError("The file is a still picture, not a video. Please upload a video.")
        if kind == "sound":
            return MediaError("The file contains only sound and no picture. Please upload a video.")
        return MediaError("The file is not in a video format we accept. Please upload an MP4, MOV, M4V, MKV, "
                          "WEBM, AVI or FLV video (playlists and files that refer to other files are refused).")
    not_media = MediaError("The file could not be read as a video: it is not in a video format we recognise. "
                           "Please upload a video file (for example MP4, MOV, MKV, WEBM or AVI).")
    # A text file renamed .mp4 also lacks a moov atom; ffmpeg says it only guessed the format.
    if "misdetection possible" in stderr:
        return not_media
    if re.search(r"moov atom not found|error reading header|End of file|corrupt", stderr):
        return MediaError("The file looks incomplete (it may have been cut off during upload or recording). "
                          "Please upload the complete video again.")
    if "Invalid data found when processing input" in stderr:
        return not_media
    if "No such file or directory" in stderr:
        return MediaError("The uploaded file could not be found on the server. Please upload it again.")
    return MediaError(f"The file could not be read as a video: {error_reason(stderr)}")


def _probe_command(path: Path, executable: str) -> list[str]:
    """ffmpeg's listing of ``path`` on stderr, and a framecrc dump of its video packets on stdout."""
    # "V:0?": the first real video stream (not cover art), and no error when there is none (the listing says).
    packets = ffmpeg.input(str(path), **USER_MEDIA_INPUT)["V:0?"].output("-", c="copy", format="framecrc")
    return packets.global_args("-hide_banner", "-nostdin").compile(cmd=executable)


def probe_media(path: str | os.PathLike, ffmpeg: str | None = None) -> MediaInfo:
    """Describe the media file at ``path``; raise :class:`MediaError` when it is not a usable video."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        raise MediaError("The uploaded file could not be found on the server. Please upload it again.")
    if size == 0:
        raise MediaError("The file is empty (0 bytes). Please upload the video again.")

    try:
        returncode, stdout, stderr_bytes = capture_ffmpeg(_probe_command(path, find_ffmpeg(ffmpeg)),
                                                          timeout_s=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise MediaError(f"Reading the file took longer than {PROBE_TIMEOUT_S:.0f} s and was stopped. Please "
                         f"try again; if it happens again, the file may be damaged.") from None
    stderr = stderr_bytes.decode("utf-8", "replace")
    listing = _parse_listing(stderr)
    if listing["container"] is None:
        raise _open_error(stderr, path)
    video, audio = listing["video"], listing["audio"]
    # ffmpeg reads a lone picture (png_pipe, jpeg_pipe, …, image2) as a one-frame video.
    if listing["container"].endswith("_pipe") or listing["container"] == "image2":
        raise MediaError("The file is a still picture, not a video. Please upload a video.")
    if video is None:
        if audio is not None:
            raise MediaError("The file contains only sound and no picture. Please upload a video.")
        raise MediaError("The file contains no video stream. Please upload a video.")
    if returncode != 0:
        raise MediaError(f"The video could not be read: {error_reason(stderr)}")

    time_base, timestamps, durations = _parse_framecrc(stdout.decode("ascii", "replace"))
    if not timestamps:
        raise MediaError("The video contains no frames. Please upload a video with a picture.")
    listed_fps = _listed_fps(stderr)
    frame_rate = _frame_rate(time_base, timestamps, durations, listed_fps)
    rotation = video["rotation"]
    turned = rotation in (90, 270)
    colors = video["colors"]
    # The frames' own timestamps, not only the header's claim: a header can say 2 s over frames that span 10 h
    # (the duration limit is judged on this figure).
    spanned = float((timestamps[-1] - timestamps[0] + max(durations[-1], 0)) * time_base)
    duration = listing["duration_s"]
    if duration is None or not math.isfinite(duration) or duration < spanned:
        duration = spanned
    return MediaInfo(
        path=str(path), container=listing["container"], duration_s=duration,
        width=video["height"] if turned else video["width"], height=video["width"] if turned else video["height"],
        coded_width=video["width"], coded_height=video["height"], rotation=rotation,
        fps=float(frame_rate), frame_rate=frame_rate, frame_count=len(timestamps),
        vfr=_is_variable_rate(timestamps, time_base), video_codec=video["codec"], pix_fmt=video["pix_fmt"],
        sample_aspect=video["sar"], color_matrix=colors.get("matrix"), color_primaries=colors.get("primaries"),
        color_trc=colors.get("trc"), color_range=colors.get("range"),
        has_audio=audio is not None, audio_codec=audio and audio["codec"],
        sample_rate=audio and audio["sample_rate"], channels=audio and audio["channels"],
    )


def _listed_fps(stderr: str) -> float:
    match = re.search(r"Video: .*?, (\d+(?:\.\d+)?)(k?) (?:fps|tbr)", stderr)
    if not match:
        return 0.0
    return float(match.group(1)) * (1000 if match.group(2) else 1)
