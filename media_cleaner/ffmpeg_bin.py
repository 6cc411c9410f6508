"""Locating the ffmpeg executable and running it.

This module owns two things only: deciding which ffmpeg binary the service uses (an explicit override, the
``MEDIA_CLEANER_FFMPEG`` variable, a build dropped into the repository's ``ffmpeg/`` folder, the system
``PATH``, and finally the binary shipped in the ``imageio-ffmpeg`` wheel), and turning a failed ffmpeg run
into an :class:`FFmpegError` whose message is the part of ffmpeg's log a person can act on.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Protocol, Sequence

ENV_VARIABLE = "MEDIA_CLEANER_FFMPEG"
LOCAL_FFMPEG_DIR = Path(__file__).resolve().parents[1] / "ffmpeg"

# Lines of ffmpeg's log that describe the input or the progress rather than what went wrong.
_NOISE = re.compile(
    r"^(Input #|Output #|Stream #|Stream mapping|Duration:|Metadata:|Side data:|Press \[q\]|frame=|size=|"
    r"video:|\[out#|\[Parsed_showinfo|\[Parsed_ashowinfo|Conversion failed!|Exiting normally|"
    r"At least one output file must be specified)"
)
_ERROR_WORDS = re.compile(r"error|invalid|fail|could not|cannot|unable|not found|no such|corrupt|missing|"
                          r"unsupported|truncat|denied|unknown|too (?:many|large|small)", re.IGNORECASE)
_CONTEXT_PREFIX = re.compile(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*")
_ABSOLUTE_PATH = re.compile(r"(?:[A-Za-z]:)?[\\/](?:[^\s'\"\\/:]+[\\/])+([^\s'\"\\/:]+)")


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


@functools.lru_cache(maxsize=8)
def find_ffmpeg(override: str | None = None) -> str:
    """The ffmpeg executable to use, looked up once per ``override``.

    Order: ``override``, ``$MEDIA_CLEANER_FFMPEG``, ``<repo>/ffmpeg/ffmpeg[.exe]``, ``ffmpeg`` on the PATH,
    the ``imageio-ffmpeg`` wheel's binary.
    """
    explicit = override or os.environ.get(ENV_VARIABLE)
    if explicit:
        resolved = shutil.which(explicit) or (explicit if _is_executable(Path(explicit)) else None)
        if resolved is None:
            raise FFmpegNotFound(f"The configured ffmpeg {explicit!r} does not exist or is not executable")
        return resolved
    for name in ("ffmpeg", "ffmpeg.exe"):
        if _is_executable(LOCAL_FFMPEG_DIR / name):
            return str(LOCAL_FFMPEG_DIR / name)
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        raise FFmpegNotFound(
            f"ffmpeg was not found: set {ENV_VARIABLE}, put a build in {LOCAL_FFMPEG_DIR}, install ffmpeg on "
            f"the PATH, or `pip install imageio-ffmpeg` ({exc})") from exc


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
    errors = [line for line in lines if _ERROR_WORDS.search(line)]
    chosen = (errors or lines)[-max_lines:]
    # ffmpeg often repeats the same complaint for every packet.
    unique = list(dict.fromkeys(chosen))
    return hide_paths("; ".join(unique)) or "ffmpeg failed without an explanation"


def run_ffmpeg(args: Sequence[str], *, registry: ProcessRegistry | None = None) -> str:
    """Run a complete ffmpeg command line (``args[0]`` is the executable), wait for it; its log.

    ``registry`` learns about the process while it runs (so a cancel can kill it). Raises
    :class:`FFmpegError` with :func:`error_reason` of the log when ffmpeg exits non-zero.
    """
    process = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    if registry is not None:
        registry.register(process)
    try:
        _, err = process.communicate()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if registry is not None:
            registry.unregister(process)
    stderr = err.decode("utf-8", "replace")
    if process.returncode != 0:
        raise FFmpegError(error_reason(stderr), process.returncode)
    return stderr
