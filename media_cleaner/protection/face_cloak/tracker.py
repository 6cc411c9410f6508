"""Keyframes and face tracks: which frames are optimised, and how a perturbation follows a face between them.

The cloak optimises on every N-th frame (``every_n_frames``) and on any frame where the picture
changes under it: a scene cut (:class:`SceneCutDetector`) or a face the tracker loses. Between keyframes the
latest perturbation is carried to each frame, moved with its face's box (:class:`FaceTrack.follow`,
normalised cross-correlation template matching on a small grey copy of the face, as in Lewis, "Fast
Normalized Cross-Correlation", 1995). New faces are found at the next keyframe; a face matched to a track
there warm-starts from that track's perturbation.

Boxes are (x1, y1, x2, y2) floats in frame pixels; frames are uint8 RGB (H, W, 3).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from media_cleaner.protection.face_cloak.alignment import AlignedCrop

# Side, in pixels, of the grey copy of a face that the tracker matches: big enough to lock on eyes and mouth,
# small enough to cost about a millisecond per face.
TRACK_FACE_PX = 48


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class SceneCutDetector:
    """Flags a cut when the mean absolute difference of 64×36 thumbnails jumps over ``threshold`` (levels of 255).

    Talking-head frames differ by a few levels from one to the next; a cut changes most pixels by tens.
    """

    def __init__(self, threshold: float = 30.0):
        self.threshold = threshold
        self._previous: np.ndarray | None = None

    def is_cut(self, frame: np.ndarray) -> bool:
        thumbnail = cv2.resize(frame, (64, 36), interpolation=cv2.INTER_AREA).astype(np.int16)
        cut = self._previous is not None and float(np.abs(thumbnail - self._previous).mean()) > self.threshold
        self._previous = thumbnail
        return cut


@dataclass
class FaceTrack:
    """One face followed between keyframes, with the perturbation optimised for it.

    box: current face box in frame pixels; delta_rgb: (S, S, 3) float32 numpy RGB perturbation (levels) for the
    square attack crop around the box; delta_ycbcr: (3, S, S) torch warm start for the next keyframe.
    """

    box: tuple[float, float, float, float]
    delta_rgb: np.ndarray | None = None
    delta_ycbcr: torch.Tensor | None = None
    # The identity cloak's: the person's clean embedding (mean over their keyframes, unit length), how many
    # keyframes it averages, and their decoy (fixed for the person's whole track).
    identity: torch.Tensor | None = None
    identity_count: int = 0
    decoy: torch.Tensor | None = None
    # How many keyframes optimised this person's perturbation, and their landmarks within the box then.
    optimised: int = 0
    pose: np.ndarray | None = None
    # The per-person mode's (see the engine): the frame-to-aligned-crop transform at the last keyframe and the
    # box it was taken with (frames in between move it with the box), the clean aligned crops the
    # perturbation is optimised over (the latest few keyframes), and the landmarks in the crop when it was
    # last optimised (a turn of the head shows there, after alignment has removed shifts, zoom and tilt).
    aligned: AlignedCrop | None = None
    anchor: tuple[float, float, float, float] | None = None
    bank: list = field(default_factory=list)
    aligned_pose: np.ndarray | None = None
    _template: np.ndarray | None = field(default=None, repr=False)
    _scale: float = field(default=1.0, repr=False)

    def remember(self, frame: np.ndarray) -> None:
        """Take the face's appearance in ``frame`` as the template to look for in the next frame."""
        x1, y1, x2, y2 = (int(round(v)) for v in self.box)
        patch = frame[max(0, y1):max(0, y2), max(0, x1):max(0, x2)]
        if patch.size == 0:
            self._template = None
            return
        self._scale = min(1.0, TRACK_FACE_PX / max(patch.shape[:2]))
        grey = cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY)
        self._template = cv2.resize(grey, None, fx=self._scale, fy=self._scale, interpolation=cv2.INTER_AREA)

    def follow(self, frame: np.ndarray, min_score: float = 0.5) -> bool:
        """Move the box to where the face went in ``frame`` (translation only); False when it is lost."""
        if self._template is None or min(self._template.shape) < 4:
            return False
        height, width = frame.shape[:2]
        x1, y1, x2, y2 = self.box
        reach_x, reach_y = (x2 - x1) * 0.5, (y2 - y1) * 0.5
        sx1, sy1 = int(max(0, x1 - reach_x)), int(max(0, y1 - reach_y))
        sx2, sy2 = int(min(width, x2 + reach_x)), int(min(height, y2 + reach_y))
        region = frame[sy1:sy2, sx1:sx2]
        if region.size == 0:
            return False
        grey = cv2.resize(cv2.cvtColor(region, cv2.COLOR_RGB2GRAY), None, fx=self._scale, fy=self._scale,
                          interpolation=cv2.INTER_AREA)
        if grey.shape[0] < self._template.shape[0] or grey.shape[1] < self._template.shape[1]:
            return False
        scores = cv2.matchTemplate(grey, self._template, cv2.TM_CCOEFF_NORMED)
        _, best, _, (mx, my) = cv2.minMaxLoc(scores)
        if not np.isfinite(best) or best < min_score:
            return False
        nx1, ny1 = sx1 + mx / self._scale, sy1 + my / self._scale
        self.box = (nx1, ny1, nx1 + (x2 - x1), ny1 + (y2 - y1))
        self.remember(frame)
        return True
