"""`FaceCloak`: the face cloak behind the pipeline's video seam (:class:`~media_cleaner.protection.VideoProtector`).

Per frame (upright uint8 RGB, one at a time, in order):

1. decide whether it is a keyframe: the first frame, every ``every_n_frames``-th frame since the last one,
   a scene cut, or a frame where a tracked face was lost (:mod:`.tracker`);
2. on a keyframe, find the faces with MTCNN on the clean frame and match them to the tracked persons;
3. cut a square crop around each face, resampled so the face is ``crop_face_px`` wide (the resolution the
   detectors see it at, whatever the video's size), and optimise all crops as one batch with
   :class:`~.attack.CloakPGD` — cold for a new face, warm-started from its track's last perturbation for a
   known one. Optionally (``CloakConfig.per_person_up_to``, off by default) the identity cloak keeps **one
   perturbation per person** in face-aligned coordinates (:mod:`.alignment`) instead: each keyframe
   re-anchors it on the person's landmarks, and it is optimised over the aligned crops of up to
   ``person_frames`` of their keyframes at once, only while it has seen fewer than that or when their face
   turned;
4. on any other frame, move each face's perturbation with its tracked box;
5. resample each perturbation back to the frame, add it, round to uint8. Frames without faces are returned
   untouched (the same array).

The budget is ``epsilon × video_strength`` and the effort (steps) is multiplied by ``video_strength``.
Torch uses ``threads`` threads (the worker's share of the cores) on ``device``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from media_cleaner.params import DEFAULT_EPSILON, EPSILON_RANGE, PRESETS, VIDEO_STRENGTH_RANGE, ProtectionParams
from media_cleaner.protection.seams import VideoStreamInfo
from media_cleaner.protection.weights import DEFAULT_RECOGNIZER
from media_cleaner.protection.face_cloak.alignment import AlignedCrop, add_levels, box_landmarks, padded_region
from media_cleaner.protection.face_cloak.attack import CloakPGD
from media_cleaner.protection.face_cloak.losses import CloakLoss, IdentityTarget
from media_cleaner.protection.face_cloak.embedding import load_embedding
from media_cleaner.protection.face_cloak.masks import face_mask
from media_cleaner.protection.face_cloak.surrogate import DetectedFace, load_surrogate
from media_cleaner.protection.face_cloak.tracker import FaceTrack, SceneCutDetector, iou

# Decoys are drawn from this seed and the person's number in the clip: the same clip gets the same decoys.
DECOY_SEED = 20261201

# The budgets (epsilon × video_strength) at which the visibility floor is anchored: the default, the balanced
# preset's, and the largest a user can ask for (CloakConfig.face_dissimilarity, balanced_…, strongest_…).
BALANCED_BUDGET = PRESETS["balanced"][0] * PRESETS["balanced"][1]
STRONGEST_BUDGET = EPSILON_RANGE[1] * VIDEO_STRENGTH_RANGE[1]

# MTCNN's face box is about 0.87 of the canonical landmark template's width in height (measured on the
# astronaut at 0.9 and 0.3 crop pixels per frame pixel and tilted by 20°): aligned crops use a template this
# much wider than ``crop_face_px``, so a face is as large in its aligned crop as in a box crop.
ALIGNED_FACE_SCALE = 1.15


@dataclass(frozen=True)
class CloakConfig:
    """Engine settings that are not user parameters (defaults tuned on the dev set; see EVALUATION.md).

    crop_face_px: face width in the attack crop, pixels (MTCNN's R/O-Nets see 24/48 px; Haar and dlib work
        at 20–80 px faces). crop_side: side of the square attack crop, a multiple of 16 (face plus context).
    mask_margin: the face mask's half-axes as a multiple of the face box's; whole_crop: perturb the whole
        crop around each face instead of the feathered face mask.
    cold_steps / warm_steps: optimisation steps for a new face / a tracked face at video_strength 1.
    eot_samples: random transformations per step. (15 / 6 / 1 score the same as 30 / 12 / 2 on the
        dev keyframes, because the visibility floor, not the effort, limits the attack; EVALUATION.md.)
    chroma_ratio, texture_floor: see :mod:`.masks`.
    perceptual: weight of the perceptual energy penalty.
    face_dissimilarity / balanced_face_dissimilarity / strongest_face_dissimilarity: the visibility floor
        (largest 1 − luma SSIM inside the face, :class:`~.attack.CloakPGD` ``max_dissimilarity``) at three
        budgets ``epsilon × video_strength``: the default (DEFAULT_EPSILON, the `invisible` preset), the
        `balanced` preset's (0.16 × 1.5 = 0.24) and the strongest one a user can pick (0.20 × 2 = 0.40).
        Between them the floor follows the power law through the two neighbouring anchors; below the default
        it falls with the square of the budget, as 1 − SSIM of a small change does. So every setting has its
        own floor and a stronger one is always a looser one (budget 0.04 → 0.0009, 0.08 → 0.0036,
        0.12 → 0.008, 0.16 → 0.022, 0.20 → 0.050, 0.24 → 0.095, 0.32 → 0.15, 0.40 → 0.22). Measured on the
        dev clips (EVALUATION.md "How visible, enlarged"): at 0.008 a 1080p face at its own size and the 224 px
        clips enlarged look like our plain encode, where 0.03 (the default until then, face SSIM 0.95, VMAF 92)
        visibly aged them (deeper frown lines, bags under the eyes), and 0.015 still showed; 0.095 is
        `balanced` where it was measured (about half the frames no longer match), and 0.22 keeps 0.20 × 2
        where it hid most faces (about 70 % black-box protection). Capped at ``max_face_dissimilarity``.
    structural: weight of the face dissimilarity in the loss (see :class:`~.attack.CloakPGD`).
    smooth: cell size of the optimisation variable in crop pixels (:class:`~.attack.CloakPGD`); 1 is per
        pixel. Low-frequency variables (4, 8) did not beat per-pixel ones at equal visibility on the dev
        keyframes (EVALUATION.md), so they stay an option.
    scene_cut_threshold: see :class:`.tracker.SceneCutDetector`.
    detect / identity: weights of the detection terms (hide the face from MTCNN) and of the identity term
        (the FaceNet surrogate embeds the face as the person's decoy, :func:`.losses.identity_loss`); 0 turns
        a term off (identity 0: the recognizer is not loaded). The identity weight is large because the
        visibility terms are in other units: at 1 the perceptual and structural penalties held the white-box
        distance at 0.57 on a dev keyframe, at 20 it reaches 1.16 under the same floor (EVALUATION.md).
    detect_from_budget: the effective budget (epsilon × strength) from which the cloak hides faces from
        detectors instead of changing their identity. Below it the detection terms spent the budget without
        hiding faces (3 % black-box protection at 0.12), so those settings put it all into identity; at
        0.20 × 2 detection alone hid 69–72 % of faces and left 7 % identity matches, where the identity term
        (weight 20) beside it cut detector protection to about 20 % on the dev clips (EVALUATION.md).
    recognizer: the recognizers the identity term attacks (:func:`.embedding.load_embedding`): ``facenet``,
        ``dlib`` or both, ``facenet+dlib``.
    settle_keyframes / repose: once a person's perturbation has been optimised on ``settle_keyframes``
        keyframes, later keyframes re-detect and re-anchor it but optimise it again only when the person's
        landmarks moved within their box by more than ``repose`` box sides (a turn of the head, a new
        expression); 0 optimises on every keyframe. Box crops only (``person_frames`` 0 and the detection
        objective); ``repose`` is also the per-person mode's threshold, in face widths after alignment.
    optimiser: ``rms`` (normalised-gradient steps projected onto the visibility floor after each) or
        ``adam`` (Adam on a tanh-bounded variable, the floor an annealed squared hinge); see
        :class:`~.attack.CloakPGD`. At the same steps adam moved FaceNet further at ``invisible`` (white-box
        miss rate 24 → 38 % of raw frames, 11 → 21 % re-encoded, four dev clips) but not the black-box
        judges (dlib 92 → 95 % of frames still matched, the OpenCV Zoo judge 100 → 100 %), and it spent more of the face
        (VMAF 92 → 87), so rms stays the default (EVALUATION.md). The detection objective (from
        ``detect_from_budget``) always uses rms, the one its figures were measured with.
    person_frames / per_person_up_to: up to the effective budget ``per_person_up_to`` the identity cloak's
        perturbation is one per person, in face-aligned coordinates (:mod:`.alignment`), optimised over up to
        ``person_frames`` of the person's keyframes at once (their latest) and warped onto every frame with
        their face. It is optimised again only while it has seen fewer keyframes than that, or when the face
        turned or changed expression (its landmarks, after alignment, moved by more than ``repose`` of the
        face's width); every keyframe re-anchors it. Above that budget, or with ``person_frames`` 0, each
        keyframe gets its own perturbation in a box crop, warm-started from the last (``settle_keyframes``
        applies there); the detection objective always does. Off by default (0.0): measured on the dev clips
        at `invisible` (EVALUATION.md), one per person took 40 % less time (1080p: protect ÷ plain re-encode
        6.2 → 3.6) but let more frames match the person's other photos (the OpenCV Zoo judge 35 → 60 %,
        dlib 28 → 32 %, as delivered) and, at `balanced`, 17–22 points more frames match their own
        unprotected frames: a perturbation fitted to each keyframe is what protects. 0.15 turns it on at
        `invisible` only.
    """

    crop_face_px: int = 112
    crop_side: int = 176
    mask_margin: float = 1.25
    whole_crop: bool = False
    cold_steps: int = 15
    warm_steps: int = 6
    eot_samples: int = 1
    step_size: float = 0.6
    chroma_ratio: float = 0.12
    texture_floor: float = 0.2
    perceptual: float = 1.0
    face_dissimilarity: float = 0.008
    balanced_face_dissimilarity: float = 0.095
    strongest_face_dissimilarity: float = 0.22
    max_face_dissimilarity: float = 0.5
    structural: float = 0.3
    smooth: int = 1
    margin: float = 3.0
    scene_cut_threshold: float = 30.0
    detect: float = 1.0
    detect_from_budget: float = 0.3
    identity: float = 20.0
    recognizer: str = DEFAULT_RECOGNIZER
    settle_keyframes: int = 0
    repose: float = 0.06
    optimiser: str = "rms"
    person_frames: int = 3
    per_person_up_to: float = 0.0

    def __post_init__(self):
        # The floor law must rise with the budget: a stronger setting may never be held to a tighter floor.
        anchors = (self.face_dissimilarity, self.balanced_face_dissimilarity, self.strongest_face_dissimilarity)
        if not 0 < anchors[0] <= anchors[1] <= anchors[2]:
            raise ValueError("need 0 < face_dissimilarity <= balanced_face_dissimilarity <= "
                             f"strongest_face_dissimilarity, not {anchors}")


@dataclass(frozen=True)
class _Crop:
    """A square region of the frame (may reach past its edges) and its scale to the attack crop."""

    x0: int
    y0: int
    side: int

    @classmethod
    def around(cls, box: tuple[float, float, float, float], config: CloakConfig) -> "_Crop":
        face = max(box[2] - box[0], box[3] - box[1], 1.0)
        side = max(8, int(round(face * config.crop_side / config.crop_face_px)))
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        return cls(int(round(cx - side / 2)), int(round(cy - side / 2)), side)

    def cut(self, frame: np.ndarray, size: int) -> np.ndarray:
        """The region resampled to size × size (edges replicated where it leaves the frame), uint8."""
        patch = padded_region(frame, self.x0, self.y0, self.x0 + self.side, self.y0 + self.side)
        interpolation = cv2.INTER_AREA if self.side > size else cv2.INTER_LINEAR
        return cv2.resize(patch, (size, size), interpolation=interpolation)

    def box_in_crop(self, box: tuple[float, float, float, float], size: int) -> list[float]:
        """A frame box in the pixels of the region resampled to size × size (:meth:`cut`)."""
        scale = size / self.side
        return [(box[0] - self.x0) * scale, (box[1] - self.y0) * scale, (box[2] - self.x0) * scale,
                (box[3] - self.y0) * scale]

    def paste(self, target: np.ndarray, delta: np.ndarray) -> None:
        """Add ``delta`` (size × size × 3, levels of 255) resampled to the region onto uint8 ``target``, in
        place (:func:`.alignment.add_levels`)."""
        height, width = target.shape[:2]
        x1, y1 = max(0, self.x0), max(0, self.y0)
        x2, y2 = min(width, self.x0 + self.side), min(height, self.y0 + self.side)
        if x2 <= x1 or y2 <= y1:
            return
        # Linear resampling both ways: the perturbation is smooth at the crop's scale, and INTER_AREA would
        # average away what the optimiser placed between the crop's pixels when shrinking it.
        full = cv2.resize(delta, (self.side, self.side), interpolation=cv2.INTER_LINEAR)
        add_levels(target, x1, y1, full[y1 - self.y0:y2 - self.y0, x1 - self.x0:x2 - self.x0])


class FaceCloak:
    """The face cloak as a :class:`~media_cleaner.protection.VideoProtector`.

    Arguments:
        params (ProtectionParams): the task's parameters (epsilon, video_strength, every_n_frames).
        device (str): torch device. Default: "cpu".
        threads (int): torch threads (the worker's share of the cores). Default: 1.
        config (CloakConfig): engine settings. Default: ``CloakConfig()``.
        cancelled (callable | None): polled between optimisation steps; True abandons the attack on the
            current keyframe (the pipeline is being cancelled). :meth:`begin` also takes it from
            ``VideoStreamInfo.cancelled``. Default: None.

    Example::
        cloak = FaceCloak(ProtectionParams(epsilon=0.12))
        cloak.begin(VideoStreamInfo(width, height, fps, frame_count)); out = cloak.protect_frame(frame, t, 0)
    """

    def __init__(self, params: ProtectionParams, *, device: str = "cpu", threads: int = 1,
                 config: CloakConfig | None = None, cancelled: Callable[[], bool] | None = None):
        self.params = params
        self.device = device
        self.threads = max(1, int(threads))
        self.config = config or CloakConfig()
        self.epsilon = params.effective_epsilon
        self._cancelled = cancelled
        self.tracks: list[FaceTrack] = []
        self.keyframes = 0
        self.optimisations = 0   # attack runs (each a batch of crops), the cloak's main cost
        self._since_keyframe = 0
        self._cuts = SceneCutDetector(self.config.scene_cut_threshold)

    def _stopping(self) -> bool:
        return self._cancelled is not None and self._cancelled()

    @staticmethod
    def allowed_dissimilarity(epsilon: float, config: CloakConfig) -> float:
        """The face's visibility floor (1 − SSIM) for the effective budget ``epsilon`` (the [-1, 1] range)."""
        anchors = [(DEFAULT_EPSILON, config.face_dissimilarity), (BALANCED_BUDGET, config.balanced_face_dissimilarity),
                   (STRONGEST_BUDGET, config.strongest_face_dissimilarity)]
        if epsilon <= DEFAULT_EPSILON:
            floor = config.face_dissimilarity * (epsilon / DEFAULT_EPSILON) ** 2
        else:   # the power law through the two anchors around it (the last pair past the strongest)
            pairs = list(zip(anchors, anchors[1:]))
            (low, low_floor), (high, high_floor) = next((pair for pair in pairs if epsilon <= pair[1][0]), pairs[-1])
            exponent = math.log(high_floor / low_floor) / math.log(high / low)
            floor = low_floor * (epsilon / low) ** exponent
        return min(config.max_face_dissimilarity, floor)

    def begin(self, info: VideoStreamInfo) -> None:
        torch.set_num_threads(self.threads)
        hook = getattr(info, "cancelled", None)
        if hook is not None:
            self._cancelled = hook
        self.surrogate = load_surrogate(self.device)
        hide = self.epsilon >= self.config.detect_from_budget
        detect, identity = (self.config.detect, 0.0) if hide else (0.0, self.config.identity)
        self.recognizer = load_embedding(self.config.recognizer, self.device) if identity > 0 else None
        self.per_person = (self.recognizer is not None and self.config.person_frames > 0
                           and self.epsilon <= self.config.per_person_up_to)
        self._persons = 0
        floor = self.allowed_dissimilarity(self.epsilon, self.config)
        strength = self.params.video_strength
        config = self.config
        self._attack = {
            warm: CloakPGD(self.surrogate, epsilon=self.epsilon,
                           steps=max(1, round((config.warm_steps if warm else config.cold_steps) * strength)),
                           step_size=config.step_size, eot_samples=config.eot_samples,
                           loss=CloakLoss(perceptual=config.perceptual, margin=config.margin,
                                          detect=detect, identity=identity),
                           recognizer=self.recognizer,
                           chroma_ratio=config.chroma_ratio, texture_floor=config.texture_floor,
                           max_dissimilarity=floor, structural=config.structural, smooth=config.smooth,
                           optimiser="rms" if hide else config.optimiser, cancelled=self._stopping)
            for warm in (False, True)}
        self.tracks, self.keyframes, self._since_keyframe, self.optimisations = [], 0, 0, 0
        self._cuts = SceneCutDetector(config.scene_cut_threshold)

    def protect_frame(self, frame: np.ndarray, pts_s: float, index: int) -> np.ndarray:
        cut = self._cuts.is_cut(frame)
        lost = not all(track.follow(frame) for track in self.tracks)
        if index == 0 or cut or lost or self._since_keyframe >= self.params.every_n_frames - 1:
            self._keyframe(frame, fresh=cut)
        else:
            self._since_keyframe += 1
        if not self.tracks:
            return frame
        out = frame.copy()
        for track in self.tracks:
            if track.delta_rgb is None:
                continue
            if track.aligned is not None:   # moved with the box since the keyframe that anchored it
                track.aligned.moved(track.box[0] - track.anchor[0], track.box[1] - track.anchor[1]).paste(
                    out, track.delta_rgb)
            else:
                _Crop.around(track.box, self.config).paste(out, track.delta_rgb)
        return out

    def end(self) -> None:
        self.tracks = []

    def _keyframe(self, frame: np.ndarray, fresh: bool) -> None:
        """Detect faces, match them to tracks (none after a cut), optimise all of them in one batch."""
        self.keyframes += 1
        self._since_keyframe = 0
        faces = self.surrogate.detect(frame)
        previous = [] if fresh else self.tracks
        tracks = []
        for face in faces:
            match = max(previous, key=lambda track: iou(track.box, face.box), default=None)
            warm = match is not None and iou(match.box, face.box) >= 0.3
            # The same person: their perturbation, identity and decoy carry on.
            tracks.append(replace(match, box=face.box) if warm else FaceTrack(face.box))
        self.tracks = tracks
        if not tracks:
            return
        if self.per_person:
            self._keyframe_per_person(frame, tracks, faces)
            return
        due = [index for index, (track, face) in enumerate(zip(tracks, faces)) if self._due(track, face)]
        if due:
            poses = None if self.recognizer is None else self.recognizer.face_poses([faces[i] for i in due])
            self._optimise(frame, [tracks[i] for i in due], poses)
            for i in due:
                tracks[i].optimised += 1
                tracks[i].pose = _face_pose(faces[i])
        for track in tracks:
            track.remember(frame)

    def _keyframe_per_person(self, frame: np.ndarray, tracks: list[FaceTrack], faces: list[DetectedFace]) -> None:
        """Re-anchor each person's aligned perturbation on this keyframe's landmarks; optimise the ones due."""
        config = self.config
        due = []
        for track, face in zip(tracks, faces):
            landmarks = face.landmarks if face.landmarks is not None else box_landmarks(face.box)
            track.aligned = AlignedCrop.from_landmarks(landmarks, config.crop_side,
                                                       config.crop_face_px * ALIGNED_FACE_SCALE)
            track.anchor = face.box
            in_crop = track.aligned.to_crop(landmarks)
            turned = track.aligned_pose is not None and \
                float(np.abs(in_crop - track.aligned_pose).max()) > config.repose * config.crop_face_px
            if track.delta_rgb is None or len(track.bank) < config.person_frames or turned:
                due.append((track, face, in_crop))
        if due:
            self._optimise_persons(frame, due)
        for track in tracks:
            track.remember(frame)

    def _optimise_persons(self, frame: np.ndarray, due: list) -> None:
        """Add each due person's aligned clean crop to their bank (the latest ``person_frames``) and optimise
        each person's one perturbation over their whole bank, all persons in one batch."""
        config, side = self.config, self.config.crop_side
        fresh_images, fresh_boxes, fresh_poses = [], [], []
        for track, face, in_crop in due:
            image = torch.from_numpy(track.aligned.cut(frame)).permute(2, 0, 1).float().div(127.5).sub(1)
            box = track.aligned.box_in_crop(face.box)
            poses = self.recognizer.face_poses([DetectedFace(tuple(box), face.probability, in_crop)])
            track.bank = (track.bank + [(image, box, None if poses is None else poses[0])])[-config.person_frames:]
            track.aligned_pose = in_crop
            fresh_images.append(image)
            fresh_boxes.append(box)
            fresh_poses.append(None if poses is None else poses[0])
        tracks = [track for track, _, _ in due]
        # The clean identity learns from the new keyframe only (the bank's older crops were counted before).
        self._learn_identities(torch.stack(fresh_images), torch.tensor(fresh_boxes, dtype=torch.float32), tracks,
                               None if any(p is None for p in fresh_poses)
                               else torch.tensor(fresh_poses, dtype=torch.float32))
        entries = [(person, entry) for person, track in enumerate(tracks) for entry in track.bank]
        images = torch.stack([image for _, (image, _, _) in entries])
        boxes = torch.tensor([box for _, (_, box, _) in entries], dtype=torch.float32)
        groups = torch.tensor([person for person, _ in entries])
        poses = None if any(pose is None for _, (_, _, pose) in entries) \
            else torch.tensor([pose for _, (_, _, pose) in entries], dtype=torch.float32)
        mask = face_mask(side, side, boxes, margin=config.mask_margin)
        identity = IdentityTarget(torch.stack([t.identity for t in tracks])[groups],
                                  torch.stack([t.decoy for t in tracks])[groups], poses)
        self._attack_tracks(tracks, images, boxes, mask, identity, groups)
        for track in tracks:
            track.optimised += 1

    def _due(self, track: FaceTrack, face) -> bool:
        """Whether this keyframe optimises the track's perturbation: always for a new face; once the person's
        perturbation has settled (``settle_keyframes`` optimisations), only when their head has turned or
        moved within the box (landmarks off by more than ``repose`` box sides)."""
        settle = self.config.settle_keyframes
        if track.delta_rgb is None or settle <= 0 or track.optimised < settle:
            return True
        pose = _face_pose(face)
        return pose is None or track.pose is None or float(np.abs(pose - track.pose).max()) > self.config.repose

    def _optimise(self, frame: np.ndarray, tracks: list[FaceTrack], poses=None) -> None:
        config, side = self.config, self.config.crop_side
        crops, boxes = [], []
        for track in tracks:
            crop = _Crop.around(track.box, config)
            crops.append(crop.cut(frame, side))
            boxes.append(crop.box_in_crop(track.box, side))
        images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        boxes_t = torch.tensor(boxes, dtype=torch.float32)
        if config.whole_crop:
            mask = torch.ones(len(tracks), 1, side, side)
        else:
            mask = face_mask(side, side, boxes_t, margin=config.mask_margin)
        poses_t = None if poses is None else torch.tensor(poses, dtype=torch.float32)
        identity = None
        if self.recognizer is not None:
            self._learn_identities(images, boxes_t, tracks, poses_t)
            identity = IdentityTarget(torch.stack([t.identity for t in tracks]), torch.stack([t.decoy for t in tracks]),
                                      poses_t)
        self._attack_tracks(tracks, images, boxes_t, mask, identity)

    def _attack_tracks(self, tracks: list[FaceTrack], images: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor,
                       identity: IdentityTarget | None, groups: torch.Tensor | None = None) -> None:
        """One attack over the crops ``images`` for ``tracks``, one perturbation each (``groups``: which track
        each crop belongs to; None, one crop per track), warm-started where a track has a perturbation (the
        warm attack's fewer steps only when all have); stores each track's perturbation and warm start."""
        side = self.config.crop_side
        attack = self._attack[all(track.delta_ycbcr is not None for track in tracks)]
        init = None
        if any(track.delta_ycbcr is not None for track in tracks):
            init = torch.stack([track.delta_ycbcr if track.delta_ycbcr is not None
                                else torch.zeros(3, *attack.variable_size(side, side)) for track in tracks])
        result = attack(images.to(self.device), boxes.to(self.device), mask.to(self.device), init, identity, groups)
        self.optimisations += 1
        deltas = (result.delta_rgb * 127.5).permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)
        for track, delta, variable in zip(tracks, deltas, result.delta_ycbcr.cpu()):
            track.delta_rgb, track.delta_ycbcr = delta, variable

    @torch.no_grad()
    def _learn_identities(self, images: torch.Tensor, boxes: torch.Tensor, tracks: list[FaceTrack],
                          poses: torch.Tensor | None = None) -> None:
        """Update each track's clean identity (the mean of its keyframes' clean embeddings) from its clean
        crop in ``images``, and give a new person their decoy. A new person
        gets a decoy of their own: a direction orthogonal to their clean identity (as far from it as two
        different people typically are, distance √2), drawn from DECOY_SEED and the person's number."""
        clean = self.recognizer(images.to(self.device), boxes.to(self.device),
                                None if poses is None else poses.to(self.device)).cpu()
        for track, embedding in zip(tracks, clean):
            if track.identity is None:
                track.identity, track.identity_count = embedding, 1
            else:
                total = track.identity * track.identity_count + embedding
                track.identity, track.identity_count = F.normalize(total, dim=0), track.identity_count + 1
            if track.decoy is None:
                self._persons += 1
                generator = torch.Generator().manual_seed(DECOY_SEED + self._persons)
                direction = torch.randn(embedding.shape[0], generator=generator)
                direction -= (direction @ track.identity) * track.identity
                track.decoy = F.normalize(direction, dim=0)


def _face_pose(face) -> np.ndarray | None:
    """A face's five landmarks relative to its box (box sides from its top-left corner), or None."""
    if face.landmarks is None:
        return None
    x1, y1, x2, y2 = face.box
    side = max(x2 - x1, y2 - y1, 1.0)
    return (np.asarray(face.landmarks, dtype=np.float64) - (x1, y1)) / side


def warm_up(device: str = "cpu") -> None:
    """Load MTCNN and run one tiny forward/backward pass through all three stages (the first pass pays for
    lazy initialisation), so the first task starts at full speed. Called by ``warm_up_engines``."""
    surrogate = load_surrogate(device)
    config = CloakConfig()
    if config.identity > 0:
        load_embedding(config.recognizer, device)
    images = torch.zeros(1, 3, 64, 64, device=device, requires_grad=True)
    boxes = torch.tensor([[16.0, 16.0, 48.0, 48.0]], device=device)
    outputs = surrogate.stage_outputs(images, boxes)
    (outputs.rnet_logits.sum() + outputs.onet_logits.sum() + sum(m.sum() for m in outputs.pnet_logits)).backward()
