"""Choosing the ffmpeg executable, checking it can do the job, and running it under a deadline.

This module owns three things: deciding which ffmpeg binary the service uses, checking once that it is one
the pipeline works with (:func:`inspect_ffmpeg`: version, filters, encoders, muxers), and turning a failed or
stuck ffmpeg run into an :class:`FFmpegError` whose message is the part of ffmpeg's log a person can act on.

Which binary: an explicit override (``Settings.ffmpeg``), the ``MEDIA_CLEANER_FFMPEG`` variable or a build in
the repository's ``ffmpeg/`` folder always win. Otherwise the binary shipped in the ``imageio-ffmpeg`` wheel is
preferred to the one on the ``PATH``: its version is pinned by requirements.txt, it is the one the test suite
runs on, and it has libvmaf for the evaluation; a distribution's ffmpeg is whatever that distribution ships
(Debian 12: 5.1, Ubuntu 24.04: 6.1). The ``PATH`` one is used when the wheel is missing.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

ENV_VARIABLE = "MEDIA_CLEANER_FFMPEG"
LOCAL_FFMPEG_DIR = Path(__file__).resolve().parents[2] / "ffmpeg"

# Lines of ffmpeg's log that describe the input or the progress rather than what went wrong.
_NOISE = re.compile(
    r"^(Input #|Output #|Stream #|Stream mapping|Duration:|Metadata:|Side data:|Press \[q\]|frame=|size=|"
    r"video:|\[out#|\[Parsed_showinfo|\[Parsed_ashowinfo|Conversion failed!|Exiting normally|"
    r"At least one output file must be specified)"
)
ERROR_WORDS = re.compile(r"error|invalid|fail|could not|cannot|unable|not found|no such|corrupt|missing|"
                          r"unsupported|truncat|denied|unknown|too (?:many|large|small)", re.IGNORECASE)
_CONTEXT_PREFIX = re.compile(r"^(?:\[[^\]]*@ 0x[0-9a-f]+\]\s*)+")
_ABSOLUTE_PATH = re.compile(r"(?:[A-Za-z]:)?[\\/](?:[^\s'\"\\/:]+[\\/])+([^\s'\"\\/:]+)")


# The container formats (ffmpeg demuxers) a user's file may be opened with: those of the accepted extensions
# (mp4/mov/m4v: mov; mkv/webm: matroska; avi; flv). ffmpeg otherwise picks the demuxer from the content, and
# some read other files that the content names (concat, HLS/DASH playlists, image2 patterns…): an upload
# could then read another user's video from the same folder. Protocols are limited to the one local file.
USER_MEDIA_DEMUXERS = ("mov", "matroska", "avi", "flv")
USER_MEDIA_INPUT = {"format_whitelist": ",".join(USER_MEDIA_DEMUXERS), "protocol_whitelist": "file"}
# Sound files the evaluation reads (speech folders, enrolment utterances): single-file demuxers too.
SOUND_DEMUXERS = ("wav", "flac", "mp3", "ogg", "aac", "w64")


def user_media_input_args(extra_demuxers: tuple[str, ...] = ()) -> list[str]:
    """:data:`USER_MEDIA_INPUT` as command-line input options: they go before every ``-i`` of a user's file.
    ``extra_demuxers`` widens the list (only to demuxers that read nothing but the file itself)."""
    options = dict(USER_MEDIA_INPUT, format_whitelist=",".join(USER_MEDIA_DEMUXERS + extra_demuxers))
    return [arg for name, value in options.items() for arg in (f"-{name}", value)]


class FFmpegNotFound(RuntimeError):
    """No usable ffmpeg executable could be found."""


class FFmpegError(RuntimeError):
    """An ffmpeg run failed. ``reason`` is the meaningful tail of its log (server paths removed)."""

    def __init__(self, reason: str, returncode: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.returncode = returncode


class ProcessRegistry(Protocol):
    """Something that wants to know about running child processes (a cancel token)."""

    def register(self, process: subprocess.Popen) -> None: ...

    def unregister(self, process: subprocess.Popen) -> None: ...


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def locate_ffmpeg(override: str | None = None) -> tuple[str, str]:
    """The ffmpeg executable to use and how it was chosen (words for a log line or ``/health``).

    Order: ``override``, ``$MEDIA_CLEANER_FFMPEG``, ``<repo>/ffmpeg/ffmpeg[.exe]``, the ``imageio-ffmpeg``
    wheel's binary, ``ffmpeg`` on the PATH.
    """
    if override:   # Settings reads MEDIA_CLEANER_FFMPEG too: name the variable when that is where it came from
        came_from = ENV_VARIABLE if override == os.environ.get(ENV_VARIABLE) else "the ffmpeg setting"
        return _resolve_explicit(override), came_from
    if os.environ.get(ENV_VARIABLE):
        return _resolve_explicit(os.environ[ENV_VARIABLE]), ENV_VARIABLE
    for name in ("ffmpeg", "ffmpeg.exe"):
        if _is_executable(LOCAL_FFMPEG_DIR / name):
            return str(LOCAL_FFMPEG_DIR / name), "the ffmpeg/ folder"
    wheel_error = None
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe(), "the imageio-ffmpeg package"
    except (ImportError, RuntimeError) as exc:
        wheel_error = exc
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path, "the PATH"
    raise FFmpegNotFound(
        f"ffmpeg was not found: set {ENV_VARIABLE}, put a build in {LOCAL_FFMPEG_DIR}, "
        f"`pip install imageio-ffmpeg`, or install ffmpeg on the PATH ({wheel_error})")


def _resolve_explicit(explicit: str) -> str:
    resolved = shutil.which(explicit) or (explicit if _is_executable(Path(explicit)) else None)
    if resolved is None:
        raise FFmpegNotFound(f"The configured ffmpeg {explicit!r} does not exist or is not executable")
    return resolved


@functools.lru_cache(maxsize=8)
def find_ffmpeg(override: str | None = None) -> str:
    """The ffmpeg executable to use (:func:`locate_ffmpeg`), looked up once per ``override``."""
    return locate_ffmpeg(override)[0]


# --- what the chosen binary can do ---------------------------------------------------------------------

# 5.1 is the first release with -fps_mode, which the decoder uses to pass every frame through untouched.
MINIMUM_VERSION = (5, 1)
# What the pipeline runs: the filters of the decoder and encoder chains, the encoders, the output formats.
REQUIRED_FILTERS = ("showinfo", "crop", "scale", "format", "setparams", "setsar", "aresample")
REQUIRED_ENCODERS = ("libx264", "aac", "rawvideo", "pcm_f32le")
REQUIRED_MUXERS = ("mp4", "rawvideo", "f32le", "framecrc")
# How long the start-up check waits for each answer: a working ffmpeg answers in milliseconds.
INSPECT_TIMEOUT_S = 15.0
_VERSION = re.compile(r"^ffmpeg version (\S+)")
_VERSION_NUMBER = re.compile(r"^n?(\d+)\.(\d+)")


class FFmpegUnusable(FFmpegNotFound):
    """An ffmpeg was found but cannot run the pipeline (too old, missing pieces, not answering)."""


@dataclass(frozen=True)
class FFmpegInfo:
    """The ffmpeg in use, as checked once at start-up."""

    path: str
    source: str                    # how it was chosen (see locate_ffmpeg)
    version: str                   # as the binary prints it, e.g. "5.1.9-0+deb12u1" or "9.0.2-static"
    release: tuple[int, int] | None  # (major, minor); None for a development (git) build
    libvmaf: bool                  # the evaluation's VMAF needs it; the service runs without it

    def public(self) -> dict:
        """What /health and /stats show: no server path."""
        return {"version": self.version, "source": self.source, "libvmaf": self.libvmaf}


def _ask(path: str, *args: str) -> str:
    """One informational ffmpeg run (``-version``, ``-filters``…) under INSPECT_TIMEOUT_S; its stdout."""
    try:
        _, stdout, _ = capture_ffmpeg([path, "-hide_banner", *args], timeout_s=INSPECT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise FFmpegUnusable(f"The ffmpeg at {path} did not answer `ffmpeg {' '.join(args)}` within "
                             f"{INSPECT_TIMEOUT_S:.0f} s. {_HOW_TO_CHOOSE}") from None
    except OSError as exc:
        raise FFmpegUnusable(f"The ffmpeg at {path} could not be started ({exc}). {_HOW_TO_CHOOSE}") from None
    return stdout.decode("utf-8", "replace")


_HOW_TO_CHOOSE = (f"Choose another with {ENV_VARIABLE}=/path/to/ffmpeg, or unset it to use the one of the "
                  f"imageio-ffmpeg package (ffmpeg/README.md).")


def _names(listing: str) -> set[str]:
    """The names in an ``ffmpeg -filters``/``-encoders``/``-muxers`` listing: the second column of each row
    (the legend rows above the table have "=" there)."""
    names = set()
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1] != "=":
            names.update(fields[1].split(","))
    return names


def parse_version(banner: str) -> tuple[str, tuple[int, int] | None]:
    """``ffmpeg -version``'s first line → ("5.1.9-0+deb12u1", (5, 1)); the tuple is None for git builds."""
    match = _VERSION.match(banner.strip())
    if not match:
        return "unknown", None
    number = _VERSION_NUMBER.match(match.group(1))
    return match.group(1), (int(number.group(1)), int(number.group(2))) if number else None


@functools.lru_cache(maxsize=8)
def inspect_ffmpeg(override: str | None = None) -> FFmpegInfo:
    """Check, once per ``override``, that the chosen ffmpeg can run the pipeline; raise :class:`FFmpegUnusable`
    with a message that names the binary, its version, what is missing and how to choose another."""
    path, source = locate_ffmpeg(override)
    version, number = parse_version(_ask(path, "-version"))
    if version == "unknown":
        raise FFmpegUnusable(f"The ffmpeg at {path} (from {source}) does not answer `-version` as ffmpeg does. "
                             f"{_HOW_TO_CHOOSE}")
    if number is not None and number < MINIMUM_VERSION:
        raise FFmpegUnusable(f"The ffmpeg at {path} (from {source}) is version {version}; Media Cleaner needs "
                             f"{MINIMUM_VERSION[0]}.{MINIMUM_VERSION[1]} or newer. {_HOW_TO_CHOOSE}")
    filters, encoders, muxers = (_names(_ask(path, flag)) for flag in ("-filters", "-encoders", "-muxers"))
    missing = ([f"filter {name}" for name in REQUIRED_FILTERS if name not in filters]
               + [f"encoder {name}" for name in REQUIRED_ENCODERS if name not in encoders]
               + [f"format {name}" for name in REQUIRED_MUXERS if name not in muxers])
    if missing:
        raise FFmpegUnusable(f"The ffmpeg at {path} (from {source}, version {version}) lacks what Media Cleaner "
                             f"needs: {', '.join(missing)}. {_HOW_TO_CHOOSE}")
    return FFmpegInfo(path=path, source=source, version=version, release=number, libvmaf="libvmaf" in filters)


# --- running it ----------------------------------------------------------------------------------------

def kill_process(process: subprocess.Popen) -> None:
    """Kill an ffmpeg child if it still runs. Children stay in their parent's process group on purpose: an
    engine process that is killed with its group takes its ffmpeg children with it."""
    if process.poll() is None:
        try:
            process.kill()
        except ProcessLookupError:
            pass


def hide_paths(text: str) -> str:
    """``text`` with every absolute path shortened to its file name (users must not see server paths)."""
    return _ABSOLUTE_PATH.sub(lambda match: match.group(1), text)


def error_reason(stderr: str, max_lines: int = 3) -> str:
    """The lines of an ffmpeg log that say what went wrong, without log prefixes and server paths."""
    lines = []
    for raw in stderr.splitlines():
        if not raw.strip() or raw.startswith((" ", "\t")):
            continue  # indented lines are stream listings and metadata
        line = _CONTEXT_PREFIX.sub("", raw.strip())
        if line and not _NOISE.match(raw.strip()) and not _NOISE.match(line):
            lines.append(line)
    errors = [line for line in lines if ERROR_WORDS.search(line)]
    chosen = (errors or lines)[-max_lines:]
    # ffmpeg often repeats the same complaint for every packet.
    unique = list(dict.fromkeys(chosen))
    return hide_paths("; ".join(unique)) or "ffmpeg failed without an explanation"


def capture_ffmpeg(args: Sequence[str], *, timeout_s: float | None = None,
                   registry: ProcessRegistry | None = None) -> tuple[int, bytes, bytes]:
    """Run ffmpeg to the end and collect its output: (exit status, stdout, stderr). ``registry`` learns about
    the process while it runs (so a cancel can kill it). A run longer than ``timeout_s`` is killed and raises
    :class:`subprocess.TimeoutExpired`."""
    process = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    if registry is not None:
        registry.register(process)
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_process(process)
        process.communicate()
        raise
    finally:
        kill_process(process)
        if registry is not None:
            registry.unregister(process)
    return process.returncode, out, err


def run_ffmpeg(args: Sequence[str], *, registry: ProcessRegistry | None = None,
               timeout_s: float | None = None) -> str:
    """Run a complete ffmpeg command line (``args[0]`` is the executable), wait for it; its log.

    ``registry`` learns about the process while it runs (so a cancel can kill it). A run that takes longer
    than ``timeout_s`` is killed. Raises :class:`FFmpegError` with :func:`error_reason` of the log when
    ffmpeg exits non-zero, or saying that it was stopped at its deadline.
    """
    try:
        returncode, _, err = capture_ffmpeg(args, timeout_s=timeout_s, registry=registry)
    except subprocess.TimeoutExpired:
        raise FFmpegError(f"ffmpeg did not finish within {timeout_s:.0f} s and was stopped") from None
    stderr = err.decode("utf-8", "replace")
    if returncode != 0:
        raise FFmpegError(error_reason(stderr), returncode)
    return stderr
