"""The recognizers the identity cloak attacks, each with the chip it embeds, behind one call:
``embedding(images, boxes, poses) -> (B, D)`` unit vectors, differentiable in the images.

- FaceNet (:mod:`.recognizer`) embeds a box chip: the face box widened a little, 160 px;
- dlib's ResNet (:mod:`.dlib_recognizer`) embeds a chip aligned by the face's landmarks, 150 px, cut from a
  pose relative to the box (:func:`posed_chips`), so that it follows the box through the random journeys;
- an ensemble embeds with each and concatenates the unit vectors scaled by 1/√n: a unit vector whose cosine
  with another ensemble vector is the mean of the members' cosines, so the identity loss pushes every member.

:func:`load_embedding` takes a name: ``"facenet"``, ``"dlib"`` or ``"facenet+dlib"``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


# The recognizer's chip: the face box widened by this share of its side on each side (the margin MTCNN's
# cropper adds for FaceNet: 20 px around a 140 px face in a 160 px chip).
CHIP_MARGIN = 0.07


def face_chips(images: torch.Tensor, boxes: torch.Tensor, size: int = 160) -> torch.Tensor:
    """Differentiable recognizer chips: (B, 3, size, size) in [0, 255] from (B, 3, H, W) crops in [-1, 1]
    and their (B, 4) face boxes (bilinear resampling of the widened box)."""
    from torchvision.ops import roi_align
    widen = (boxes[:, 2:] - boxes[:, :2]).max(dim=1, keepdim=True).values * CHIP_MARGIN
    regions = torch.cat([boxes[:, :2] - widen, boxes[:, 2:] + widen], dim=1)
    indexed = torch.cat([torch.arange(len(boxes), device=boxes.device, dtype=boxes.dtype)[:, None], regions], 1)
    return roi_align((images + 1) * 127.5, indexed, output_size=size, sampling_ratio=2, aligned=True)


def posed_chips(images: torch.Tensor, boxes: torch.Tensor, poses: torch.Tensor, size: int) -> torch.Tensor:
    """Differentiable aligned chips: (B, 3, size, size) in [0, 255] from (B, 3, H, W) crops in [-1, 1], their
    (B, 4) face boxes and (B, 4) poses ``(dx, dy, scale, angle)``: the chip's centre is the box's centre moved
    by (dx, dy) box sides, its side is ``scale`` box sides, and it is turned by ``angle`` radians (a
    landmark alignment expressed relative to the box, so that it follows the box through the journeys)."""
    height, width = images.shape[-2:]
    poses = poses.to(images.dtype)
    side = (boxes[:, 2:] - boxes[:, :2]).max(dim=1).values
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 + poses[:, 0] * side
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 + poses[:, 1] * side
    half = poses[:, 2] * side / 2
    cos, sin = torch.cos(poses[:, 3]), torch.sin(poses[:, 3])
    # affine_grid's units: the input's half-width and half-height (align_corners=False).
    theta = torch.stack([torch.stack([cos * half / (width / 2), -sin * half / (width / 2),
                                      cx / (width / 2) - 1], dim=1),
                         torch.stack([sin * half / (height / 2), cos * half / (height / 2),
                                      cy / (height / 2) - 1], dim=1)], dim=1)
    grid = F.affine_grid(theta, [len(boxes), 3, size, size], align_corners=False)
    return F.grid_sample((images + 1) * 127.5, grid, mode="bilinear", padding_mode="border", align_corners=False)


class FaceEmbedding(nn.Module):
    """One recognizer ``network`` (chips (B, 3, S, S) in [0, 255] → (B, D)) with its chip: aligned
    (:func:`posed_chips`; ``pose(box, landmarks)`` gives a face's pose) or, without ``pose``, box
    (:func:`face_chips`)."""

    def __init__(self, network: nn.Module, pose: Callable | None = None):
        super().__init__()
        self.network, self.pose = network, pose
        self.aligned = pose is not None

    def face_poses(self, faces) -> list | None:
        """The chip poses of detected ``faces`` (each with ``box`` and ``landmarks``), or None when this
        recognizer embeds box chips or a face has no landmarks (then every face gets a box chip)."""
        if not self.aligned or any(face.landmarks is None for face in faces):
            return None
        return [self.pose(face.box, face.landmarks) for face in faces]

    def forward(self, images: torch.Tensor, boxes: torch.Tensor, poses: torch.Tensor | None = None) -> torch.Tensor:
        size = self.network.chip_size
        if self.aligned and poses is not None:
            chips = posed_chips(images, boxes, poses, size)
        else:
            chips = face_chips(images, boxes, size)
        return F.normalize(self.network(chips), dim=1)


class EnsembleEmbedding(nn.Module):
    """Several :class:`FaceEmbedding` as one: their unit embeddings concatenated, scaled by 1/√n."""

    def __init__(self, members: list[FaceEmbedding]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.aligned = any(member.aligned for member in members)

    def face_poses(self, faces) -> list | None:
        """The aligned member's poses (the members share one pose per face; box members ignore them)."""
        return next((member.face_poses(faces) for member in self.members if member.aligned), None)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor, poses: torch.Tensor | None = None) -> torch.Tensor:
        parts = [member(images, boxes, poses) for member in self.members]
        return torch.cat(parts, dim=1) / math.sqrt(len(parts))


def load_embedding(name: str, device: str = "cpu") -> nn.Module:
    """The embedding called ``name``: recognizer names joined by ``+`` (``facenet``, ``dlib``)."""
    from media_cleaner.protection.face_cloak.dlib_recognizer import chip_pose, load_dlib_recognizer
    from media_cleaner.protection.face_cloak.recognizer import load_recognizer
    loaders = {"facenet": (load_recognizer, None), "dlib": (load_dlib_recognizer, chip_pose)}
    names = name.split("+")
    unknown = [part for part in names if part not in loaders]
    if unknown:
        raise ValueError(f"unknown recognizer {unknown[0]!r}; known: {', '.join(loaders)}")
    members = [FaceEmbedding(loaders[part][0](device), loaders[part][1]) for part in names]
    return members[0] if len(members) == 1 else EnsembleEmbedding(members)
