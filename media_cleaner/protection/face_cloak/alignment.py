"""Face-aligned crops: where a person's one perturbation lives, and how it is put onto each of their frames.

A person's perturbation is optimised in *face-aligned* coordinates: a square crop in which the five landmarks
(eyes, nose tip, mouth corners) sit at fixed places, whatever the head's position, size and in-plane turn in
the frame. The same perturbation pixel then lands on the same part of the face in every frame it is warped
onto, so one perturbation serves all of a person's frames (as OPOM's per-person mask does, Zhong and Deng,
"OPOM: Customized Invisible Cloak towards Face Privacy Protection", TPAMI 2022), and it can be optimised over
several of their frames at once.

:class:`AlignedCrop` is a similarity transform from the frame to a ``side`` × ``side`` crop that puts the
landmarks on :data:`CANONICAL_LANDMARKS` (scaled so the face is ``face_px`` wide and centred): :meth:`cut`
takes the aligned clean crop, :meth:`paste` adds a crop-space perturbation back onto the frame.
Landmarks are (5, 2) float arrays of (x, y) frame pixels in MTCNN's order: left eye, right eye, nose, left
and right mouth corners (left as seen in the picture).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# The five landmarks of an upright, frontal face in a 112 × 112 crop that the face fills: the template
# recognizers are commonly trained on (ArcFace's alignment), a fact of the field, not of one model.
CANONICAL_LANDMARKS = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
CANONICAL_FACE_PX = 112.0


def _similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The least-squares similarity transform (2, 3) taking the ``source`` points onto ``target`` (Umeyama,
    "Least-squares estimation of transformation parameters between two point patterns", TPAMI 1991)."""
    src_mean, dst_mean = source.mean(axis=0), target.mean(axis=0)
    src, dst = source - src_mean, target - dst_mean
    covariance = dst.T @ src / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:    # a reflection: not a pose a face can take
        sign[1, 1] = -1
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(singular) @ sign)) / max(float((src ** 2).sum() / len(source)), 1e-12)
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def padded_region(frame: np.ndarray, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    """The frame's pixels [y1:y2, x1:x2], edges replicated where the region leaves the frame."""
    height, width = frame.shape[:2]
    cx1, cy1, cx2, cy2 = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
    return cv2.copyMakeBorder(frame[cy1:cy2, cx1:cx2], cy1 - y1, y2 - cy2, cx1 - x1, x2 - cx2, cv2.BORDER_REPLICATE)


def add_levels(target: np.ndarray, x1: int, y1: int, change: np.ndarray) -> None:
    """Add ``change`` (h × w × 3 float32, levels of 255) to uint8 ``target`` at (x1, y1), in place, rounding
    to the nearest level (only that region is touched: a 1080p frame stays uint8)."""
    y2, x2 = y1 + change.shape[0], x1 + change.shape[1]
    target[y1:y2, x1:x2] = np.clip(np.rint(target[y1:y2, x1:x2].astype(np.float32) + change), 0, 255).astype(np.uint8)


def box_landmarks(box: tuple[float, float, float, float]) -> np.ndarray:
    """Stand-in landmarks for a face known only by its box: the canonical ones scaled into the box."""
    x1, y1, x2, y2 = box
    return np.array([x1, y1]) + CANONICAL_LANDMARKS / CANONICAL_FACE_PX * [x2 - x1, y2 - y1]


@dataclass(frozen=True)
class AlignedCrop:
    """The similarity transform ``matrix`` (2, 3) from frame pixels to a ``side`` × ``side`` aligned crop."""

    matrix: np.ndarray
    side: int

    @classmethod
    def from_landmarks(cls, landmarks: np.ndarray, side: int, face_px: float) -> "AlignedCrop":
        """The crop that puts ``landmarks`` where an upright face ``face_px`` wide has them, centred."""
        target = CANONICAL_LANDMARKS * (face_px / CANONICAL_FACE_PX) + (side - face_px) / 2
        return cls(_similarity(np.asarray(landmarks, dtype=np.float64), target), side)

    @property
    def scale(self) -> float:
        """Crop pixels per frame pixel."""
        return float(np.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))

    def moved(self, dx: float, dy: float) -> "AlignedCrop":
        """The same crop after the face moved by (dx, dy) frame pixels."""
        matrix = self.matrix.copy()
        matrix[:, 2] -= matrix[:, :2] @ np.array([dx, dy])
        return AlignedCrop(matrix, self.side)

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Frame points (N, 2) in crop pixels."""
        return np.asarray(points, dtype=np.float64) @ self.matrix[:, :2].T + self.matrix[:, 2]

    def box_in_crop(self, box: tuple[float, float, float, float]) -> list[float]:
        """A frame face box as an upright box in the crop: its centre mapped, its size scaled (the face is
        upright in the crop, so its box turns with it)."""
        centre = self.to_crop(np.array([[(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]]))[0]
        half = np.array([box[2] - box[0], box[3] - box[1]]) * self.scale / 2
        return [*(centre - half), *(centre + half)]

    def _frame_region(self) -> tuple[int, int, int, int]:
        """The frame pixels (x1, y1, x2, y2) the crop covers (may reach past the frame's edges)."""
        inverse = cv2.invertAffineTransform(self.matrix)
        corners = np.array([[0, 0], [self.side, 0], [0, self.side], [self.side, self.side]], dtype=np.float64)
        mapped = corners @ inverse[:, :2].T + inverse[:, 2]
        x1, y1 = np.floor(mapped.min(axis=0)).astype(int) - 1
        x2, y2 = np.ceil(mapped.max(axis=0)).astype(int) + 2
        return int(x1), int(y1), int(x2), int(y2)

    def cut(self, frame: np.ndarray) -> np.ndarray:
        """The aligned crop of uint8 ``frame`` (H, W, 3), side × side (edges replicated where it leaves the
        frame). A face larger than the crop's is first shrunk by area averaging, as a detector's pyramid
        shrinks it, so the crop does not alias."""
        x1, y1, x2, y2 = self._frame_region()
        patch = padded_region(frame, x1, y1, x2, y2)
        # The map from the patch's pixels to the crop's.
        matrix = self.matrix.copy()
        matrix[:, 2] += matrix[:, :2] @ np.array([x1, y1], dtype=np.float64)
        if self.scale < 1.0:
            shrunk = cv2.resize(patch, (max(1, round(patch.shape[1] * self.scale)),
                                        max(1, round(patch.shape[0] * self.scale))), interpolation=cv2.INTER_AREA)
            fx, fy = shrunk.shape[1] / patch.shape[1], shrunk.shape[0] / patch.shape[0]
            # Pixel centres: shrunk (u + 0.5) = f (x + 0.5).
            to_patch = np.array([[1 / fx, 0, 0.5 / fx - 0.5], [0, 1 / fy, 0.5 / fy - 0.5], [0, 0, 1]])
            matrix = matrix @ to_patch
            patch = shrunk
        return cv2.warpAffine(patch, matrix, (self.side, self.side), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)

    def paste(self, target: np.ndarray, delta: np.ndarray) -> None:
        """Add ``delta`` (side × side × 3 float32, levels of 255, zero outside the face) warped back to the
        frame onto uint8 ``target``, in place, rounding to the nearest level; only the face's region is
        touched."""
        height, width = target.shape[:2]
        x1, y1, x2, y2 = self._frame_region()
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
        if x2 <= x1 or y2 <= y1:
            return
        matrix = self.matrix.copy()
        matrix[:, 2] += matrix[:, :2] @ np.array([x1, y1], dtype=np.float64)
        # Linear resampling: the perturbation is smooth at the crop's scale (as the box crops paste it).
        add_levels(target, x1, y1, cv2.warpAffine(delta, matrix, (x2 - x1, y2 - y1),
                                                  flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0))
