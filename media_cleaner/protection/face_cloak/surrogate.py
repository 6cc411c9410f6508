"""The white-box surrogate: the MTCNN face detection cascade, made differentiable on face crops.

MTCNN (Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded Convolutional Networks",
IEEE SPL 2016) runs three networks: P-Net, a 12×12 fully convolutional scorer slid over an image pyramid;
R-Net, which re-scores each candidate box resampled to 24×24; O-Net, which scores 48×48 resamplings and
regresses five landmarks. The weights are the ones that ship inside ``facenet-pytorch==2.5.3`` (no download).

Two uses, kept apart:

- :meth:`MTCNNSurrogate.detect` finds faces in a clean frame (no gradients) — the engine's face finder;
- :meth:`MTCNNSurrogate.stage_outputs` runs the three stages on a batch of crops with gradients flowing back
  to the pixels: P-Net over the pyramid scales at which the face is 12–48 px (the scales that *see* it), and
  R-Net/O-Net on the face box and jittered copies of it, resampled with :func:`torchvision.ops.roi_align`
  (bilinear, so differentiable in the image).

Images for :meth:`stage_outputs` are float tensors (B, 3, H, W), RGB, in the [-1, 1] range that ``epsilon`` is measured in.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

# P-Net's receptive field is 12 px; MTCNN's pyramid steps by 0.709, so a face is scored at the scales that
# bring it to 12, 17, 24, 34 and 48 px (larger copies are rejected by R-Net anyway).
PNET_FACE_SIZES_PX = (12.0, 17.0, 24.0, 34.0, 48.0)
# Candidate boxes R-Net and O-Net re-score: MTCNN passes them boxes that are square and off by a little
# (P-Net's regression is coarse), so the attack scores the face box scaled and shifted.
BOX_JITTER = ((1.0, 0.0, 0.0), (0.85, 0.0, 0.0), (1.15, 0.04, 0.0), (1.0, -0.06, 0.06))
# MTCNN normalises pixels as (x - 127.5) / 128; the attack works in (x - 127.5) / 127.5.
_TO_MTCNN = 127.5 / 128.0


@dataclass
class StageOutputs:
    """Differentiable outputs of the cascade for a batch of B crops (logits are log p(face) − log p(not face)).

    pnet_logits: one (B, h_s, w_s) face-logit map per pyramid scale;
    rnet_logits, onet_logits: (B, K) logits for the K jittered boxes of :data:`BOX_JITTER`;
    landmarks: (B, K, 10) O-Net landmarks (5 x then 5 y), relative to each box, in [0, 1].
    """

    pnet_logits: list[torch.Tensor]
    rnet_logits: torch.Tensor
    onet_logits: torch.Tensor
    landmarks: torch.Tensor


@dataclass(frozen=True)
class DetectedFace:
    """A face found in a frame: box (x1, y1, x2, y2) in frame pixels, MTCNN's probability and landmarks (5, 2)."""

    box: tuple[float, float, float, float]
    probability: float
    landmarks: np.ndarray | None


def _face_logit(probs: torch.Tensor) -> torch.Tensor:
    # The networks end in a softmax; the logit keeps a gradient where the probability has saturated.
    return torch.log(probs[:, 1] + 1e-6) - torch.log(probs[:, 0] + 1e-6)


def square_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """MTCNN's ``rerec``: grow (N, 4) boxes to squares around their centres (the stages see square crops)."""
    side = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    return torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dim=1)


def jittered_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """(B, 4) boxes → (B, K, 4): square copies scaled and shifted as in :data:`BOX_JITTER`."""
    squares = square_boxes(boxes)
    side = (squares[:, 2] - squares[:, 0])[:, None]
    cx = ((squares[:, 0] + squares[:, 2]) / 2)[:, None]
    cy = ((squares[:, 1] + squares[:, 3]) / 2)[:, None]
    jitter = torch.tensor(BOX_JITTER, dtype=boxes.dtype, device=boxes.device)
    half = side * jitter[None, :, 0] / 2
    cx = cx + side * jitter[None, :, 1]
    cy = cy + side * jitter[None, :, 2]
    return torch.stack([cx - half, cy - half, cx + half, cy + half], dim=2)


class MTCNNSurrogate(nn.Module):
    """MTCNN (P-Net, R-Net, O-Net from ``facenet-pytorch``) as a frozen, differentiable face scorer.

    Arguments:
        device (str): where the networks run ("cpu" or "cuda"). Default: "cpu".
        min_face_size (int): smallest face :meth:`detect` looks for, in pixels of the detection image. Default: 20.
        detect_max_side (int): :meth:`detect` shrinks frames so their longer side is at most this many pixels
            (the pyramid over a 1080p frame costs seconds; faces worth protecting stay ≥ 20 px). Default: 640.
        min_probability (float): detections below this O-Net probability are ignored. Default: 0.9.

    Shapes: :meth:`stage_outputs` takes images (B, 3, H, W) in [-1, 1] and boxes (B, 4) in their pixels.

    Example::
        surrogate = MTCNNSurrogate()
        faces = surrogate.detect(frame)          # frame: uint8 (H, W, 3) RGB
    """

    def __init__(self, device: str = "cpu", min_face_size: int = 20, detect_max_side: int = 640,
                 min_probability: float = 0.9):
        super().__init__()
        from facenet_pytorch import MTCNN   # the weights are files inside the package: nothing is downloaded
        self.device = torch.device(device)
        self.detect_max_side = detect_max_side
        self.min_probability = min_probability
        self._mtcnn = MTCNN(keep_all=True, min_face_size=min_face_size, post_process=False,
                            device=self.device).eval()
        self.pnet, self.rnet, self.onet = self._mtcnn.pnet, self._mtcnn.rnet, self._mtcnn.onet
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def detect(self, frame: np.ndarray) -> list[DetectedFace]:
        """Faces in an upright uint8 RGB frame (H, W, 3), boxes in the frame's pixels, most probable first."""
        import cv2
        height, width = frame.shape[:2]
        scale = min(1.0, self.detect_max_side / max(height, width))
        image = frame if scale == 1.0 else cv2.resize(frame, (max(1, round(width * scale)),
                                                              max(1, round(height * scale))),
                                                      interpolation=cv2.INTER_AREA)
        if min(image.shape[:2]) < 12:
            return []
        boxes, probs, points = self._mtcnn.detect(np.ascontiguousarray(image), landmarks=True)
        if boxes is None:
            return []
        faces = []
        for box, prob, landmark in zip(boxes, probs, points):
            if prob < self.min_probability:
                continue
            x1, y1, x2, y2 = (float(v) / scale for v in box)
            x1, y1 = max(0.0, x1), max(0.0, y1)
            x2, y2 = min(float(width), x2), min(float(height), y2)
            if x2 - x1 < 4 or y2 - y1 < 4:
                continue
            faces.append(DetectedFace((x1, y1, x2, y2), float(prob), np.asarray(landmark, dtype=np.float32) / scale))
        return sorted(faces, key=lambda face: -face.probability)

    def stage_outputs(self, images: torch.Tensor, boxes: torch.Tensor) -> StageOutputs:
        """Run the cascade on crops with gradients; ``images`` (B, 3, H, W) in [-1, 1], ``boxes`` (B, 4)."""
        batch, _, height, width = images.shape
        x = images * _TO_MTCNN
        face_size = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).mean().item()
        pnet_logits = []
        for target in PNET_FACE_SIZES_PX:
            scale = target / max(face_size, 1.0)
            size = (int(height * scale + 1), int(width * scale + 1))
            if min(size) < 12:
                continue
            # "area" is the resampling MTCNN's own pyramid uses (facenet_pytorch imresample).
            _, probs = self.pnet(F.interpolate(x, size=size, mode="area"))
            pnet_logits.append(_face_logit(probs))
        candidates = jittered_boxes(boxes)                       # (B, K, 4)
        count = candidates.shape[1]
        rois = torch.cat([torch.arange(batch, dtype=boxes.dtype, device=boxes.device)
                          .repeat_interleave(count)[:, None], candidates.reshape(-1, 4)], dim=1)
        _, rnet_probs = self.rnet(roi_align(x, rois, output_size=24, sampling_ratio=2, aligned=True))
        _, landmarks, onet_probs = self.onet(roi_align(x, rois, output_size=48, sampling_ratio=2, aligned=True))
        return StageOutputs(pnet_logits=pnet_logits,
                            rnet_logits=_face_logit(rnet_probs).view(batch, count),
                            onet_logits=_face_logit(onet_probs).view(batch, count),
                            landmarks=landmarks.view(batch, count, 10))


_cache: dict[str, MTCNNSurrogate] = {}
_cache_lock = threading.Lock()


def load_surrogate(device: str = "cpu") -> MTCNNSurrogate:
    """The process-wide surrogate for ``device``, loaded once (its weights are frozen, so tasks share it)."""
    with _cache_lock:
        if device not in _cache:
            _cache[device] = MTCNNSurrogate(device=device)
        return _cache[device]
