"""One perturbation per person: face-aligned crops, perturbations shared by several crops, and the engine that
optimises a person's perturbation over their keyframes and warps it onto every frame.

Faces come from ``skimage.data.astronaut()``; attacks run with few steps to stay quick on two cores.
"""
from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from media_cleaner.params import PRESETS, ProtectionParams
from media_cleaner.protection.face_cloak import CloakConfig, FaceCloak, load_surrogate
from media_cleaner.protection.face_cloak.alignment import CANONICAL_LANDMARKS, AlignedCrop, box_landmarks
from media_cleaner.protection.face_cloak.attack import CloakPGD
from media_cleaner.protection.face_cloak.embedding import load_embedding
from media_cleaner.protection.face_cloak.losses import CloakLoss, IdentityTarget, structural_dissimilarity
from media_cleaner.protection.face_cloak.masks import face_mask
from media_cleaner.protection.seams import VideoStreamInfo

# One perturbation per person is off by default: these tests turn it on for budgets up to the default's.
QUICK = CloakConfig(cold_steps=6, warm_steps=2, eot_samples=1, person_frames=3, per_person_up_to=0.15)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut()[0:256, 100:356])


def tilted(image: np.ndarray, degrees: float, zoom: float) -> np.ndarray:
    """The picture turned about its centre and scaled, on a frame ``zoom`` times larger."""
    side = int(image.shape[0] * zoom)
    big = cv2.resize(image, (side, side), interpolation=cv2.INTER_CUBIC)
    turn = cv2.getRotationMatrix2D((side / 2, side / 2), degrees, 1.0)
    return cv2.warpAffine(big, turn, (side, side), borderMode=cv2.BORDER_REFLECT)


def test_an_aligned_crop_shows_the_face_the_same_whatever_its_size_and_tilt(astronaut):
    detector = load_surrogate()
    found = []
    for frame in (astronaut, tilted(astronaut, 20, 3.0)):
        face = detector.detect(frame)[0]
        crop = AlignedCrop.from_landmarks(face.landmarks, 176, 112)
        # The landmarks land on the template: least squares over five points leaves only the face's own shape.
        expected = CANONICAL_LANDMARKS + 32
        assert np.abs(crop.to_crop(face.landmarks) - expected).max() < 8
        found.append(detector.detect(crop.cut(frame))[0].landmarks)
    # MTCNN finds the landmarks of both aligned crops in the same places (a 3× zoom and a 20° turn removed).
    assert np.abs(found[0] - found[1]).max() < 4


def test_a_paste_touches_only_the_faces_region_and_follows_a_move(astronaut):
    face = load_surrogate().detect(astronaut)[0]
    crop = AlignedCrop.from_landmarks(face.landmarks, 176, 112)
    delta = np.zeros((176, 176, 3), np.float32)
    delta[60:120, 60:120] = 20.0
    changed = []
    for dx in (0, 10):
        out = astronaut.copy()
        crop.moved(dx, 0).paste(out, delta)
        rows, columns = np.nonzero(np.abs(out.astype(int) - astronaut).sum(axis=2))
        changed.append((columns.min(), columns.max(), rows.min(), rows.max()))
        x1, y1, x2, y2 = face.box
        assert x1 - 5 + dx <= columns.mean() <= x2 + 5 + dx and y1 - 5 <= rows.mean() <= y2 + 5
    assert changed[1][0] - changed[0][0] == pytest.approx(10, abs=1)
    assert changed[1][1] - changed[0][1] == pytest.approx(10, abs=1)


def test_box_landmarks_stand_in_for_a_face_without_landmarks():
    points = box_landmarks((10.0, 20.0, 122.0, 132.0))
    assert np.allclose(points, CANONICAL_LANDMARKS + [10, 20])


def test_crops_can_share_one_perturbation_that_respects_every_crop(astronaut):
    """Two frames of one person carry one perturbation: the result is one per group, inside the cap and the
    floor on each crop it is applied to."""
    surrogate, recognizer = load_surrogate(), load_embedding("facenet")
    image = torch.from_numpy(astronaut).permute(2, 0, 1).float().div(127.5).sub(1)
    images = torch.stack([image, torch.roll(image, 2, dims=2)])
    box = list(load_surrogate().detect(astronaut)[0].box)
    boxes = torch.tensor([box, [box[0] + 2, box[1], box[2] + 2, box[3]]])
    mask = face_mask(256, 256, boxes)
    with torch.no_grad():
        clean = recognizer(images, boxes)
    decoy = torch.nn.functional.normalize(torch.randn(1, clean.shape[1]), dim=1)
    attack = CloakPGD(surrogate, epsilon=0.12, steps=4, eot_samples=1, recognizer=recognizer,
                      loss=CloakLoss(detect=0.0, identity=20.0), max_dissimilarity=0.03)
    torch.manual_seed(0)
    result = attack(images, boxes, mask, identity=IdentityTarget(clean[:1].expand(2, -1), decoy.expand(2, -1)),
                    groups=torch.tensor([0, 0]))
    assert result.delta_rgb.shape == (1, 3, 256, 256) and result.detection_loss.shape == (1,)
    assert float(result.delta_rgb.abs().max()) > 0
    assert float((result.delta_rgb.abs() - 0.12 * mask.min(dim=0).values).max()) <= 1e-6
    adversarial = (images + result.delta_rgb).clamp(-1, 1)
    assert float(structural_dissimilarity(images, adversarial, mask).max()) <= 0.03 * 1.001


def run(cloak: FaceCloak, frames: list[np.ndarray]) -> list[np.ndarray]:
    cloak.begin(VideoStreamInfo(frames[0].shape[1], frames[0].shape[0], 25.0, len(frames)))
    torch.manual_seed(0)
    return [cloak.protect_frame(frame, index / 25, index) for index, frame in enumerate(frames)]


def test_a_person_gets_one_perturbation_optimised_over_their_first_keyframes(astronaut):
    cloak = FaceCloak(ProtectionParams(every_n_frames=1), config=QUICK)
    frames = [np.roll(astronaut, index, axis=1) for index in range(5)]   # she drifts; every frame a keyframe
    cloak.begin(VideoStreamInfo(256, 256, 25.0, len(frames)))
    torch.manual_seed(0)
    outputs, perturbations = [], []
    for index, frame in enumerate(frames):
        outputs.append(cloak.protect_frame(frame, index / 25, index))
        perturbations.append(cloak.tracks[0].delta_rgb)
    track = cloak.tracks[0]
    # Optimised on her first three keyframes (a bank of three crops), then only warped: no new optimisation
    # while her face keeps its shape.
    assert cloak.keyframes == 5 and cloak.optimisations == 3 and track.optimised == 3 and len(track.bank) == 3
    changes = [output.astype(int) - frame for output, frame in zip(outputs, frames)]
    assert all(np.abs(change).max() > 0 for change in changes)
    assert all(np.abs(change).max() <= 15 for change in changes)   # the default cap, 0.12 → 15 levels
    # The last three frames carry the same perturbation, moved with her face (re-anchored on each keyframe's
    # landmarks, so up to a fraction of a pixel off: resampling blurs it a little).
    assert perturbations[2] is perturbations[3] is perturbations[4]
    face = (slice(70, 170), slice(90, 190))
    moved = np.roll(changes[3], 1, axis=1)[face].ravel()
    assert np.corrcoef(moved, changes[4][face].ravel())[0, 1] > 0.5


def test_a_turned_head_is_optimised_again_and_a_new_person_gets_their_own(astronaut):
    cloak = FaceCloak(ProtectionParams(every_n_frames=1), config=replace(QUICK, person_frames=1))
    run(cloak, [astronaut, np.roll(astronaut, 2, axis=1)])
    assert cloak.optimisations == 1          # settled after one keyframe
    track = cloak.tracks[0]
    track.aligned_pose = track.aligned_pose + [[12.0, 0.0], [12.0, 0.0], [0, 0], [0, 0], [0, 0]]   # eyes moved
    cloak.protect_frame(np.roll(astronaut, 3, axis=1), 2 / 25, 2)
    assert cloak.optimisations == 2 and len(cloak.tracks[0].bank) == 1

    pair = np.ascontiguousarray(np.hstack([astronaut, np.fliplr(astronaut)]))
    cloak = FaceCloak(ProtectionParams(), config=QUICK)
    run(cloak, [pair])
    assert len(cloak.tracks) == 2 and cloak.optimisations == 1       # both people in one batch
    first, second = cloak.tracks
    assert not np.array_equal(first.delta_rgb, second.delta_rgb)
    assert float(first.decoy @ second.decoy) < 0.5


@pytest.mark.parametrize("preset, per_person", [("invisible", True), ("balanced", False), ("strong", False)])
def test_one_per_person_applies_only_up_to_its_budget(astronaut, preset, per_person):
    epsilon, strength = PRESETS[preset]
    cloak = FaceCloak(ProtectionParams(epsilon=epsilon, video_strength=strength), config=replace(QUICK, cold_steps=1))
    run(cloak, [astronaut])
    track = cloak.tracks[0]
    assert cloak.per_person is per_person and (track.aligned is not None) is per_person
    assert track.delta_rgb is not None


def test_by_default_every_preset_optimises_a_perturbation_per_keyframe(astronaut):
    cloak = FaceCloak(ProtectionParams(), config=CloakConfig(cold_steps=1, eot_samples=1))
    run(cloak, [astronaut])
    assert not cloak.per_person and cloak.tracks[0].aligned is None and cloak.tracks[0].delta_rgb is not None
