"""Frame timestamps: read from ffmpeg's showinfo log while decoding, and put back on the encoded packets (the
encoder works at a constant rate; variable frame rate survives the remux)."""
from __future__ import annotations

import re
import threading
from fractions import Fraction
from pathlib import Path

import av

from media_cleaner.media.cancel import CancelToken
from media_cleaner.media.probe import MediaError


# --- frame timestamps from showinfo --------------------------------------------------------------------

_SHOWINFO_CONFIG = re.compile(r"\[Parsed_showinfo_\d+ @ [^\]]+\] config in time_base: (\d+)/(\d+)")
# ffmpeg 5.1 prints no "duration:" field (6.0 added it): it is optional.
_SHOWINFO_FRAME = re.compile(r"\[Parsed_showinfo_\d+ @ [^\]]+\] n:\s*(\d+) pts:\s*(-?\d+|NOPTS)"
                             r"(?:.*?duration:\s*(-?\d+|NOPTS))?")


class FrameClock:
    """The decoder's frame timestamps, parsed from its showinfo log lines (the n-th line is the n-th frame).

    Timestamps are integers in the video stream's time base, made strictly increasing (MP4 needs that).
    """

    def __init__(self, frame_rate: Fraction):
        self._condition = threading.Condition()
        self._frame_rate = frame_rate
        self._ended = False
        self.time_base: Fraction | None = None
        self.pts: list[int] = []
        self.last_duration = 0

    def _frame_step(self) -> int:
        return max(1, round(1 / (self._frame_rate * self.time_base)))

    def feed(self, line: str) -> bool:
        """Take one decoder log line; True when it was showinfo's."""
        if "[Parsed_showinfo_" not in line:
            return False
        if match := _SHOWINFO_FRAME.search(line):
            with self._condition:
                if self.time_base is None:
                    self.time_base = Fraction(1, 1000)
                pts = None if match.group(2) == "NOPTS" else int(match.group(2))
                if self.pts and (pts is None or pts <= self.pts[-1]):
                    pts = self.pts[-1] + (self._frame_step() if pts is None else 1)
                self.pts.append(0 if pts is None else pts)
                duration = match.group(3)
                self.last_duration = int(duration) if duration not in (None, "NOPTS") and int(duration) > 0 \
                    else 0
                self._condition.notify_all()
        elif match := _SHOWINFO_CONFIG.search(line):
            with self._condition:
                self.time_base = Fraction(int(match.group(1)), int(match.group(2)))
        return True

    def end(self) -> None:
        with self._condition:
            self._ended = True
            self._condition.notify_all()

    def seconds(self, index: int) -> float | None:
        """Presentation time of frame ``index``, waiting for its log line; None if the log ended first."""
        with self._condition:
            while len(self.pts) <= index and not self._ended:
                self._condition.wait(0.5)
            return float(self.pts[index] * self.time_base) if len(self.pts) > index else None

    def final_duration(self) -> int:
        if self.last_duration > 0:
            return self.last_duration
        if len(self.pts) >= 2:
            return self.pts[-1] - self.pts[-2]
        return self._frame_step()


def retime(encoded: Path, target: Path, clock: FrameClock, frame_rate: Fraction, cancel: CancelToken) -> None:
    """Copy the encoded H.264 packets into ``target`` with the original frames' timestamps.

    The encoder numbered the frames at a constant ``frame_rate``, so a packet's display index is its
    timestamp × rate. Decode timestamps follow the new presentation times shifted by the encoder's
    reorder delay, which keeps them increasing and never after their presentation time.
    """
    pts = clock.pts
    step = pts[1] - pts[0] if len(pts) >= 2 else clock.final_duration()
    with av.open(str(encoded)) as source:
        stream = source.streams.video[0]
        origin = None
        indices = []
        for packet in source.demux(stream):
            if packet.pts is None:
                continue  # the demuxer's end-of-stream marker
            if origin is None:
                origin = packet.pts
            indices.append(round((packet.pts - origin) * packet.time_base * frame_rate))
    if sorted(indices) != list(range(len(pts))):
        raise MediaError(f"The encoded video has {len(indices)} frames where {len(pts)} were expected.")
    delay = max(0, max(position - index for position, index in enumerate(indices)))

    with av.open(str(encoded)) as source, av.open(str(target), "w", format="mp4") as output:
        stream = source.streams.video[0]
        retimed = output.add_stream_from_template(stream)
        retimed.time_base = clock.time_base
        position = 0
        for packet in source.demux(stream):
            if packet.pts is None:
                continue
            cancel.raise_if_cancelled()
            index = indices[position]
            packet.stream = retimed
            packet.time_base = clock.time_base
            packet.pts = pts[index]
            packet.dts = pts[position - delay] if position >= delay else pts[0] - (delay - position) * step
            packet.duration = (pts[index + 1] if index + 1 < len(pts) else pts[index] + clock.final_duration()) \
                - pts[index]
            output.mux(packet)
            position += 1
