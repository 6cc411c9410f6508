"""Protection parameters: names, ranges, defaults and their validation, in one place.

The same checks serve the API (422), the command line and the library, so every caller gets the same
message naming the field and its allowed range.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

EPSILON_RANGE = (0.04, 0.20)
VIDEO_STRENGTH_RANGE = (1.0, 2.0)
EVERY_N_FRAMES_RANGE = (1, 30)

DEFAULT_EPSILON = 0.12
DEFAULT_VIDEO_STRENGTH = 1.0
DEFAULT_EVERY_N_FRAMES = 10
DEFAULT_AUDIO_LEVEL = "weak"

# Presets for people who do not want to think in epsilons: measured points of the epsilon × strength curve
# (EVALUATION.md, "Identity cloak"). invisible: the default, hard to tell from the original also enlarged; moves
# recognizers it never saw little; balanced: identity protection, a visible wrinkle-like texture;
# strong: hides the face from detectors instead (MTCNN in about three frames of four, others less), plainly blotchy.
PRESETS = {"invisible": (0.12, 1.0), "balanced": (0.16, 1.5), "strong": (0.20, 2.0)}

AUDIO_LEVELS = ("none", "weak", "medium", "strong")
# The user's Russian names for the levels are accepted as aliases.
AUDIO_LEVEL_ALIASES = {"слабый": "weak", "средний": "medium", "сильный": "strong", "нет": "none"}


class ParameterError(ValueError):
    """A protection parameter is missing, malformed or out of range. ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def _number(field: str, value: Any, lo: float, hi: float, *, integer: bool = False) -> float:
    if isinstance(value, bool):
        raise ParameterError(field, f"{field} must be a number between {lo:g} and {hi:g}")
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise ParameterError(field, f"{field} must be a number between {lo:g} and {hi:g}, got {str(value)[:40]!r}")
    if not math.isfinite(number):
        raise ParameterError(field, f"{field} must be a finite number between {lo:g} and {hi:g}")
    if integer and number != int(number):
        raise ParameterError(field, f"{field} must be a whole number between {lo:g} and {hi:g}, got {number:g}")
    if number < lo:
        raise ParameterError(field, f"{field} {number:g} is below the minimum {lo:g} (allowed {lo:g}–{hi:g})")
    if number > hi:
        raise ParameterError(field, f"{field} {number:g} is above the maximum {hi:g} (allowed {lo:g}–{hi:g})")
    return number


def normalize_audio_level(value: Any) -> str:
    """Return the canonical audio level for ``value`` (English or Russian name, any case)."""
    text = str(value).strip().lower()
    text = AUDIO_LEVEL_ALIASES.get(text, text)
    if text not in AUDIO_LEVELS:
        allowed = ", ".join(AUDIO_LEVELS + tuple(a for a in AUDIO_LEVEL_ALIASES if a != "нет"))
        raise ParameterError("audio_level", f"audio_level {str(value)[:40]!r} is not one of: {allowed}")
    return text


@dataclass(frozen=True)
class ProtectionParams:
    """The user-facing knobs of one protection run (the README's "Parameters").

    epsilon: L∞ cap of the frame perturbation in the [-1, 1] pixel range (0.12 → ±15 of 255 levels).
    video_strength: multiplies the budget and the attack effort.
    every_n_frames: the perturbation is optimised on every N-th frame and carried to the frames between.
    audio_level: audio mask budget; ``none`` keeps the original sound.
    """

    epsilon: float = DEFAULT_EPSILON
    video_strength: float = DEFAULT_VIDEO_STRENGTH
    every_n_frames: int = DEFAULT_EVERY_N_FRAMES
    audio_level: str = DEFAULT_AUDIO_LEVEL

    @classmethod
    def parse(cls, epsilon: Any = None, video_strength: Any = None, every_n_frames: Any = None,
              audio_level: Any = None, defaults: "ProtectionParams | None" = None,
              protection: Any = None) -> "ProtectionParams":
        """Validate raw values (strings from a form or a command line, or numbers).

        ``protection`` (a :data:`PRESETS` name) sets epsilon and video_strength; an explicit ``epsilon`` or
        ``video_strength`` still wins. ``None`` (or an empty string) takes the value from ``defaults`` (the
        server's configured defaults).
        """
        base = defaults or cls()

        def given(value: Any) -> bool:
            return value is not None and not (isinstance(value, str) and value.strip() == "")

        if given(protection):
            name = str(protection).strip().lower()
            if name not in PRESETS:
                raise ParameterError("protection", f"protection {str(protection)[:40]!r} is not one of: "
                                                   f"{', '.join(PRESETS)}")
            base = cls(*PRESETS[name], base.every_n_frames, base.audio_level)

        return cls(
            epsilon=_number("epsilon", epsilon, *EPSILON_RANGE) if given(epsilon) else base.epsilon,
            video_strength=(_number("video_strength", video_strength, *VIDEO_STRENGTH_RANGE)
                            if given(video_strength) else base.video_strength),
            every_n_frames=(int(_number("every_n_frames", every_n_frames, *EVERY_N_FRAMES_RANGE, integer=True))
                            if given(every_n_frames) else base.every_n_frames),
            audio_level=normalize_audio_level(audio_level) if given(audio_level) else base.audio_level,
        )

    @property
    def effective_epsilon(self) -> float:
        """The L∞ cap actually applied: epsilon × video_strength."""
        return self.epsilon * self.video_strength

    def as_dict(self) -> dict:
        return asdict(self)
