"""The BlazeFace port (media_cleaner.face_cloak.blazeface): it finds the astronaut's face where the face is,
finds none in a faceless photograph, and passes gradients back to the pixels.

The weights are read from the ``mediapipe`` wheel's .tflite file with the ``tflite`` package; without either
the tests skip. Faces come from ``skimage.data.astronaut()``.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage import data

pytest.importorskip("tflite")

from media_cleaner.face_cloak.blazeface import find_model_file, load_blazeface

if find_model_file() is None:
    pytest.skip("face_detection_short_range.tflite not found (mediapipe wheel not installed)",
                allow_module_level=True)

# The square of the astronaut image (512×512) around her face, and the face itself (hair to chin), in pixels.
CROP_X0, CROP_Y0, CROP_SIZE = 120, 0, 200
FACE_BOX = (170, 30, 270, 150)


@pytest.fixture(scope="module")
def blazeface():
    torch.set_num_threads(1)
    return load_blazeface()


def _resize_128(image: np.ndarray) -> np.ndarray:
    return cv2.resize(image, (128, 128), interpolation=cv2.INTER_AREA)


def _iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    intersection = width * height
    return intersection / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection)


def _astronaut_face_crop() -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The face crop at 128 px, and where the face lies in it."""
    image = data.astronaut()[CROP_Y0:CROP_Y0 + CROP_SIZE, CROP_X0:CROP_X0 + CROP_SIZE]
    scale = 128 / CROP_SIZE
    face = ((FACE_BOX[0] - CROP_X0) * scale, (FACE_BOX[1] - CROP_Y0) * scale,
            (FACE_BOX[2] - CROP_X0) * scale, (FACE_BOX[3] - CROP_Y0) * scale)
    return _resize_128(image), face


def test_finds_the_astronauts_face(blazeface):
    crop, face = _astronaut_face_crop()
    detections = blazeface.detect(crop)
    assert detections, "no face found"
    score, box = detections[0]
    assert score > 0.7
    # BlazeFace boxes brow to chin, the reference box hair to chin: they overlap well, not exactly.
    assert _iou(box, face) > 0.3


def test_finds_no_face_in_coffee(blazeface):
    coffee = data.coffee()
    square = coffee[:, : coffee.shape[0]]
    logits, _ = blazeface(torch.from_numpy(_resize_128(square)).permute(2, 0, 1)[None].float() / 127.5 - 1.0)
    assert torch.sigmoid(logits).max() < 0.5
    assert blazeface.detect(_resize_128(square)) == []


def test_face_logit_has_a_gradient_in_the_pixels(blazeface):
    crop, _ = _astronaut_face_crop()
    pixels = (torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1.0).requires_grad_(True)
    logits, regressors = blazeface(pixels)
    assert logits.shape == (1, 896) and regressors.shape == (1, 896, 16)
    logits.max().backward()
    assert torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0
