"""The torch port of dlib's face-recognition ResNet (the identity cloak's second surrogate), its landmark-aligned
chip, and the ensemble embedding the cloak attacks.

dlib itself (the ``dlib-bin`` wheel of the evaluation requirements) is the reference; the face is
``skimage.data.astronaut()``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data

from media_cleaner.protection.face_cloak import load_surrogate
from media_cleaner.protection.face_cloak.dlib_recognizer import (DlibFormatError, _installed_dat, chip_pose,
                                                                 convert_dlib, load_dlib_recognizer)
from media_cleaner.protection.face_cloak.embedding import load_embedding, posed_chips

dlib = pytest.importorskip("dlib")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="module")
def dlib_chip(astronaut):
    """dlib's own aligned chip of her face and its descriptor, as face_recognition computes them."""
    detector = dlib.get_frontal_face_detector()
    shape = dlib.shape_predictor(str(_installed_dat().with_name("shape_predictor_5_face_landmarks.dat")))
    face = max(detector(astronaut, 1), key=lambda rect: rect.area())
    chip = dlib.get_face_chip(astronaut, shape(astronaut, face), size=150, padding=0.25)
    descriptor = np.array(dlib.face_recognition_model_v1(str(_installed_dat())).compute_face_descriptor(chip))
    return chip, descriptor


def test_the_port_computes_what_dlib_computes(dlib_chip):
    chip, descriptor = dlib_chip
    with torch.no_grad():
        ported = load_dlib_recognizer()(torch.from_numpy(chip).permute(2, 0, 1)[None].float())[0].numpy()
    assert np.abs(ported - descriptor).max() < 1e-3


def test_the_chip_aligned_by_mtcnn_landmarks_embeds_as_dlibs_own(astronaut, dlib_chip):
    """The cloak cuts dlib's chip from MTCNN's landmarks (dlib's own aligner is not differentiable): the same
    person by a wide margin (a match is below 0.6; measured 0.13 median on the development photos)."""
    face = max(load_surrogate().detect(astronaut), key=lambda f: f.box[2] - f.box[0])
    image = torch.from_numpy(astronaut).permute(2, 0, 1)[None].float() / 127.5 - 1
    pose = torch.tensor([chip_pose(face.box, face.landmarks)], dtype=torch.float32)
    with torch.no_grad():
        chip = posed_chips(image, torch.tensor([face.box], dtype=torch.float32), pose, 150)
        ported = load_dlib_recognizer()(chip)[0].numpy()
    assert np.linalg.norm(ported - dlib_chip[1]) < 0.3


def test_the_ensemble_is_a_unit_vector_whose_cosine_is_the_members_mean(astronaut):
    face = max(load_surrogate().detect(astronaut), key=lambda f: f.box[2] - f.box[0])
    images = torch.from_numpy(np.stack([astronaut, np.ascontiguousarray(astronaut[:, ::-1])])).permute(0, 3, 1, 2)
    images = images.float() / 127.5 - 1
    width = astronaut.shape[1]
    x1, y1, x2, y2 = face.box
    boxes = torch.tensor([face.box, (width - x2, y1, width - x1, y2)], dtype=torch.float32)
    landmarks = np.asarray(face.landmarks)
    mirrored = landmarks.copy()[[1, 0, 2, 4, 3]]
    mirrored[:, 0] = width - mirrored[:, 0]
    poses = torch.tensor([chip_pose(face.box, landmarks), chip_pose(boxes[1].tolist(), mirrored)])
    with torch.no_grad():
        both = load_embedding("facenet+dlib")(images, boxes, poses)
        members = [load_embedding(name)(images, boxes, poses) for name in ("facenet", "dlib")]
    assert both.shape == (2, 256) and torch.allclose(both.norm(dim=1), torch.ones(2), atol=1e-5)
    mean_cosine = sum(float(m[0] @ m[1]) for m in members) / 2
    assert math.isclose(float(both[0] @ both[1]), mean_cosine, abs_tol=1e-5)


def test_a_file_that_is_not_the_network_is_refused_with_its_offset(tmp_path):
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(_installed_dat().read_bytes()[:100_000])
    with pytest.raises(DlibFormatError):
        convert_dlib(truncated)
    with pytest.raises(ValueError, match="unknown recognizer 'arcface'"):
        load_embedding("facenet+arcface")
